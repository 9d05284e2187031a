SET LOCAL ROLE reflect_owner;

-- Error codes raised by pgreflect functions (class PR). The Python client maps them to exceptions.
--   PR001 invalid_input        bad argument; nothing was written
--   PR002 stale_lease          the request is no longer running under this lease token
--   PR003 unknown_model        no such model version / none active
--   PR004 missing_key          no encryption key loaded in this session for the key id needed
--   PR005 not_found            no such request (or not yours)
--   PR006 append_only          an audit table refuses UPDATE, DELETE and TRUNCATE
--   PR007 queue_full           the model version has max_queued_per_version requests waiting; retry later

CREATE OR REPLACE FUNCTION reflect._setting_int(p_key text)
RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT (value #>> '{}')::integer FROM reflect.settings WHERE key = p_key
$$;

CREATE OR REPLACE FUNCTION reflect._check_key_id(p_key_id text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_key_id IS NULL OR p_key_id !~ '^[a-z0-9_]{1,32}$' THEN
    RAISE EXCEPTION 'key id must match ^[a-z0-9_]{1,32}$' USING ERRCODE = 'PR001';
  END IF;
  RETURN p_key_id;
END
$$;

-- Creates a LOGIN role in one of pgreflect's group roles (run by an administrator with CREATEROLE).
-- Dynamic SQL only through format('%I'), after validating both names.
CREATE OR REPLACE FUNCTION reflect.ensure_login_role_v1(p_login text, p_group text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_login IS NULL OR p_login !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
    RAISE EXCEPTION 'login role name must match ^[a-z_][a-z0-9_]{0,62}$' USING ERRCODE = 'PR001';
  END IF;
  IF p_group IS NULL OR p_group NOT IN ('reflect_app', 'reflect_worker', 'reflect_analyst', 'reflect_reviewer',
                                        'reflect_api', 'reflect_owner') THEN
    RAISE EXCEPTION 'group must be one of reflect_app, reflect_worker, reflect_analyst, reflect_reviewer, reflect_api, '
                    'reflect_owner'
      USING ERRCODE = 'PR001';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = p_login) THEN
    EXECUTE format('CREATE ROLE %I LOGIN', p_login);
  END IF;
  IF NOT pg_has_role(p_login, p_group, 'MEMBER') THEN
    EXECUTE format('GRANT %I TO %I', p_group, p_login);
  END IF;
END
$$;

CREATE OR REPLACE FUNCTION reflect._setting_float(p_key text)
RETURNS double precision
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT (value #>> '{}')::double precision FROM reflect.settings WHERE key = p_key
$$;

CREATE OR REPLACE FUNCTION reflect._setting_text(p_key text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT value #>> '{}' FROM reflect.settings WHERE key = p_key
$$;
