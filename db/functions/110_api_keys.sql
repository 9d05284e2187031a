SET LOCAL ROLE reflect_owner;

-- API keys (migration 0011). Administrators create and revoke them (these functions are theirs alone); the
-- server's login (group reflect_api) may only verify one. The secret is made here, from pgcrypto's random
-- bytes, and leaves only as this function's result: it is never a statement parameter, so no setting can
-- log it on the way in.
CREATE OR REPLACE FUNCTION reflect.create_api_key_v1(p_name text, p_app text)
RETURNS TABLE (id text, key text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_id text := encode(public.gen_random_bytes(6), 'hex');
  v_secret text := encode(public.gen_random_bytes(24), 'hex');
BEGIN
  IF p_name IS NULL OR p_name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$' THEN
    RAISE EXCEPTION 'API key name must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$' USING ERRCODE = 'PR001';
  END IF;
  IF NOT EXISTS (SELECT FROM reflect.apps a WHERE a.name = p_app AND a.revoked_at IS NULL) THEN
    RAISE EXCEPTION 'no active app named "%"', left(p_app, 64) USING ERRCODE = 'PR005',
      HINT = 'create it first: pgreflect apps add NAME';
  END IF;
  IF EXISTS (SELECT FROM reflect.api_keys k WHERE k.name = p_name AND k.revoked_at IS NULL) THEN
    RAISE EXCEPTION 'an API key named "%" exists; revoke it first or choose another name', p_name
      USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.api_keys (id, name, app, secret_hash)
  VALUES (v_id, p_name, p_app,
          public.crypt(v_secret, public.gen_salt('bf', reflect._setting_int('api_key_bcrypt_cost'))));
  RETURN QUERY SELECT v_id, 'pgr-' || v_id || '-' || v_secret;
END
$$;

-- The app (and its login) a key acts as, or no row: a malformed, unknown, revoked or wrong key, or an app that
-- was revoked, all look the same to the caller. Marks the key used (at most once a minute: one write per
-- minute, not per request).
CREATE OR REPLACE FUNCTION reflect.verify_api_key_v1(p_key text)
RETURNS TABLE (key_id text, app text, login name)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  m text[] := regexp_match(p_key, '^pgr-([0-9a-f]{12})-([0-9a-f]{48})$');
BEGIN
  IF m IS NULL THEN
    RETURN;
  END IF;
  RETURN QUERY
    UPDATE reflect.api_keys k
    SET last_used_at = CASE WHEN k.last_used_at > now() - interval '1 minute' THEN k.last_used_at ELSE now() END
    FROM reflect.apps a
    WHERE k.id = m[1] AND k.revoked_at IS NULL AND a.name = k.app AND a.revoked_at IS NULL
      AND k.secret_hash = public.crypt(m[2], k.secret_hash)
    RETURNING k.id, a.name, a.login;
END
$$;

-- Revokes a live key by name or id; servers that remember it forget it at once (NOTIFY api_key_revoked with
-- the key's public id only).
CREATE OR REPLACE FUNCTION reflect.revoke_api_key_v1(p_name_or_id text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_id text;
BEGIN
  UPDATE reflect.api_keys k SET revoked_at = now()
  WHERE (k.name = p_name_or_id OR k.id = p_name_or_id) AND k.revoked_at IS NULL
  RETURNING k.id INTO v_id;
  IF v_id IS NULL THEN
    RAISE EXCEPTION 'no live API key named "%"', left(p_name_or_id, 64) USING ERRCODE = 'PR005';
  END IF;
  PERFORM pg_notify('api_key_revoked', v_id);
  RETURN v_id;
END
$$;

-- A revoked app's keys stop working with it (verify_api_key_v1 checks the app); servers forget them now.
CREATE OR REPLACE FUNCTION reflect._apps_after_revoke()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_id text;
BEGIN
  FOR v_id IN SELECT k.id FROM reflect.api_keys k WHERE k.app = NEW.name AND k.revoked_at IS NULL LOOP
    PERFORM pg_notify('api_key_revoked', v_id);
  END LOOP;
  RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER _900_forget_api_keys
  AFTER UPDATE OF revoked_at ON reflect.apps
  FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL)
  EXECUTE FUNCTION reflect._apps_after_revoke();

CREATE OR REPLACE VIEW reflect.api_key_list AS
SELECT k.id, k.name, k.app, a.login, k.created_at, k.created_by, k.last_used_at, k.revoked_at
FROM reflect.api_keys k
JOIN reflect.apps a ON a.name = k.app;

-- A person's web account (the login person_NAME is made by the caller, in the role's group): a new password,
-- made here and returned once; an existing person gets a new one (the old stops working).
CREATE OR REPLACE FUNCTION reflect.set_person_v1(p_name text, p_role text)
RETURNS TABLE (login name, password text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_password text := encode(public.gen_random_bytes(12), 'hex');
BEGIN
  IF p_name IS NULL OR p_name !~ '^[a-z][a-z0-9_]{0,40}$' THEN
    RAISE EXCEPTION 'person name must match ^[a-z][a-z0-9_]{0,40}$' USING ERRCODE = 'PR001';
  END IF;
  IF p_role IS NULL OR p_role NOT IN ('reviewer', 'analyst') THEN
    RAISE EXCEPTION 'role must be reviewer or analyst' USING ERRCODE = 'PR001';
  END IF;
  IF EXISTS (SELECT FROM reflect.people p WHERE p.name = p_name AND p.role <> p_role) THEN
    RAISE EXCEPTION 'person % has another role; a role does not change (add the person under another name)', p_name
      USING ERRCODE = 'PR001';
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'person_' || p_name)
     AND NOT EXISTS (SELECT FROM reflect.people p WHERE p.name = p_name) THEN
    RAISE EXCEPTION 'a login named person_% exists and is not a pgreflect person', p_name USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.people AS p (name, login, role, password_hash)
  VALUES (p_name, 'person_' || p_name, p_role,
          public.crypt(v_password, public.gen_salt('bf', reflect._setting_int('api_key_bcrypt_cost'))))
  ON CONFLICT (name) DO UPDATE
    SET role = EXCLUDED.role, password_hash = EXCLUDED.password_hash, revoked_at = NULL;
  RETURN QUERY SELECT ('person_' || p_name)::name, v_password;
END
$$;

-- The login and role a name and password belong to, or no row (unknown, revoked or wrong look the same).
CREATE OR REPLACE FUNCTION reflect.verify_person_v1(p_name text, p_password text)
RETURNS TABLE (login name, role text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT p.login, p.role FROM reflect.people p
  WHERE p.name = p_name AND p.revoked_at IS NULL AND length(p_password) <= 200
    AND p.password_hash = public.crypt(p_password, p.password_hash)
$$;

CREATE OR REPLACE FUNCTION reflect.revoke_person_v1(p_name text)
RETURNS name
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_login name;
BEGIN
  UPDATE reflect.people SET revoked_at = now() WHERE name = p_name AND revoked_at IS NULL RETURNING login INTO v_login;
  IF v_login IS NULL THEN
    RAISE EXCEPTION 'no person named "%"', left(p_name, 64) USING ERRCODE = 'PR005';
  END IF;
  PERFORM pg_notify('person_revoked', v_login);
  RETURN v_login;
END
$$;
