class CreateEmployeesAndPaychecks < ActiveRecord::Migration[6.1]
  def change
    create_table :employees do |t|
      t.string :name, null: false
      t.decimal :hourly_rate, precision: 8, scale: 2, null: false
      t.timestamps
    end

    create_table :paychecks do |t|
      t.references :employee, null: false, foreign_key: true
      t.date :period_ending, null: false
      t.decimal :gross, precision: 10, scale: 2, null: false
      t.timestamps
    end
    add_index :paychecks, %i[employee_id period_ending], unique: true
  end
end
