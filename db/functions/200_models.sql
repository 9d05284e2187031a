SET LOCAL ROLE reflect_owner;

-- Checks a new version's name and returns its parent's id (NULL without a parent): the checks every
-- registration makes, whichever backend serves the version.
CREATE OR REPLACE FUNCTION reflect._checked_parent(p_name text, p_parent text)
RETURNS integer
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_parent integer;
BEGIN
  IF p_name IS NULL OR p_name !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$' THEN
    RAISE EXCEPTION 'model version name must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$' USING ERRCODE = 'PR001';
  END IF;
  IF p_parent IS NOT NULL THEN
    SELECT id INTO v_parent FROM reflect.model_versions WHERE name = p_parent;
    IF v_parent IS NULL THEN
      RAISE EXCEPTION 'unknown parent model version "%"', p_parent USING ERRCODE = 'PR003';
    END IF;
  END IF;
  RETURN v_parent;
END
$$;

-- Registers a GGUF the worker may serve. Idempotent on (name, sha256): re-registering the same file under
-- the same name returns its id; the same name with another hash is an error (versions are immutable).
CREATE OR REPLACE FUNCTION reflect.register_model_version_v1(
  p_name text,
  p_gguf_path text,
  p_sha256 text,
  p_source text,
  p_n_ctx integer DEFAULT 4096,
  p_parent text DEFAULT NULL,
  p_activate boolean DEFAULT false
)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN reflect.register_model_version_v2(p_name, p_gguf_path, p_sha256, p_source, p_n_ctx, p_parent, p_activate,
                                           'llama');
END
$$;

-- v2: with the backend that can run the version (llama: a GGUF file; noop: a test backend that answers
-- "ok" and is only ever served by a noop worker).
CREATE OR REPLACE FUNCTION reflect.register_model_version_v2(
  p_name text,
  p_gguf_path text,
  p_sha256 text,
  p_source text,
  p_n_ctx integer DEFAULT 4096,
  p_parent text DEFAULT NULL,
  p_activate boolean DEFAULT false,
  p_backend text DEFAULT 'llama'
)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_id integer;
  v_sha text;
  v_parent integer;
  v_backend text;
BEGIN
  IF p_backend IS NULL OR p_backend NOT IN ('llama', 'noop') THEN
    RAISE EXCEPTION 'backend must be llama or noop (a version on an OpenAI-compatible server: '
                    'register_remote_model_version_v1)' USING ERRCODE = 'PR001';
  END IF;
  v_parent := reflect._checked_parent(p_name, p_parent);
  IF p_sha256 IS NULL OR p_sha256 !~ '^[0-9a-f]{64}$' THEN
    RAISE EXCEPTION 'sha256 must be 64 lowercase hex digits' USING ERRCODE = 'PR001';
  END IF;

  SELECT id, sha256, backend INTO v_id, v_sha, v_backend FROM reflect.model_versions WHERE name = p_name FOR UPDATE;
  IF v_id IS NOT NULL AND v_sha <> p_sha256 THEN
    RAISE EXCEPTION 'model version "%" is already registered with another sha256', p_name
      USING ERRCODE = 'PR001', HINT = 'register the new file under a new name';
  END IF;
  IF v_id IS NOT NULL AND v_backend <> p_backend THEN
    RAISE EXCEPTION 'model version "%" is already registered for the % backend', p_name, v_backend
      USING ERRCODE = 'PR001';
  END IF;
  IF v_id IS NULL THEN
    INSERT INTO reflect.model_versions (name, gguf_path, source, sha256, n_ctx, parent_id, backend)
    VALUES (p_name, p_gguf_path, coalesce(p_source, 'path'), p_sha256, coalesce(p_n_ctx, 4096), v_parent, p_backend)
    ON CONFLICT (name) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN  -- a concurrent registration of the same name won the race
      RETURN reflect.register_model_version_v2(p_name, p_gguf_path, p_sha256, p_source, p_n_ctx, p_parent,
                                                p_activate, p_backend);
    END IF;
  ELSE
    UPDATE reflect.model_versions SET gguf_path = p_gguf_path WHERE id = v_id;  -- the file may have moved
  END IF;
  IF p_activate OR NOT EXISTS (SELECT FROM reflect.model_versions WHERE is_active) THEN
    PERFORM reflect.activate_model_version_v1(p_name);
  END IF;
  RETURN v_id;
