-- pgreflect 0001: the request loop (requests, answers, model registry, audit events).
-- Run once, in one transaction, by scripts' migrator (pgreflect migrate). Never edit after release:
-- the migrator stores this file's sha256 and refuses a changed file.

-- Roles are cluster-wide, so several databases in one cluster share them: create only when missing.
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['reflect_owner', 'reflect_app', 'reflect_worker', 'reflect_analyst'] LOOP
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
    END IF;
  END LOOP;
END
$$;

CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;
CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;

CREATE SCHEMA reflect AUTHORIZATION reflect_owner;
REVOKE ALL ON SCHEMA reflect FROM PUBLIC;

SET LOCAL ROLE reflect_owner;

-- Tunables read by the functions; one row per key (documented in docs/configuration.md).
CREATE TABLE reflect.settings (
  key text PRIMARY KEY,
  value jsonb NOT NULL,
  description text NOT NULL
);

CREATE TABLE reflect.model_versions (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL UNIQUE
    CONSTRAINT model_version_name_format CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$'),
  gguf_path text NOT NULL CHECK (gguf_path <> ''),
  source text NOT NULL CHECK (source <> ''),
  sha256 text NOT NULL CONSTRAINT sha256_hex CHECK (sha256 ~ '^[0-9a-f]{64}$'),
  parent_id integer REFERENCES reflect.model_versions (id),
  n_ctx integer NOT NULL DEFAULT 4096 CHECK (n_ctx BETWEEN 256 AND 131072),
  is_active boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);
-- At most one active version; activate_model_version_v1 swaps it in one transaction.
CREATE UNIQUE INDEX model_versions_one_active ON reflect.model_versions (is_active) WHERE is_active;

CREATE TYPE reflect.request_state AS ENUM (
  'queued',     -- waiting for a worker; run_after holds a retry back
  'running',    -- claimed under a lease (lease_token, lease_expires_at)
  'succeeded',  -- final: exactly one row in answers
  'failed'      -- final: gave up, last_error says why
);

CREATE TABLE reflect.requests (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  key_id text NOT NULL,
  prompt_enc bytea NOT NULL,
  system_prompt_enc bytea,
  params jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (pg_catalog.jsonb_typeof(params) = 'object'),
  idempotency_key text CHECK (pg_catalog.length(idempotency_key) BETWEEN 1 AND 200),
  caller text CHECK (pg_catalog.length(caller) BETWEEN 1 AND 200),
  submitted_by name NOT NULL,
  model_version_id integer NOT NULL REFERENCES reflect.model_versions (id),
  state reflect.request_state NOT NULL DEFAULT 'queued',
  attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 25),
  run_after timestamptz NOT NULL DEFAULT now(),
  lease_token uuid,
  lease_expires_at timestamptz,
  worker_id text,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  claimed_at timestamptz,
  finished_at timestamptz,
  CONSTRAINT running_iff_leased
    CHECK ((state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
  CONSTRAINT finished_iff_final
    CHECK ((state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)),
  CONSTRAINT failed_has_reason CHECK (state <> 'failed' OR last_error IS NOT NULL),
  CONSTRAINT attempts_within_max CHECK (attempts <= max_attempts)
);
CREATE UNIQUE INDEX requests_idempotency_key
  ON reflect.requests (submitted_by, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The claim scans queued rows in id order (FIFO); succeeded rows never enter this index.
CREATE INDEX requests_queued ON reflect.requests (id) WHERE state = 'queued';
CREATE INDEX requests_leases ON reflect.requests (lease_expires_at) WHERE state = 'running';

CREATE TABLE reflect.answers (
  request_id bigint PRIMARY KEY REFERENCES reflect.requests (id),
  attempt integer NOT NULL,
  key_id text NOT NULL,
  answer_enc bytea NOT NULL,
  model_version_id integer NOT NULL REFERENCES reflect.model_versions (id),
  worker_id text NOT NULL,
  finish_reason text NOT NULL CHECK (finish_reason IN ('stop', 'length', 'stop_sequence')),
  prompt_tokens integer NOT NULL CHECK (prompt_tokens >= 0),
  completion_tokens integer NOT NULL CHECK (completion_tokens >= 0),
  token_logprobs real[] NOT NULL,
  logprob_mean double precision,
  logprob_min double precision,
  -- exp(mean log-prob): the length-normalised (geometric-mean) per-token probability, in [0, 1]
  logprob_norm double precision CHECK (logprob_norm BETWEEN 0 AND 1),
  queue_wait_ms double precision NOT NULL,
  prompt_eval_ms double precision NOT NULL CHECK (prompt_eval_ms >= 0),
  generation_ms double precision NOT NULL CHECK (generation_ms >= 0),
  tokens_per_s double precision,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT one_logprob_per_token
    CHECK (pg_catalog.cardinality(token_logprobs) = completion_tokens)
);

-- Append-only audit trail of every state change (who, when, which attempt, why).
CREATE TABLE reflect.request_events (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  request_id bigint NOT NULL REFERENCES reflect.requests (id),
  at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  event text NOT NULL CHECK (event IN
    ('submitted', 'claimed', 'succeeded', 'retry', 'failed', 'released', 'lease_expired', 'key_rotated')),
  attempt integer NOT NULL,
  worker_id text,
  detail text
);
CREATE INDEX request_events_request ON reflect.request_events (request_id);

-- Workers that announced themselves (pgreflect status; ask starts its own worker when none is live).
CREATE TABLE reflect.workers (
  worker_id text PRIMARY KEY CHECK (length(worker_id) BETWEEN 1 AND 200),
  hostname text NOT NULL,
  pid integer NOT NULL,
  model_version_ids integer[] NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now(),
  last_seen_at timestamptz NOT NULL DEFAULT now(),
  stopped_at timestamptz
);

-- Internal tables: default-deny. No policies, so only the owner (reflect_owner) reads or writes them;
-- every other role goes through the SECURITY DEFINER functions and the views.
ALTER TABLE reflect.settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.model_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.answers ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.request_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.workers ENABLE ROW LEVEL SECURITY;

INSERT INTO reflect.settings (key, value, description) VALUES
  ('max_prompt_chars', '32768', 'Longest prompt (and system prompt) accepted by submit_v1, in characters'),
  ('max_attempts', '3', 'Claims a request gets before it is marked failed'),
  ('retry_base_s', '5', 'Backoff after failed attempt n is min(retry_max_s, retry_base_s * 2^(n-1)) seconds'),
  ('retry_max_s', '300', 'Upper bound of the retry backoff, in seconds'),
  ('max_tokens_default', '256', 'max_tokens when a request does not set it'),
  ('max_tokens_limit', '4096', 'Largest max_tokens a request may ask for'),
  ('worker_live_s', '30', 'A worker not seen for this many seconds counts as gone');
