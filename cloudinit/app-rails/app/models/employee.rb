class Employee < ApplicationRecord
  has_many :paychecks, dependent: :restrict_with_error

  validates :name, presence: true, length: { maximum: 200 }
  validates :hourly_rate, numericality: { greater_than: 0, less_than: 10_000 }
end
