class EmployeesController < ApplicationController
  def index
    @employees = Employee.includes(:paychecks).order(:name)
  end

  def new
    @employee = Employee.new
  end

  def create
    @employee = Employee.new(employee_params)
    if @employee.save
      redirect_to employees_path, notice: "Added #{@employee.name}."
    else
      render :new, status: :unprocessable_entity
    end
  end

  private

  def employee_params
    params.require(:employee).permit(:name, :hourly_rate)
  end
end
