-- Schedules (re-applied on every deploy; cron.schedule with an existing job name updates it).
-- Only where pg_cron lives in this database (see 000_cron_extension.sql). Job commands hold no secrets:
-- pg_cron stores and logs them.
SET LOCAL ROLE reflect_owner;

DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
    PERFORM cron.schedule('pgreflect-reap-expired-leases', '* * * * *', 'SELECT reflect.reap_expired_v1()');
  END IF;
END
$$;