END
$$;

-- Registers a version served by an OpenAI-compatible server (backend 'openai'): its base URL (…/v1) and the
-- model name the server knows it by. Idempotent on (name, remote_model); the URL may change (the server moved),
-- the model may not (versions are immutable: register another name).
CREATE OR REPLACE FUNCTION reflect.register_remote_model_version_v1(
  p_name text,
  p_base_url text,
  p_remote_model text,
  p_n_ctx integer DEFAULT 4096,
  p_parent text DEFAULT NULL,
  p_activate boolean DEFAULT false
)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v reflect.model_versions;
  v_parent integer;
  v_url text := regexp_replace(coalesce(p_base_url, ''), '/+$', '');
BEGIN
  v_parent := reflect._checked_parent(p_name, p_parent);
  IF v_url !~ '^https?://[^/@[:space:]]+(/[^[:space:]]*)?$' THEN
    RAISE EXCEPTION 'base URL must be http(s)://host[:port][/path] without credentials (got %)',
      left(regexp_replace(v_url, '//[^/]*@', '//…@'), 200)
      USING ERRCODE = 'PR001', HINT = 'the worker reads the API key from PGREFLECT_OPENAI_API_KEY';
  END IF;
  IF p_remote_model IS NULL OR p_remote_model !~ '^[^[:space:][:cntrl:]]{1,200}$' THEN
    RAISE EXCEPTION 'remote model must be the server''s model name (1 to 200 characters, no spaces)'
      USING ERRCODE = 'PR001';
  END IF;
  SELECT * INTO v FROM reflect.model_versions WHERE name = p_name FOR UPDATE;
  IF v.id IS NOT NULL AND (v.backend <> 'openai' OR v.remote_model <> p_remote_model) THEN
    RAISE EXCEPTION 'model version "%" is already registered for another model (% backend)', p_name, v.backend
      USING ERRCODE = 'PR001', HINT = 'register it under a new name';
  END IF;
  IF v.id IS NULL THEN
    INSERT INTO reflect.model_versions (name, source, n_ctx, parent_id, backend, base_url, remote_model)
    VALUES (p_name, 'remote', coalesce(p_n_ctx, 4096), v_parent, 'openai', v_url, p_remote_model)
    ON CONFLICT (name) DO NOTHING
    RETURNING * INTO v;
    IF v.id IS NULL THEN  -- a concurrent registration of the same name won the race
      RETURN reflect.register_remote_model_version_v1(p_name, p_base_url, p_remote_model, p_n_ctx, p_parent,
                                                       p_activate);
    END IF;
  ELSE
    UPDATE reflect.model_versions SET base_url = v_url WHERE id = v.id;
  END IF;
  IF p_activate OR NOT EXISTS (SELECT FROM reflect.model_versions WHERE is_active) THEN
    PERFORM reflect.activate_model_version_v1(p_name);
  END IF;
  RETURN v.id;
END
$$;

