# Puma's settings come from the environment: PORT (or BIND), RAILS_ENV,
# RAILS_MAX_THREADS. No pid file and no restart plugin: systemd runs puma.
threads_count = ENV.fetch("RAILS_MAX_THREADS") { 5 }
threads threads_count, threads_count

if ENV["BIND"]
  bind ENV["BIND"]
else
  port ENV.fetch("PORT") { 3000 }
end

environment ENV.fetch("RAILS_ENV") { "development" }
