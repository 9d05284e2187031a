-- pgreflect 0003: hardening. Key verifiers, memories scoped to their owner, backends per model version,
-- an append-only decryption audit, registered apps, and a reviewer role.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'reflect_reviewer') THEN
    CREATE ROLE reflect_reviewer NOLOGIN;
  END IF;
END
$$;

SET LOCAL ROLE reflect_owner;

-- One verifier per key id: HMAC-SHA256 of a fixed label under the key. Keys are random 256-bit strings,
-- so the verifier reveals nothing about the key, and lets the database refuse a wrong key for a known
-- key id when it is loaded (and whenever it is used) instead of encrypting with it.
CREATE TABLE reflect.key_verifiers (
  key_id text PRIMARY KEY CONSTRAINT key_id_format CHECK (key_id ~ '^[a-z0-9_]{1,32}$'),
  verifier text NOT NULL CHECK (verifier ~ '^[0-9a-f]{64}$'),  -- text: every bytea column here is ciphertext
  registered_by name NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Which backend can run a version: a worker only serves versions of its own backend, so a no-op worker
-- never answers as a real model.
ALTER TABLE reflect.model_versions
  ADD COLUMN backend text NOT NULL DEFAULT 'llama' CONSTRAINT model_version_backend CHECK (backend IN ('llama', 'noop'));

-- Memories belong to the login that submitted the request; recall sees only the requester's own memories
-- and those an owner explicitly shared with it (reflect.memory_shares).
ALTER TABLE reflect.memories ADD COLUMN owner name;
UPDATE reflect.memories m SET owner = r.submitted_by FROM reflect.requests r WHERE r.id = m.request_id;
ALTER TABLE reflect.memories ALTER COLUMN owner SET NOT NULL;
CREATE INDEX memories_owner ON reflect.memories (owner);

CREATE TABLE reflect.memory_shares (
  owner name NOT NULL,
  reader name NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (owner, reader),
  CONSTRAINT share_with_another CHECK (owner <> reader)
);

-- Every decryption done for a person (CLI display, review, export): who, which row, when, why.
-- Append-only: the triggers below refuse UPDATE, DELETE and TRUNCATE for every role, the owner included.
CREATE TABLE reflect.decryption_audit (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  by_login name NOT NULL,
  request_id bigint NOT NULL REFERENCES reflect.requests (id),
  what text[] NOT NULL,
  purpose text NOT NULL CHECK (pg_catalog.length(purpose) BETWEEN 3 AND 500),
  redacted boolean NOT NULL
);
CREATE INDEX decryption_audit_request ON reflect.decryption_audit (request_id);

-- Apps registered with `pgreflect apps add`: a login role of reflect_app and the key id it encrypts with.
CREATE TABLE reflect.apps (
  name text PRIMARY KEY CONSTRAINT app_name_format CHECK (name ~ '^[a-z][a-z0-9_]{0,40}$'),
  login name NOT NULL UNIQUE,
  key_id text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  revoked_at timestamptz
);

ALTER TABLE reflect.request_events DROP CONSTRAINT request_events_event_check;
ALTER TABLE reflect.request_events ADD CONSTRAINT request_events_event_check CHECK (event IN
  ('submitted', 'claimed', 'succeeded', 'retry', 'failed', 'released', 'lease_expired', 'key_rotated',
   'undecryptable'));

ALTER TABLE reflect.key_verifiers ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.memory_shares ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.decryption_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.apps ENABLE ROW LEVEL SECURITY;

