class Paycheck < ApplicationRecord
  belongs_to :employee

  validates :period_ending, presence: true
  validates :gross, numericality: { greater_than_or_equal_to: 0 }
end