-- Makes p_name the default version for requests that name none. Compare-and-set: takes the row lock of
-- the currently active version first, so two concurrent activations serialise.
CREATE OR REPLACE FUNCTION reflect.activate_model_version_v1(p_name text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_id integer;
BEGIN
  PERFORM 1 FROM reflect.model_versions WHERE is_active FOR UPDATE;
  SELECT id INTO v_id FROM reflect.model_versions WHERE name = p_name FOR UPDATE;
  IF v_id IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', p_name USING ERRCODE = 'PR003';
  END IF;
  UPDATE reflect.model_versions SET is_active = false WHERE is_active AND id <> v_id;
  UPDATE reflect.model_versions SET is_active = true WHERE id = v_id AND NOT is_active;
  RETURN v_id;
END
$$;

-- What a worker needs to load the versions it serves: every registered version of its backend when
-- p_names is NULL; a named version of another backend is an error (a backend only serves what it can run).
CREATE OR REPLACE FUNCTION reflect.model_versions_to_serve_v2(p_backend text, p_names text[] DEFAULT NULL)
RETURNS TABLE (id integer, name text, gguf_path text, sha256 text, n_ctx integer, is_active boolean)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_missing text;
  v_other record;
BEGIN
  IF p_names IS NOT NULL THEN
    SELECT n INTO v_missing FROM unnest(p_names) n
    WHERE NOT EXISTS (SELECT FROM reflect.model_versions mv WHERE mv.name = n) LIMIT 1;
    IF v_missing IS NOT NULL THEN
      RAISE EXCEPTION 'unknown model version "%"', v_missing USING ERRCODE = 'PR003';
    END IF;
    SELECT mv.name, mv.backend INTO v_other FROM reflect.model_versions mv
    WHERE mv.name = ANY (p_names) AND mv.backend IS DISTINCT FROM p_backend LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'model version "%" runs on the % backend, not on %', v_other.name, v_other.backend,
        coalesce(p_backend, 'NULL') USING ERRCODE = 'PR003';
    END IF;
  END IF;
  RETURN QUERY
  SELECT mv.id, mv.name, mv.gguf_path, mv.sha256, mv.n_ctx, mv.is_active
  FROM reflect.model_versions mv
  WHERE mv.backend = p_backend AND (p_names IS NULL OR mv.name = ANY (p_names))
  ORDER BY mv.is_active DESC, mv.id;
END
$$;

CREATE OR REPLACE FUNCTION reflect.model_versions_to_serve_v1(p_names text[] DEFAULT NULL)
RETURNS TABLE (id integer, name text, gguf_path text, sha256 text, n_ctx integer, is_active boolean)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT * FROM reflect.model_versions_to_serve_v2('llama', p_names)
$$;

-- v3: adapter versions too. A version with an adapter runs on its base's GGUF (base_model_version_id) with
-- the LoRA file switched in per request. Naming a base serves its adapter versions as well, and naming an
-- adapter version serves its base; bases come first so a worker loads each GGUF once.
CREATE OR REPLACE FUNCTION reflect.model_versions_to_serve_v3(p_backend text, p_names text[] DEFAULT NULL)
RETURNS TABLE (id integer, name text, gguf_path text, sha256 text, n_ctx integer, is_active boolean,
               base_model_version_id integer, adapter_path text, adapter_sha256 text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM FROM reflect.model_versions_to_serve_v2(p_backend, p_names);  -- validates the names
  RETURN QUERY
  SELECT mv.id, mv.name, mv.gguf_path, mv.sha256, mv.n_ctx, mv.is_active, mv.base_model_version_id,
         mv.adapter_path, mv.adapter_sha256
  FROM reflect.model_versions mv
  LEFT JOIN reflect.model_versions base ON base.id = mv.base_model_version_id
  WHERE mv.backend = p_backend
    AND (p_names IS NULL OR mv.name = ANY (p_names) OR base.name = ANY (p_names)
         OR mv.id IN (SELECT a.base_model_version_id FROM reflect.model_versions a WHERE a.name = ANY (p_names)))
  ORDER BY mv.base_model_version_id NULLS FIRST, mv.is_active DESC, mv.id;
END
$$;

-- v4: also where a remote version is served (backend 'openai': base URL and the server's model name).
CREATE OR REPLACE FUNCTION reflect.model_versions_to_serve_v4(p_backend text, p_names text[] DEFAULT NULL)
RETURNS TABLE (id integer, name text, gguf_path text, sha256 text, n_ctx integer, is_active boolean,
               base_model_version_id integer, adapter_path text, adapter_sha256 text, base_url text,
               remote_model text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT s.*, (SELECT mv.base_url FROM reflect.model_versions mv WHERE mv.id = s.id),
         (SELECT mv.remote_model FROM reflect.model_versions mv WHERE mv.id = s.id)
  FROM reflect.model_versions_to_serve_v3(p_backend, p_names) s  -- in its order: bases first
$$;
