# GET /health: 200 when the database answers, 503 when it does not.
class HealthController < ActionController::Base
  def show
    ActiveRecord::Base.connection.select_value("SELECT 1")
    render plain: "ok\n"
  rescue ActiveRecord::ActiveRecordError, PG::Error => e
    logger.error("health: #{e.class}: #{e.message}")
    render plain: "database unavailable\n", status: :service_unavailable
  end
end
