# Production, as the image runs it: secrets from the environment only
# (SECRET_KEY_BASE; there is no credentials file and no master key), logs to
# standard output (the journal), assets precompiled at bake time and served by
# nginx from public/ (or by Rails when RAILS_SERVE_STATIC_FILES is set).
Rails.application.configure do
  config.cache_classes = true
  config.eager_load = true
  config.consider_all_requests_local = false
  config.action_controller.perform_caching = true
  config.require_master_key = false
  config.public_file_server.enabled = ENV["RAILS_SERVE_STATIC_FILES"].present?
  config.assets.compile = false

  config.log_level = :info
  config.log_tags = [:request_id]
  config.logger = ActiveSupport::TaggedLogging.new(ActiveSupport::Logger.new($stdout))

  config.i18n.fallbacks = true
  config.active_support.deprecation = :notify
  config.active_record.dump_schema_after_migration = false
end
