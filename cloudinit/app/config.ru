# amibake's sample app for smallpayroll (see lib/payroll_app.rb).
$LOAD_PATH.unshift(File.join(__dir__, "lib"))
require "payroll_app"

run PayrollApp.new
