# frozen_string_literal: true

# amibake's sample app: employees (GET /, GET|POST /employees), uploads (POST
# /uploads: multipart "file" or a raw body named by ?name=), GET /health.
require "cgi"
require "digest"
require "json"
require "pg"
require "rack"
require "securerandom"

class PayrollApp
  SCHEMA = "CREATE TABLE IF NOT EXISTS employees (id serial PRIMARY KEY, name text NOT NULL, " \
           "salary numeric(12, 2) NOT NULL DEFAULT 0, created_at timestamptz NOT NULL DEFAULT now())"
  SAFE_NAME = /\A[A-Za-z0-9][A-Za-z0-9._-]{0,200}\z/.freeze

  class NotFound < StandardError; end
  class BadRequest < StandardError; end

  def initialize(env = ENV)
    @database_url = env.fetch("DATABASE_URL")
    @uploads_dir = env.fetch("UPLOADS_DIR", "/var/uploads")
    @public_dir = File.expand_path("../public", __dir__)
    @schema_ready = false
    @lock = Mutex.new
  end

  def call(env)
    route(Rack::Request.new(env))
  rescue NotFound
    page(404)
  rescue BadRequest, JSON::ParserError => e
    reply(400, "text/plain", "#{e.message}\n")
  rescue StandardError => e
    warn "payroll: #{e.class}: #{e.message}"
    page(500)
  end

  private

  def route(req)
    case [req.request_method, req.path_info]
    in ["GET" | "HEAD", "/"] then employees_html
    in ["GET" | "HEAD", "/employees"] then json(200, employees)
    in ["POST", "/employees"] then add_employee(req)
    in ["POST", "/uploads"] then upload(req)
    in ["GET" | "HEAD", "/health"] then health
    else raise NotFound
    end
  end

  def health
    with_db { |db| db.exec("SELECT 1") }
    reply(200, "text/plain", "ok\n")
  rescue PG::Error => e
    reply(503, "text/plain", "database unavailable: #{e.message.lines.first&.strip}\n")
  end

  def employees
    with_db do |db|
      db.exec("SELECT id, name, salary::text FROM employees ORDER BY id").map do |r|
        { "id" => r["id"].to_i, "name" => r["name"], "salary" => r["salary"] }
      end
    end
  end

  def employees_html
    rows = employees.map do |e|
      "<tr><td>#{e['id']}</td><td>#{CGI.escapeHTML(e['name'])}</td><td>#{e['salary']}</td></tr>\n"
    end
    reply(200, "text/html; charset=utf-8", "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">" \
          "<title>Employees</title></head><body><h1>Employees</h1>\n<table>\n" \
          "<tr><th>id</th><th>name</th><th>salary</th></tr>\n#{rows.join}</table>\n" \
          "<p>#{rows.size} employees</p></body></html>\n")
  end

  def add_employee(req)
    params = req.media_type == "application/json" ? JSON.parse(req.body.read) : req.POST
    name = params["name"].to_s.strip
    salary = params.fetch("salary", "0").to_s
    raise BadRequest, "name is required" if name.empty?
    raise BadRequest, "salary must be a number" unless salary.match?(/\A\d+(\.\d{1,2})?\z/)

    id = with_db do |db|
      db.exec_params("INSERT INTO employees (name, salary) VALUES ($1, $2) RETURNING id",
                     [name, salary]).getvalue(0, 0).to_i
    end
    json(201, { "id" => id, "name" => name, "salary" => salary })
  end

  def upload(req)
    file = req.media_type == "multipart/form-data" ? req.POST["file"] : nil
    if file.is_a?(Hash) && file[:tempfile]
      name = File.basename(file[:filename].to_s)
      source = file[:tempfile]
    else
      name = req.params["name"] || req.get_header("HTTP_X_FILENAME")
      source = req.body
    end
    name = "upload-#{SecureRandom.hex(8)}" if name.to_s.empty?
    raise BadRequest, "bad file name: #{name}" unless SAFE_NAME.match?(name)

    json(201, { "name" => name }.merge(store(name, source)))
  end

  def store(name, source)
    target = File.join(@uploads_dir, name)
    partial = "#{target}.part-#{SecureRandom.hex(4)}"
    digest = Digest::SHA256.new
    File.open(partial, "wb", 0o640) do |out|
      source.rewind if source.respond_to?(:rewind)
      while (chunk = source.read(65_536))
        digest << chunk
        out.write(chunk)
      end
    end
    File.rename(partial, target)
    { "size" => File.size(target), "sha256" => digest.hexdigest }
  ensure
    File.unlink(partial) if partial && File.exist?(partial)
  end

  def with_db
    db = PG.connect(@database_url)
    @lock.synchronize do
      unless @schema_ready
        begin
          db.exec(SCHEMA)
        rescue PG::UniqueViolation, PG::DuplicateTable
          nil # another app server created it at the same moment
        end
        @schema_ready = true
      end
    end
    yield db
  ensure
    db&.close
  end

  def page(status)
    path = File.join(@public_dir, "#{status}.html")
    reply(status, "text/html; charset=utf-8", File.exist?(path) ? File.read(path) : "#{status}\n")
  end

  def reply(status, type, body)
    [status, { "content-type" => type }, [body]]
  end

  def json(status, data)
    reply(status, "application/json", "#{JSON.generate(data)}\n")
  end
end
