-- pgreflect 0004: one job runtime. Every kind of background work (critique and agreement follow-ups now;
-- curation, training, conversion and gating next) is a row of reflect.jobs with a kind, leased by one
-- protocol written once (functions/450_jobs.sql). Requests keep their own encrypted table and hot path.
SET LOCAL ROLE reflect_owner;

CREATE TABLE reflect.jobs (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  kind text NOT NULL CONSTRAINT job_kind_format CHECK (kind ~ '^[a-z][a-z0-9_]{0,40}$'),
  payload jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (pg_catalog.jsonb_typeof(payload) = 'object'),
  request_id bigint REFERENCES reflect.requests (id),          -- the answer a follow-up works on
  model_version_id integer REFERENCES reflect.model_versions (id),  -- only workers serving it claim it
  state reflect.request_state NOT NULL DEFAULT 'queued',
  priority smallint NOT NULL DEFAULT 0,                         -- higher first, then oldest first
  attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts integer NOT NULL DEFAULT 2 CHECK (max_attempts BETWEEN 1 AND 25),
  run_after timestamptz NOT NULL DEFAULT now(),
  lease_token uuid,
  lease_expires_at timestamptz,
  worker_id text,
  checkpoint jsonb,        -- a long job's progress, saved under its lease; the next claim resumes from it
  result jsonb,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  started_at timestamptz,
  finished_at timestamptz,
  CONSTRAINT job_running_iff_leased
    CHECK ((state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
  CONSTRAINT job_finished_iff_final CHECK ((state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)),
  CONSTRAINT job_failed_has_reason CHECK (state <> 'failed' OR last_error IS NOT NULL),
  CONSTRAINT job_attempts_within_max CHECK (attempts <= max_attempts)
);
CREATE UNIQUE INDEX jobs_one_per_request_kind ON reflect.jobs (request_id, kind) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_queued ON reflect.jobs (priority DESC, id) WHERE state = 'queued';
CREATE INDEX jobs_leases ON reflect.jobs (lease_expires_at) WHERE state = 'running';

-- The follow-ups move over with their ids, states and history.
INSERT INTO reflect.jobs (id, kind, request_id, model_version_id, state, attempts, max_attempts, lease_token,
                          lease_expires_at, worker_id, last_error, created_at, finished_at)
OVERRIDING SYSTEM VALUE
SELECT f.id, f.kind, f.request_id, r.model_version_id, f.state, f.attempts, f.max_attempts, f.lease_token,
       f.lease_expires_at, f.worker_id,
       CASE WHEN f.state = 'failed' THEN coalesce(f.last_error, 'failed') ELSE f.last_error END, f.created_at,
       CASE WHEN f.state IN ('succeeded', 'failed') THEN coalesce(f.finished_at, f.created_at) END
FROM reflect.followups f
JOIN reflect.requests r ON r.id = f.request_id;
SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('reflect.jobs', 'id'),
                         coalesce((SELECT max(id) FROM reflect.jobs), 0) + 1, false);
DROP VIEW IF EXISTS reflect.app_requests;  -- reads follow-ups; the function files recreate it over jobs
DROP FUNCTION IF EXISTS reflect._take_followup_lease(bigint, uuid);  -- returned the table's row type
DROP FUNCTION IF EXISTS reflect._reap_expired_followups();
DROP TABLE reflect.followups;

ALTER TABLE reflect.jobs ENABLE ROW LEVEL SECURITY;
