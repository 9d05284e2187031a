-- pgreflect 0011: API keys for the HTTP API (`pgreflect serve`, issue 9). A key acts as one app: the server
-- verifies it, then connects as that app's own login, so over HTTP an app sees exactly what it sees over SQL.
-- Only a slow hash of each key's secret is stored (pgcrypto bcrypt); the key is shown once, when created.
DO $$
BEGIN
  -- The server's own login joins this group: it may verify keys and LISTEN, nothing else.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'reflect_api') THEN
    CREATE ROLE reflect_api NOLOGIN;
  END IF;
END
$$;
SET LOCAL ROLE reflect_owner;

CREATE TABLE reflect.api_keys (
  -- The key is "pgr-<id>-<secret>": the id (public, 12 hex digits) finds the row, the secret is checked
  -- against its bcrypt hash.
  id text PRIMARY KEY CONSTRAINT api_key_id_format CHECK (id ~ '^[0-9a-f]{12}$'),
  name text NOT NULL CONSTRAINT api_key_name_format CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
  app text NOT NULL REFERENCES reflect.apps (name),
  secret_hash text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  created_by name NOT NULL DEFAULT session_user,
  last_used_at timestamptz,
  revoked_at timestamptz
);
CREATE UNIQUE INDEX api_keys_live_name ON reflect.api_keys (name) WHERE revoked_at IS NULL;
ALTER TABLE reflect.api_keys ENABLE ROW LEVEL SECURITY;

INSERT INTO reflect.settings (key, value, description) VALUES
  ('api_key_bcrypt_cost', '8',
   'bcrypt cost of API key hashes (2^cost rounds; 8 takes about 20 ms here, paid once per key per server '
   'process: the server remembers verified keys until they are revoked)');

-- The text of each generated token and its most likely alternatives, for a request that asked for them
-- (params.logprobs / top_logprobs: the OpenAI API's `logprobs`). Encrypted like every text: the tokens spell the
-- answer. The chosen tokens' log-probabilities are reflect.answers.token_logprobs.
CREATE TABLE reflect.answer_tokens (
  request_id bigint PRIMARY KEY REFERENCES reflect.requests (id),
  key_id text NOT NULL,
  tokens_enc bytea NOT NULL,  -- JSON: [{"token": text, "top": [[text, logprob], ...]}, ...], one per token
  created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE reflect.answer_tokens ENABLE ROW LEVEL SECURITY;

-- A conversation's earlier turns (the OpenAI API's multi-turn `messages`): a JSON array of {"role", "content"},
-- user and assistant alternating, before the request's prompt (its last user turn). Encrypted with the row's key
-- like the prompt (key rotation finds it by its name). NULL for a single question.
ALTER TABLE reflect.requests ADD COLUMN history_enc bytea;

-- The review queue (people judge answers): besides every flagged, abstained and low-confidence answer, a random
-- share of the others, so reviewers also see what the confidence let through.
INSERT INTO reflect.settings (key, value, description) VALUES
  ('review_sample_share', '0.02',
   'Share of answers above their confidence threshold that the review queue shows anyway (a stable hash of the id)');

-- People who use the web pages: reviewers (read a queued answer's text, audited, and judge it) and analysts
-- (numbers only). Each has a login of that group (person_NAME), which the server acts as after checking the
-- person's password against its bcrypt hash here (made by the database, shown once, like an API key's secret).
CREATE TABLE reflect.people (
  name text PRIMARY KEY CONSTRAINT person_name_format CHECK (name ~ '^[a-z][a-z0-9_]{0,40}$'),
  login name NOT NULL UNIQUE,
  role text NOT NULL CHECK (role IN ('reviewer', 'analyst')),
  password_hash text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  revoked_at timestamptz
);
ALTER TABLE reflect.people ENABLE ROW LEVEL SECURITY;
