SET LOCAL ROLE reflect_owner;

CREATE OR REPLACE FUNCTION reflect.worker_seen_v1(
  p_worker_id text, p_model_version_ids integer[], p_pid integer, p_hostname text
)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO reflect.workers (worker_id, hostname, pid, model_version_ids)
  VALUES (p_worker_id, left(p_hostname, 200), p_pid, p_model_version_ids)
  ON CONFLICT (worker_id) DO UPDATE
  SET last_seen_at = now(), model_version_ids = excluded.model_version_ids, stopped_at = NULL
$$;

CREATE OR REPLACE FUNCTION reflect.worker_stopped_v1(p_worker_id text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE reflect.workers SET stopped_at = now(), last_seen_at = now() WHERE worker_id = p_worker_id
$$;

CREATE OR REPLACE VIEW reflect.worker_status AS
SELECT w.worker_id, w.hostname, w.pid,
       ARRAY(SELECT mv.name FROM reflect.model_versions mv WHERE mv.id = ANY (w.model_version_ids)
             ORDER BY mv.id) AS model_versions,
       w.started_at, w.last_seen_at, w.stopped_at,
       w.stopped_at IS NULL AND w.last_seen_at > now() - make_interval(secs => s.live_s) AS live
FROM reflect.workers w
-- The setting is read from the table, not through reflect._setting_int: a view's function calls are checked
-- against the reader's privileges, and analysts have none on internal functions.
CROSS JOIN (SELECT (value #>> '{}')::integer AS live_s FROM reflect.settings WHERE key = 'worker_live_s') s;

-- Live workers that serve p_model_version (the active version when NULL).
CREATE OR REPLACE FUNCTION reflect.live_worker_count_v1(p_model_version text DEFAULT NULL)
RETURNS integer
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT count(*)::integer
  FROM reflect.workers w
  JOIN reflect.model_versions mv
    ON mv.id = ANY (w.model_version_ids)
   AND (mv.name = p_model_version OR (p_model_version IS NULL AND mv.is_active))
  WHERE w.stopped_at IS NULL
    AND w.last_seen_at > now() - make_interval(secs => reflect._setting_int('worker_live_s'))
$$;
