-- Schedules (re-applied on every deploy; cron.schedule with an existing job name updates it).
-- Only where pg_cron lives in this database (see 000_cron_extension.sql). Job commands hold no secrets:
-- pg_cron stores and logs them.
-- Scheduled as the deploying administrator, not reflect_owner: pg_cron's background worker connects as the
-- job's user, and reflect_owner cannot log in (seen: 'FATAL: role "reflect_owner" is not permitted to log in').
RESET ROLE;

DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
    PERFORM cron.schedule('pgreflect-reap-expired-leases', '* * * * *', 'SELECT reflect.reap_expired_v1()');
    PERFORM cron.schedule('pgreflect-refit-calibrators', '*/5 * * * *', 'SELECT reflect.refit_calibrators_v1()');
    PERFORM cron.schedule('pgreflect-finetune-when-ready', '*/15 * * * *', 'SELECT reflect.finetune_when_ready_v1()');
    PERFORM cron.schedule('pgreflect-canary-step', '*/5 * * * *', 'SELECT reflect.canary_step_v1()');
    PERFORM cron.schedule('pgreflect-tune-thresholds', '17 * * * *', 'SELECT reflect.tune_when_ready_v1()');
    PERFORM cron.schedule('pgreflect-purge-answer-states', '41 3 * * *', 'SELECT reflect.purge_answer_states_v1()');
  END IF;
END
$$;
