-- pg_cron can live in one database per cluster only (cron.database_name). When this is that database,
-- make sure the extension exists.
-- Elsewhere the worker's own reaper loop is the backstop, and docs/operations.md shows how to schedule
-- the reaper from the cron database with cron.schedule_in_database.
DO $$
BEGIN
  IF pg_catalog.current_setting('cron.database_name', true) = pg_catalog.current_database() THEN
    CREATE EXTENSION IF NOT EXISTS pg_cron;
  END IF;
END
$$;
