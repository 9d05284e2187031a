-- Migration runner (pgreflect/migrate.py). Runs as the deploying administrator.

-- name: migrate_lock
SELECT pg_advisory_xact_lock(7262851, 1);

-- name: migrate_bootstrap
CREATE SCHEMA IF NOT EXISTS reflect_meta;
CREATE TABLE IF NOT EXISTS reflect_meta.schema_migrations (
  name text PRIMARY KEY,
  sha256 text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  applied_by name NOT NULL DEFAULT session_user
);
REVOKE ALL ON SCHEMA reflect_meta FROM PUBLIC;

-- name: migrate_applied
SELECT name, sha256 FROM reflect_meta.schema_migrations ORDER BY name;

-- name: migrate_record
INSERT INTO reflect_meta.schema_migrations (name, sha256) VALUES (%(name)s, %(sha256)s);

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(dbname)s;
