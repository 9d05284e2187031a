-- Canonical schema: pg_dump of a database built by the migrations and function files.
-- Regenerate: PGREFLECT_UPDATE_GOLDEN=1 scripts/test.sh tests/test_schema.py

CREATE SCHEMA reflect;
ALTER SCHEMA reflect OWNER TO reflect_owner;
CREATE SCHEMA reflect_meta;
ALTER SCHEMA reflect_meta OWNER TO postgres;
CREATE TYPE reflect.request_state AS ENUM (
    'queued',
    'running',
    'succeeded',
    'failed'
);
ALTER TYPE reflect.request_state OWNER TO reflect_owner;
CREATE FUNCTION reflect._app_requests_insert() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_refused text;
BEGIN
  -- Every other column is computed; a value given for one would be silently dropped, so it is refused.
  SELECT string_agg(key, ', ' ORDER BY key) INTO v_refused
  FROM jsonb_each(to_jsonb(NEW))
  WHERE value <> 'null'::jsonb
    AND key NOT IN ('prompt', 'system_prompt', 'params', 'idempotency_key', 'caller', 'model_version', 'history');
  IF v_refused IS NOT NULL THEN
    RAISE EXCEPTION 'only prompt, system_prompt, params, idempotency_key, caller, model_version and history can be inserted (got %)',
      v_refused USING ERRCODE = 'PR001';
  END IF;
  NEW.id := reflect.submit_v2(NEW.prompt, NEW.system_prompt, NEW.params, NEW.idempotency_key, NEW.caller,
                              NEW.model_version, NEW.history);
  SELECT * INTO NEW FROM reflect.app_requests WHERE id = NEW.id;
  RETURN NEW;
END
$$;
ALTER FUNCTION reflect._app_requests_insert() OWNER TO reflect_owner;
CREATE FUNCTION reflect._append_only() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  RAISE EXCEPTION 'reflect.% is append-only: rows can be added, never changed or removed', TG_TABLE_NAME
    USING ERRCODE = 'PR006';
END
$$;
ALTER FUNCTION reflect._append_only() OWNER TO reflect_owner;
CREATE FUNCTION reflect._apply_confidence(p_request_id bigint) RETURNS double precision
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  a reflect.answers;
  c record;
  v_params jsonb;
  v_reanswered boolean;
BEGIN
  SELECT * INTO a FROM reflect.answers WHERE request_id = p_request_id;
  SELECT * INTO c FROM reflect._confidence(a.model_version_id, reflect._feature_values_of(p_request_id),
                                           reflect._signals_of(p_request_id), a.logprob_norm);
  SELECT params INTO v_params FROM reflect.requests WHERE id = p_request_id;
  v_reanswered := EXISTS (SELECT FROM reflect.answer_candidates WHERE request_id = p_request_id AND n > 1);
  UPDATE reflect.answers
  SET confidence = c.confidence, calibrator_id = c.calibrator_id,
      action = CASE WHEN v_reanswered THEN 'reanswer' ELSE reflect._low_confidence_action(v_params, c.confidence) END,
      memory_used = EXISTS (SELECT FROM reflect.answer_memories m WHERE m.request_id = p_request_id)
  WHERE request_id = p_request_id;
  RETURN c.confidence;
END
$$;
ALTER FUNCTION reflect._apply_confidence(p_request_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._apps_after_revoke() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
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
ALTER FUNCTION reflect._apps_after_revoke() OWNER TO reflect_owner;
CREATE FUNCTION reflect._calibration_metrics(p_conf double precision[], p_y boolean[]) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT jsonb_build_object(
    'n', coalesce(cardinality(p_y), 0),
    'accuracy', (SELECT avg(y::int) FROM unnest(p_y) y),
    'mean_confidence', (SELECT avg(c) FROM unnest(p_conf) c),
    'ece', reflect.ece_v1(p_conf, p_y),
    'brier', reflect.brier_v1(p_conf, p_y),
    'auroc_wrong', reflect.auroc_v1((SELECT array_agg(1 - c) FROM unnest(p_conf) c), (SELECT array_agg(NOT y) FROM unnest(p_y) y)),
    'accuracy_at_80', reflect.accuracy_at_coverage_v1(p_conf, p_y, 0.8))
$$;
ALTER FUNCTION reflect._calibration_metrics(p_conf double precision[], p_y boolean[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect._check_history(p_history jsonb) RETURNS integer
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_turn jsonb;
  v_i integer := 0;
  v_chars bigint := 0;
  v_expected text;
BEGIN
  IF jsonb_typeof(p_history) <> 'array' THEN
    RAISE EXCEPTION 'history must be a JSON array of {"role", "content"} messages' USING ERRCODE = 'PR001';
  END IF;
  FOR v_turn IN SELECT value FROM jsonb_array_elements(p_history) LOOP
    IF jsonb_typeof(v_turn) <> 'object' OR EXISTS (SELECT FROM jsonb_object_keys(v_turn) k WHERE k NOT IN ('role', 'content'))
       OR jsonb_typeof(v_turn -> 'content') IS DISTINCT FROM 'string' THEN
      RAISE EXCEPTION 'history[%] must be {"role", "content"} with text content', v_i USING ERRCODE = 'PR001';
    END IF;
    v_expected := (ARRAY['user', 'assistant'])[v_i % 2 + 1];
    IF v_turn ->> 'role' IS DISTINCT FROM v_expected THEN
      RAISE EXCEPTION 'history[%]: expected % % message (turns alternate user, assistant, ...; the prompt is the last user turn)',
        v_i, CASE v_expected WHEN 'user' THEN 'a' ELSE 'an' END, v_expected USING ERRCODE = 'PR001';
    END IF;
    v_chars := v_chars + length(v_turn ->> 'content');
    v_i := v_i + 1;
  END LOOP;
  IF v_i % 2 = 1 THEN
    RAISE EXCEPTION 'history must end with an assistant message (the prompt is the next user turn)' USING ERRCODE = 'PR001';
  END IF;
  RETURN v_chars;
END
$$;
ALTER FUNCTION reflect._check_history(p_history jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._check_key_id(p_key_id text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
BEGIN
  IF p_key_id IS NULL OR p_key_id !~ '^[a-z0-9_]{1,32}$' THEN
    RAISE EXCEPTION 'key id must match ^[a-z0-9_]{1,32}$' USING ERRCODE = 'PR001';
  END IF;
  RETURN p_key_id;
END
$_$;
ALTER FUNCTION reflect._check_key_id(p_key_id text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._check_lease_seconds(p_lease_seconds integer) RETURNS interval
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  IF p_lease_seconds IS NULL OR p_lease_seconds NOT BETWEEN 1 AND 86400 THEN
    RAISE EXCEPTION 'lease must be between 1 and 86400 seconds' USING ERRCODE = 'PR001';
  END IF;
  RETURN make_interval(secs => p_lease_seconds);
END
$$;
ALTER FUNCTION reflect._check_lease_seconds(p_lease_seconds integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect._checked_parent(p_name text, p_parent text) RETURNS integer
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;
ALTER FUNCTION reflect._checked_parent(p_name text, p_parent text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._confidence(p_model_version_id integer, p_values jsonb, p_signals jsonb, p_logprob_norm double precision, OUT confidence double precision, OUT calibrator_id integer) RETURNS record
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  cal reflect.calibrators;
BEGIN
  SELECT * INTO cal FROM reflect.calibrators c WHERE c.model_version_id = p_model_version_id AND c.is_active;
  IF cal.id IS NULL THEN
    confidence := coalesce((p_signals ->> 'p_true')::double precision, p_logprob_norm, 0);
    RETURN;
  END IF;
  confidence := reflect._logistic(reflect._vector(p_values, cal.features), cal.feature_means, cal.feature_stds,
                                  cal.weights);
  calibrator_id := cal.id;
END
$$;
ALTER FUNCTION reflect._confidence(p_model_version_id integer, p_values jsonb, p_signals jsonb, p_logprob_norm double precision, OUT confidence double precision, OUT calibrator_id integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect._cross_fitted(p_request_ids bigint[], p_correct boolean[], p_folds integer[], OUT confidence double precision[], OUT correct boolean[]) RETURNS record
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  tx double precision[]; ty boolean[]; hx double precision[]; hy boolean[];
  f record;
BEGIN
  confidence := '{}'; correct := '{}';
  FOR k IN 0..1 LOOP
    SELECT array_agg(reflect._feature_vector(r) ORDER BY i) FILTER (WHERE fold <> k),
           array_agg(y ORDER BY i) FILTER (WHERE fold <> k),
           array_agg(reflect._feature_vector(r) ORDER BY i) FILTER (WHERE fold = k),
           array_agg(y ORDER BY i) FILTER (WHERE fold = k)
    INTO tx, ty, hx, hy
    FROM unnest(p_request_ids, p_correct, p_folds) WITH ORDINALITY AS u(r, y, fold, i);
    CONTINUE WHEN hy IS NULL;
    IF (SELECT count(*) FILTER (WHERE y) >= 2 AND count(*) FILTER (WHERE NOT y) >= 2 FROM unnest(ty) y) THEN
      f := reflect._fit_logistic(tx, ty, reflect._setting_float('calibration_l2'));
      confidence := confidence || reflect._logistic_rows(hx, f.means, f.stds, f.weights);
    ELSE
      confidence := confidence || array_fill(coalesce((SELECT avg(y::int) FROM unnest(ty) y), 0.5)::double precision,
                                             ARRAY[cardinality(hy)]);
    END IF;
    correct := correct || hy;
  END LOOP;
END
$$;
ALTER FUNCTION reflect._cross_fitted(p_request_ids bigint[], p_correct boolean[], p_folds integer[], OUT confidence double precision[], OUT correct boolean[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect._current_key_id() RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_id text := nullif(current_setting('reflect.current_key_id', true), '');
BEGIN
  IF v_id IS NULL OR reflect._key(v_id) IS NULL THEN
    RAISE EXCEPTION 'no encryption key loaded in this session'
      USING ERRCODE = 'PR004',
            HINT = 'call reflect.use_key_v1(key_id, key) with bind parameters first';
  END IF;
  RETURN v_id;
END
$$;
ALTER FUNCTION reflect._current_key_id() OWNER TO reflect_owner;
CREATE FUNCTION reflect._decide(p_candidate integer, p_decision text, p_reason text, p_numbers jsonb, p_rule jsonb, p_job_id bigint DEFAULT NULL::bigint) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  c reflect.model_versions;
  v_id bigint;
BEGIN
  PERFORM 1 FROM reflect.model_versions WHERE is_active FOR UPDATE;
  SELECT * INTO c FROM reflect.model_versions WHERE id = p_candidate FOR UPDATE;
  UPDATE reflect.canaries
  SET state = CASE WHEN p_decision = 'promote' AND candidate_id = c.id THEN 'promoted'
                   WHEN p_decision IN ('reject', 'rollback') AND candidate_id = c.id THEN 'rolled_back'
                   ELSE 'stopped' END,
      ended_at = clock_timestamp()
  WHERE state = 'running' AND (candidate_id = c.id OR p_decision = 'canary');
  IF p_decision = 'canary' THEN
    UPDATE reflect.model_versions SET stage = 'canary' WHERE id = c.id;
    INSERT INTO reflect.canaries (candidate_id, parent_id, share, started_by)
    VALUES (c.id, coalesce(c.parent_id, (SELECT id FROM reflect.model_versions WHERE is_active)),
            reflect._setting_float('canary_share'), session_user);
  ELSIF p_decision = 'promote' THEN
    UPDATE reflect.model_versions SET stage = 'retired' WHERE is_active AND id <> c.id;
    UPDATE reflect.model_versions SET stage = 'promoted' WHERE id = c.id;
    PERFORM reflect.activate_model_version_v1(c.name);
  ELSIF p_decision = 'reject' THEN
    UPDATE reflect.model_versions SET stage = 'rejected' WHERE id = c.id;
  ELSIF p_decision = 'rollback' THEN
    UPDATE reflect.model_versions SET stage = 'rejected' WHERE id = c.id;
    UPDATE reflect.model_versions SET stage = 'promoted' WHERE id = c.parent_id;
    PERFORM reflect.activate_model_version_v1((SELECT name FROM reflect.model_versions WHERE id = c.parent_id));
  END IF;
  INSERT INTO reflect.promotion_decisions (candidate_id, parent_id, job_id, decision, decided_by, reason, numbers, rule)
  VALUES (c.id, c.parent_id, p_job_id, p_decision, session_user, p_reason, coalesce(p_numbers, '{}'), coalesce(p_rule, '{}'))
  RETURNING id INTO v_id;
  RETURN v_id;
END
$$;
ALTER FUNCTION reflect._decide(p_candidate integer, p_decision text, p_reason text, p_numbers jsonb, p_rule jsonb, p_job_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._decrypt(p_cipher bytea, p_key_id text) RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  IF p_cipher IS NULL THEN
    RETURN NULL;
  END IF;
  IF reflect._key(p_key_id) IS NULL THEN
    RAISE EXCEPTION 'no encryption key loaded for key id %', p_key_id USING ERRCODE = 'PR004';
  END IF;
  RETURN public.pgp_sym_decrypt(p_cipher, reflect._key(p_key_id));
END
$$;
ALTER FUNCTION reflect._decrypt(p_cipher bytea, p_key_id text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._decrypt_or_null(p_cipher bytea, p_key_id text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT public.pgp_sym_decrypt(p_cipher, k) FROM (SELECT reflect._key(p_key_id) AS k) s WHERE k IS NOT NULL
$$;
ALTER FUNCTION reflect._decrypt_or_null(p_cipher bytea, p_key_id text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._decrypt_safe(p_cipher bytea, p_key_id text, OUT plain text, OUT ok boolean) RETURNS record
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  ok := true;
  IF p_cipher IS NULL THEN
    RETURN;
  END IF;
  BEGIN
    plain := reflect._decrypt(p_cipher, p_key_id);
  EXCEPTION WHEN external_routine_invocation_exception OR data_exception THEN
    -- pgcrypto: "Wrong key or corrupt data" (39000), bad UTF-8 in the plaintext (22021)
    plain := NULL;
    ok := false;
  END;
END
$$;
ALTER FUNCTION reflect._decrypt_safe(p_cipher bytea, p_key_id text, OUT plain text, OUT ok boolean) OWNER TO reflect_owner;
CREATE FUNCTION reflect._decrypts(p_cipher bytea, p_key text) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  PERFORM public.pgp_sym_decrypt(p_cipher, p_key);
  RETURN true;
EXCEPTION WHEN OTHERS THEN
  RETURN false;
END
$$;
ALTER FUNCTION reflect._decrypts(p_cipher bytea, p_key text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._default_version() RETURNS integer
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT CASE WHEN c.id IS NOT NULL AND random() < c.share THEN c.candidate_id ELSE a.id END
  FROM reflect.model_versions a
  LEFT JOIN reflect.canaries c ON c.state = 'running' AND c.parent_id = a.id
  WHERE a.is_active
$$;
ALTER FUNCTION reflect._default_version() OWNER TO reflect_owner;
CREATE FUNCTION reflect._encrypt(p_plain text, p_key_id text) RETURNS bytea
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_key text := reflect._key(p_key_id);
BEGIN
  IF p_plain IS NULL THEN
    RETURN NULL;
  END IF;
  IF v_key IS NULL THEN
    RAISE EXCEPTION 'no encryption key loaded for key id %', p_key_id USING ERRCODE = 'PR004';
  END IF;
  RETURN public.pgp_sym_encrypt(p_plain, v_key, 'cipher-algo=aes256, s2k-mode=1');
END
$$;
ALTER FUNCTION reflect._encrypt(p_plain text, p_key_id text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._encrypted_columns() RETURNS TABLE(table_name name, column_names name[])
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT c.relname, array_agg(a.attname ORDER BY a.attnum)
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid AND c.relkind = 'r'
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'reflect'
  WHERE a.atttypid = 'bytea'::regtype AND a.attname LIKE '%\_enc' AND a.attnum > 0 AND NOT a.attisdropped
    AND EXISTS (SELECT FROM pg_attribute k WHERE k.attrelid = c.oid AND k.attname = 'key_id' AND NOT k.attisdropped)
  GROUP BY c.relname
  ORDER BY c.relname
$$;
ALTER FUNCTION reflect._encrypted_columns() OWNER TO reflect_owner;
CREATE FUNCTION reflect._enqueue_job(p_kind text, p_payload jsonb DEFAULT '{}'::jsonb, p_request_id bigint DEFAULT NULL::bigint, p_model_version_id integer DEFAULT NULL::integer, p_priority smallint DEFAULT 0, p_max_attempts integer DEFAULT 2) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_id bigint;
BEGIN
  INSERT INTO reflect.jobs (kind, payload, request_id, model_version_id, priority, max_attempts)
  VALUES (p_kind, coalesce(p_payload, '{}'::jsonb), p_request_id, p_model_version_id, coalesce(p_priority, 0),
          coalesce(p_max_attempts, 2))
  ON CONFLICT (request_id, kind) WHERE request_id IS NOT NULL DO NOTHING
  RETURNING id INTO v_id;
  IF v_id IS NOT NULL THEN
    PERFORM pg_notify(reflect._job_channel(p_kind), v_id::text);
  END IF;
  RETURN v_id;
END
$$;
ALTER FUNCTION reflect._enqueue_job(p_kind text, p_payload jsonb, p_request_id bigint, p_model_version_id integer, p_priority smallint, p_max_attempts integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect._fail_undecryptable(p_request_id bigint, p_lease_token uuid, p_key_id text) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests := reflect._take_lease(p_request_id, p_lease_token);
  v_error text := format('cannot decrypt this request with the key registered for key id %s (wrong key or '
                         'corrupt data when it was stored); submit it again', p_key_id);
BEGIN
  UPDATE reflect.requests
  SET state = 'failed', lease_token = NULL, lease_expires_at = NULL, finished_at = clock_timestamp(),
      last_error = v_error
  WHERE id = r.id;
  INSERT INTO reflect.request_events (request_id, event, attempt, worker_id, detail)
  VALUES (r.id, 'undecryptable', r.attempts, r.worker_id, v_error);
  PERFORM pg_notify('request_done', r.id::text);
END
$$;
ALTER FUNCTION reflect._fail_undecryptable(p_request_id bigint, p_lease_token uuid, p_key_id text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._feature_values(p_logprob_mean double precision, p_logprob_min double precision, p_completion_tokens integer, p_signals jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT jsonb_build_object(
    'logprob_mean', greatest(coalesce(p_logprob_mean, -10), -10),
    'logprob_min', greatest(coalesce(p_logprob_min, -20), -20),
    'p_true', (p_signals ->> 'p_true')::double precision,
    'rule_failed',
      coalesce((SELECT max(v::double precision) FROM jsonb_each_text(p_signals) e(k, v) WHERE k LIKE 'rule\_%'), 0),
    'log_tokens', ln(1 + p_completion_tokens))
  || (SELECT coalesce(jsonb_object_agg(k, (p_signals ->> k)::double precision), '{}'::jsonb)
      FROM unnest(reflect.optional_features_v1()) AS k)
$$;
ALTER FUNCTION reflect._feature_values(p_logprob_mean double precision, p_logprob_min double precision, p_completion_tokens integer, p_signals jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._feature_values_of(p_request_id bigint) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT reflect._feature_values(a.logprob_mean, a.logprob_min, a.completion_tokens, reflect._signals_of(a.request_id))
  FROM reflect.answers a WHERE a.request_id = p_request_id
$$;
ALTER FUNCTION reflect._feature_values_of(p_request_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._feature_vector(p_request_id bigint) RETURNS double precision[]
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT reflect._vector(reflect._feature_values_of(p_request_id), reflect.calibration_features_v2())
$$;
ALTER FUNCTION reflect._feature_vector(p_request_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._features(p_logprob_mean double precision, p_logprob_min double precision, p_completion_tokens integer, p_signals jsonb) RETURNS double precision[]
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT reflect._vector(reflect._feature_values(p_logprob_mean, p_logprob_min, p_completion_tokens, p_signals),
                         reflect.calibration_features_v2())
$$;
ALTER FUNCTION reflect._features(p_logprob_mean double precision, p_logprob_min double precision, p_completion_tokens integer, p_signals jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._finetune_hyperparameters() RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT jsonb_build_object(
    'lora_rank', reflect._setting_int('finetune_lora_rank'),
    'lora_alpha', reflect._setting_float('finetune_lora_alpha'),
    'target_modules', reflect._setting_text('finetune_target_modules'),
    'learning_rate', reflect._setting_float('finetune_learning_rate'),
    'epochs', reflect._setting_float('finetune_epochs'),
    'batch_size', reflect._setting_int('finetune_batch_size'),
    'max_seq_len', reflect._setting_int('finetune_max_seq_len'),
    'seed', reflect._setting_int('finetune_seed'),
    'checkpoint_every_s', reflect._setting_float('finetune_checkpoint_every_s'),
    'replay_ratio', reflect._setting_float('finetune_replay_ratio'))
$$;
ALTER FUNCTION reflect._finetune_hyperparameters() OWNER TO reflect_owner;
CREATE TABLE reflect.jobs (
    id bigint NOT NULL,
    kind text NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    request_id bigint,
    model_version_id integer,
    state reflect.request_state DEFAULT 'queued'::reflect.request_state NOT NULL,
    priority smallint DEFAULT 0 NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 2 NOT NULL,
    run_after timestamp with time zone DEFAULT now() NOT NULL,
    lease_token uuid,
    lease_expires_at timestamp with time zone,
    worker_id text,
    checkpoint jsonb,
    result jsonb,
    last_error text,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    CONSTRAINT job_attempts_within_max CHECK ((attempts <= max_attempts)),
    CONSTRAINT job_failed_has_reason CHECK (((state <> 'failed'::reflect.request_state) OR (last_error IS NOT NULL))),
    CONSTRAINT job_finished_iff_final CHECK (((state = ANY (ARRAY['succeeded'::reflect.request_state, 'failed'::reflect.request_state])) = (finished_at IS NOT NULL))),
    CONSTRAINT job_kind_format CHECK ((kind ~ '^[a-z][a-z0-9_]{0,40}$'::text)),
    CONSTRAINT job_running_iff_leased CHECK (((state = 'running'::reflect.request_state) = ((lease_token IS NOT NULL) AND (lease_expires_at IS NOT NULL)))),
    CONSTRAINT jobs_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT jobs_max_attempts_check CHECK (((max_attempts >= 1) AND (max_attempts <= 25))),
    CONSTRAINT jobs_payload_check CHECK ((jsonb_typeof(payload) = 'object'::text))
);
ALTER TABLE reflect.jobs OWNER TO reflect_owner;
CREATE FUNCTION reflect._finish_finetune(j reflect.jobs, p_result jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
  p reflect.model_versions;
  b reflect.model_versions;
  v_id integer;
  v_gate bigint;
  v_name text;
BEGIN
  SELECT * INTO p FROM reflect.model_versions WHERE id = j.model_version_id;
  b := reflect._root_version(p.id);
  IF p_result ->> 'base_sha256' IS DISTINCT FROM b.sha256 THEN
    RAISE EXCEPTION 'the adapter was trained on a GGUF with sha256 %, not on % (%)',
      coalesce(p_result ->> 'base_sha256', 'NULL'), b.name, b.sha256 USING ERRCODE = 'PR001';
  END IF;
  IF coalesce(p_result ->> 'adapter_sha256', '') !~ '^[0-9a-f]{64}$' OR coalesce(p_result ->> 'adapter_path', '') = '' THEN
    RAISE EXCEPTION 'a fine-tune result needs adapter_path and adapter_sha256' USING ERRCODE = 'PR001';
  END IF;
  v_name := format('%s.ft%s', left(b.name, 80), j.id);
  INSERT INTO reflect.model_versions (name, gguf_path, source, sha256, parent_id, n_ctx, backend, stage,
                                      base_model_version_id, adapter_path, adapter_sha256, training_set_id,
                                      finetune_job_id, hyperparameters, training_metrics)
  VALUES (v_name, b.gguf_path, 'finetune', b.sha256, p.id, p.n_ctx, b.backend, 'candidate', b.id,
          p_result ->> 'adapter_path', p_result ->> 'adapter_sha256', (j.payload ->> 'training_set_id')::integer,
          j.id, p_result -> 'hyperparameters', p_result -> 'metrics')
  RETURNING id INTO v_id;
  v_gate := reflect._enqueue_job('gate', jsonb_build_object('candidate_id', v_id, 'parent_id', p.id,
                                                            'training_set_id', j.payload -> 'training_set_id',
                                                            'poll_s', reflect._setting_float('gate_poll_s')),
                                 NULL, v_id, 0::smallint, 3);
  RETURN jsonb_build_object('candidate_id', v_id, 'candidate', v_name, 'gate_job_id', v_gate);
END
$_$;
ALTER FUNCTION reflect._finish_finetune(j reflect.jobs, p_result jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._finish_followup(j reflect.jobs, p_result jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_key text;
  c jsonb;
  v_critique text := p_result ->> 'critique';
  v_verdict text;
  v_signals jsonb := coalesce(p_result -> 'signals', '{}'::jsonb);
BEGIN
  IF j.kind = 'critique' THEN
    BEGIN
      c := v_critique::jsonb;
    EXCEPTION WHEN others THEN
      RAISE EXCEPTION 'critique is not valid JSON' USING ERRCODE = 'PR001';
    END;
    v_verdict := c ->> 'verdict';
    IF c IS NULL OR jsonb_typeof(c) <> 'object' OR v_verdict IS NULL
       OR v_verdict NOT IN ('correct', 'partially_correct', 'incorrect', 'unsure')
       OR jsonb_typeof(c -> 'issues') IS DISTINCT FROM 'array' THEN
      RAISE EXCEPTION 'critique must have a verdict (correct, partially_correct, incorrect, unsure) and issues'
        USING ERRCODE = 'PR001';
    END IF;
    SELECT key_id INTO v_key FROM reflect.requests WHERE id = j.request_id;
    INSERT INTO reflect.critiques (request_id, key_id, critique_enc, verdict, n_issues, max_severity)
    VALUES (j.request_id, v_key, reflect._encrypt(v_critique, v_key), v_verdict, jsonb_array_length(c -> 'issues'),
            (SELECT s FROM jsonb_array_elements(c -> 'issues') i, LATERAL (SELECT i ->> 'severity' AS s) x
             WHERE s IN ('low', 'medium', 'high')
             ORDER BY array_position(ARRAY['high', 'medium', 'low'], s) LIMIT 1))
    ON CONFLICT (request_id) DO UPDATE
      SET critique_enc = excluded.critique_enc, verdict = excluded.verdict, n_issues = excluded.n_issues,
          max_severity = excluded.max_severity, created_at = now(), rating = NULL, rated_by = NULL;
    v_signals := v_signals || jsonb_build_object('critique_verdict',
      CASE v_verdict WHEN 'correct' THEN 1.0 WHEN 'partially_correct' THEN 0.5 WHEN 'unsure' THEN 0.5 ELSE 0.0 END);
  END IF;
  PERFORM reflect._store_signals(j.request_id, v_signals);
  RETURN jsonb_build_object('confidence', reflect._apply_confidence(j.request_id));
END
$$;
ALTER FUNCTION reflect._finish_followup(j reflect.jobs, p_result jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._finish_gate(j reflect.jobs, p_result jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_candidate integer := (j.payload ->> 'candidate_id')::integer;
  v_parent integer := (j.payload ->> 'parent_id')::integer;
  v_z double precision := reflect._setting_float('gate_z');
  v_rule jsonb := jsonb_build_object('z', v_z, 'heldout_margin', reflect._setting_float('gate_heldout_margin'),
                                     'retention_margin', reflect._setting_float('gate_retention_margin'),
                                     'calibration_margin', reflect._setting_float('gate_calibration_margin'),
                                     'rephrase_min', reflect._setting_int('gate_rephrase_min'));
  a jsonb; r jsonb; b jsonb; c jsonb; cal jsonb;
  v_reasons text[] := '{}';
  v_decision text;
  v_missing integer;
BEGIN
  IF jsonb_typeof(p_result -> 'scores') IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'a gate result needs "scores", an array' USING ERRCODE = 'PR001';
  END IF;
  UPDATE reflect.gate_items g
  SET candidate_correct = (s ->> 'candidate_correct')::boolean, parent_correct = (s ->> 'parent_correct')::boolean
  FROM jsonb_array_elements(p_result -> 'scores') s
  WHERE g.job_id = j.id AND g.candidate_request_id = (s ->> 'candidate_request_id')::bigint;
  SELECT count(*) INTO v_missing FROM reflect.gate_items
  WHERE job_id = j.id AND (candidate_correct IS NULL OR parent_correct IS NULL);
  a := reflect._paired_parts(j.id, ARRAY['a', 'r'], v_z);
  r := reflect._paired(j.id, 'r', v_z);
  b := reflect._paired(j.id, 'b', v_z);
  c := reflect._paired(j.id, 'c', v_z);
  cal := reflect._gate_calibration(j.id);
  IF (a ->> 'n')::int = 0 THEN
    v_reasons := v_reasons || 'no corrected prompts were scored'::text;
  ELSIF (a ->> 'lower_bound')::float8 <= 0 THEN
    v_reasons := v_reasons || format('corrected prompts and their rewordings: gain %s, lower bound %s is not above 0',
                                     round((a ->> 'difference')::numeric, 3), round((a ->> 'lower_bound')::numeric, 3));
  END IF;
  IF (r ->> 'n')::int >= (v_rule ->> 'rephrase_min')::int AND (r ->> 'lower_bound')::float8 <= 0 THEN
    v_reasons := v_reasons || format('rewordings of the corrected prompts: gain %s on %s, lower bound %s is not '
                                     'above 0 (learned the wording, not the answer)',
                                     round((r ->> 'difference')::numeric, 3), r ->> 'n',
                                     round((r ->> 'lower_bound')::numeric, 3));
  END IF;
  IF (b ->> 'n')::int > 0 AND (b ->> 'difference')::float8 < -(v_rule ->> 'heldout_margin')::float8 THEN
    v_reasons := v_reasons || format('held-out accuracy dropped by %s (margin %s)',
                                     round(-(b ->> 'difference')::numeric, 3), v_rule ->> 'heldout_margin');
  END IF;
  IF (c ->> 'n')::int = 0 THEN
    v_reasons := v_reasons || 'no retention items were scored (load them: pgreflect improve retention)'::text;
  ELSIF -(c ->> 'difference')::float8 > (v_rule ->> 'retention_margin')::float8 THEN
    v_reasons := v_reasons || format('retention accuracy dropped by %s (margin %s; interval %s to %s)',
                                     round(-(c ->> 'difference')::numeric, 3), v_rule ->> 'retention_margin',
                                     round(-(c ->> 'upper_bound')::numeric, 3), round(-(c ->> 'lower_bound')::numeric, 3));
  END IF;
  IF (cal #>> '{skill,upper_bound}')::float8 < -(v_rule ->> 'calibration_margin')::float8 THEN
    v_reasons := v_reasons || format('confidence measurably less informative: Brier skill %s -> %s (difference %s, '
                                     'upper bound %s below -%s)',
                                     round((cal #>> '{skill,parent}')::numeric, 3),
                                     round((cal #>> '{skill,candidate}')::numeric, 3),
                                     round((cal #>> '{skill,difference}')::numeric, 3),
                                     round((cal #>> '{skill,upper_bound}')::numeric, 3), v_rule ->> 'calibration_margin');
  END IF;
  -- Passing the gate starts a canary (a share of live traffic decides) unless canary_share is 0.
  v_decision := CASE WHEN cardinality(v_reasons) > 0 THEN 'reject'
                     WHEN reflect._setting_float('canary_share') > 0 THEN 'canary' ELSE 'promote' END;
  PERFORM reflect._fit_gate_calibrator(j.id, v_candidate, cal -> 'candidate');  -- a person may still promote it
  PERFORM reflect._decide(v_candidate, v_decision,
    CASE WHEN v_decision = 'reject' THEN array_to_string(v_reasons, '; ')
         ELSE 'better on the corrected prompts, no worse on held-out, retention and calibration' END,
    jsonb_build_object('learned', a, 'corrected', reflect._paired(j.id, 'a', v_z),
                       'rephrased', r || jsonb_build_object('rule_applied',
                                                            (r ->> 'n')::int >= (v_rule ->> 'rephrase_min')::int),
                       'heldout', b, 'retention', c,
                       'calibration', cal, 'unscored', v_missing),
    v_rule, j.id);
  RETURN jsonb_build_object('decision', v_decision, 'candidate_id', v_candidate, 'parent_id', v_parent);
END
$$;
ALTER FUNCTION reflect._finish_gate(j reflect.jobs, p_result jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._finish_job(j reflect.jobs, p_result jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  IF j.kind IN ('critique', 'agreement') THEN
    RETURN reflect._finish_followup(j, p_result);
  ELSIF j.kind = 'finetune' THEN
    RETURN reflect._finish_finetune(j, p_result);  -- 770_improve.sql
  ELSIF j.kind = 'gate' THEN
    RETURN reflect._finish_gate(j, p_result);
  END IF;
  RAISE EXCEPTION 'no job kind "%"', j.kind USING ERRCODE = 'PR001';
END
$$;
ALTER FUNCTION reflect._finish_job(j reflect.jobs, p_result jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._fit_gate_calibrator(p_job_id bigint, p_version integer, p_metrics jsonb) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  x double precision[]; y boolean[];
  f record;
  v_id integer;
BEGIN
  IF EXISTS (SELECT FROM reflect.calibrators WHERE model_version_id = p_version AND is_active) THEN
    RETURN NULL;
  END IF;
  SELECT array_agg(reflect._feature_vector(g.candidate_request_id) ORDER BY g.candidate_request_id),
         array_agg(g.candidate_correct ORDER BY g.candidate_request_id)
  INTO x, y
  FROM reflect.gate_items g
  WHERE g.job_id = p_job_id AND g.part IN ('b', 'c') AND g.candidate_correct IS NOT NULL
    AND EXISTS (SELECT FROM reflect.answers a WHERE a.request_id = g.candidate_request_id);
  IF (SELECT count(*) FILTER (WHERE v) < reflect._setting_int('calibration_min_per_class')
             OR count(*) FILTER (WHERE NOT v) < reflect._setting_int('calibration_min_per_class') FROM unnest(y) v) THEN
    RETURN NULL;
  END IF;
  f := reflect._fit_logistic(x, y, reflect._setting_float('calibration_l2'));
  INSERT INTO reflect.calibrators (model_version_id, method, features, feature_means, feature_stds, weights, n_train,
                                   n_heldout, heldout_metrics, labels_seen, is_active)
  VALUES (p_version, 'logistic_l2', reflect.calibration_features_v2(), f.means, f.stds, f.weights, cardinality(y),
          cardinality(y),
          jsonb_build_object('source', 'gate', 'gate_job_id', p_job_id, 'iterations', f.iterations,
                             'heldout', p_metrics - 'served'),  -- cross-fitted: each answer measured by a fit without it
          (SELECT count(*) FROM reflect.labels l JOIN reflect.answers a USING (request_id)
           WHERE a.model_version_id = p_version),
          true)
  RETURNING id INTO v_id;
  RETURN v_id;
END
$$;
ALTER FUNCTION reflect._fit_gate_calibrator(p_job_id bigint, p_version integer, p_metrics jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._fit_logistic(x double precision[], y boolean[], p_l2 double precision, OUT means double precision[], OUT stds double precision[], OUT weights double precision[], OUT iterations integer) RETURNS record
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  n integer := coalesce(cardinality(y), 0);
  d integer := coalesce(array_length(x, 2), 0);
BEGIN
  SELECT array_agg(coalesce(mean, 0) ORDER BY j), array_agg(sd ORDER BY j) INTO means, stds
  FROM (SELECT j, avg(x[i][j]) AS mean, coalesce(nullif(stddev_pop(x[i][j]), 0), 1) AS sd
        FROM generate_series(1, d) j, generate_series(1, n) i GROUP BY j) st;
  means := coalesce(means, '{}'); stds := coalesce(stds, '{}');
  SELECT f.weights, f.iterations INTO weights, iterations
  FROM reflect._fit_logistic_around(x, y, means, stds, array_fill(0::double precision, ARRAY[d + 1]), p_l2, 0) f;
END
$$;
ALTER FUNCTION reflect._fit_logistic(x double precision[], y boolean[], p_l2 double precision, OUT means double precision[], OUT stds double precision[], OUT weights double precision[], OUT iterations integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect._fit_logistic_around(x double precision[], y boolean[], p_means double precision[], p_stds double precision[], p_anchor double precision[], p_penalty double precision[], OUT weights double precision[], OUT iterations integer) RETURNS record
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  n integer := coalesce(cardinality(y), 0);
  d integer := cardinality(p_means);
  zx double precision[] := '{}';  -- the standardised rows, a leading 1 for the intercept
  pen double precision[];
  g double precision[];
  h double precision[];
  xi double precision[];
  delta double precision[];
  trial double precision[];
  z double precision;
  p double precision;
  wt double precision;
  loss double precision;
  trial_loss double precision;
  step double precision;
BEGIN
  IF cardinality(p_anchor) <> d + 1 OR cardinality(p_stds) <> d OR (n > 0 AND array_length(x, 2) <> d)
     OR cardinality(p_penalty) <> d + 1 THEN
    RAISE EXCEPTION 'logistic fit: % features, % deviations, % anchor weights, % penalties, % columns', d,
      cardinality(p_stds), cardinality(p_anchor), cardinality(p_penalty), array_length(x, 2) USING ERRCODE = 'PR001';
  END IF;
  FOR i IN 1..n LOOP
    xi := ARRAY[1::double precision];
    FOR j IN 1..d LOOP
      xi := xi || (coalesce(x[i][j], p_means[j]) - p_means[j]) / p_stds[j];
    END LOOP;
    zx := zx || ARRAY[xi];
  END LOOP;
  pen := p_penalty;
  weights := p_anchor;
  loss := reflect._penalised_log_loss(zx, y, weights, p_anchor, pen);
  iterations := 0;
  LOOP
    iterations := iterations + 1;
    g := array_fill(0::double precision, ARRAY[d + 1]);
    h := array_fill(0::double precision, ARRAY[d + 1, d + 1]);
    FOR i IN 1..n LOOP
      z := 0;
      FOR j IN 1..d + 1 LOOP
        z := z + weights[j] * zx[i][j];
      END LOOP;
      p := reflect._sigmoid(z);
      wt := greatest(p * (1 - p), 1e-9);
      FOR j IN 1..d + 1 LOOP
        g[j] := g[j] + (y[i]::int - p) * zx[i][j];
        FOR k IN j..d + 1 LOOP
          h[j][k] := h[j][k] + wt * zx[i][j] * zx[i][k];
        END LOOP;
      END LOOP;
    END LOOP;
    FOR j IN 1..d + 1 LOOP
      FOR k IN 1..j - 1 LOOP
        h[j][k] := h[k][j];
      END LOOP;
      g[j] := g[j] - pen[j] * (weights[j] - p_anchor[j]);
      h[j][j] := h[j][j] + pen[j];
    END LOOP;
    delta := reflect._solve(h, g);
    step := 1;
    LOOP
      trial := ARRAY(SELECT weights[j] + step * delta[j] FROM generate_series(1, d + 1) j);
      trial_loss := reflect._penalised_log_loss(zx, y, trial, p_anchor, pen);
      EXIT WHEN trial_loss <= loss + 1e-12 OR step < 1e-6;
      step := step / 2;
    END LOOP;
    weights := trial;
    loss := trial_loss;
    EXIT WHEN iterations >= 50 OR step * (SELECT max(abs(v)) FROM unnest(delta) v) < 1e-8;
  END LOOP;
END
$$;
ALTER FUNCTION reflect._fit_logistic_around(x double precision[], y boolean[], p_means double precision[], p_stds double precision[], p_anchor double precision[], p_penalty double precision[], OUT weights double precision[], OUT iterations integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect._fit_logistic_around(x double precision[], y boolean[], p_means double precision[], p_stds double precision[], p_anchor double precision[], p_l2 double precision, p_l2_intercept double precision, OUT weights double precision[], OUT iterations integer) RETURNS record
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT f.weights, f.iterations
  FROM reflect._fit_logistic_around(x, y, p_means, p_stds, p_anchor,
                                    p_l2_intercept || array_fill(p_l2, ARRAY[cardinality(p_means)])) f
$$;
ALTER FUNCTION reflect._fit_logistic_around(x double precision[], y boolean[], p_means double precision[], p_stds double precision[], p_anchor double precision[], p_l2 double precision, p_l2_intercept double precision, OUT weights double precision[], OUT iterations integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect._fit_logistic_around_kinds(x double precision[], y boolean[], p_names text[], p_means double precision[], p_stds double precision[], p_anchor double precision[], p_l2 double precision, p_l2_kind double precision, OUT weights double precision[], OUT iterations integer) RETURNS record
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  n integer := coalesce(cardinality(y), 0);
  d integer := cardinality(p_means);
  pos integer[] := ARRAY[array_position(p_names, 'kind_choice'), array_position(p_names, 'kind_number'),
                         array_position(p_names, 'kind_long')];
  xe double precision[] := '{}';
  raw double precision[];
  w double precision[];
  lvl double precision[];
BEGIN
  IF array_position(pos, NULL) IS NOT NULL OR cardinality(p_names) <> d THEN
    SELECT f.weights, f.iterations INTO weights, iterations
    FROM reflect._fit_logistic_around(x, y, p_means, p_stds, p_anchor, p_l2, p_l2_kind) f;
    RETURN;
  END IF;
  FOR i IN 1..n LOOP
    -- an answer without a recorded kind counts as the mix the calibrator's training mean says
    raw := ARRAY(SELECT coalesce(x[i][pos[k]], p_means[pos[k]]) FROM generate_series(1, 3) k);
    xe := xe || ARRAY[ARRAY(SELECT x[i][j] FROM generate_series(1, d) j) || raw || (1 - raw[1] - raw[2] - raw[3])];
  END LOOP;
  SELECT f.weights, f.iterations INTO w, iterations
  FROM reflect._fit_logistic_around(CASE WHEN n = 0 THEN NULL ELSE xe END, y,
                                    p_means || array_fill(0::double precision, ARRAY[4]),
                                    p_stds || array_fill(1::double precision, ARRAY[4]),
                                    p_anchor || array_fill(0::double precision, ARRAY[4]),
                                    ARRAY[p_l2] || array_fill(p_l2, ARRAY[d]) || array_fill(p_l2_kind, ARRAY[4])) f;
  -- levels of choice, number and long relative to short; short's level goes to the intercept
  lvl := ARRAY[w[d + 2] - w[d + 5], w[d + 3] - w[d + 5], w[d + 4] - w[d + 5]];
  weights := w[1:d + 1];
  weights[1] := weights[1] + w[d + 5]
                + lvl[1] * p_means[pos[1]] + lvl[2] * p_means[pos[2]] + lvl[3] * p_means[pos[3]];
  FOR k IN 1..3 LOOP
    weights[pos[k] + 1] := weights[pos[k] + 1] + lvl[k] * p_stds[pos[k]];
  END LOOP;
END
$$;
ALTER FUNCTION reflect._fit_logistic_around_kinds(x double precision[], y boolean[], p_names text[], p_means double precision[], p_stds double precision[], p_anchor double precision[], p_l2 double precision, p_l2_kind double precision, OUT weights double precision[], OUT iterations integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect._gate_calibration(p_job_id bigint) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  d record;
  c record;
  p record;
  v_uc double precision;
  v_up double precision;
  v_skill jsonb;
  p_z double precision := reflect._setting_float('gate_z');
BEGIN
  WITH items AS (
    SELECT g.candidate_request_id AS c_id, g.candidate_correct AS c_y, g.parent_request_id AS p_id,
           g.parent_correct AS p_y, abs(hashtext(g.candidate_request_id::text)) % 2 AS fold
    FROM reflect.gate_items g
    WHERE g.job_id = p_job_id AND g.part IN ('b', 'c')
      AND g.candidate_correct IS NOT NULL AND g.parent_correct IS NOT NULL
      AND EXISTS (SELECT FROM reflect.answers a WHERE a.request_id = g.candidate_request_id)
      AND EXISTS (SELECT FROM reflect.answers a WHERE a.request_id = g.parent_request_id)
  )
  SELECT coalesce(array_agg(c_id ORDER BY c_id), '{}') AS c_ids, coalesce(array_agg(c_y ORDER BY c_id), '{}') AS c_ys,
         coalesce(array_agg(p_id ORDER BY c_id), '{}') AS p_ids, coalesce(array_agg(p_y ORDER BY c_id), '{}') AS p_ys,
         coalesce(array_agg(fold ORDER BY c_id), '{}') AS folds
  INTO d FROM items;
  -- the same folds for both versions, so the two results are in the same item order (paired)
  c := reflect._cross_fitted(d.c_ids, d.c_ys, d.folds);
  p := reflect._cross_fitted(d.p_ids, d.p_ys, d.folds);
  v_uc := (SELECT avg(y::int) * (1 - avg(y::int)) FROM unnest(c.correct) y);
  v_up := (SELECT avg(y::int) * (1 - avg(y::int)) FROM unnest(p.correct) y);
  IF v_uc > 0 AND v_up > 0 THEN
    SELECT jsonb_build_object('candidate', 1 - avg(sc) / v_uc, 'parent', 1 - avg(sp) / v_up,
                              'difference', avg(sp / v_up - sc / v_uc),
                              'se', coalesce(stddev_samp(sp / v_up - sc / v_uc), 0) / sqrt(count(*)),
                              'lower_bound', avg(sp / v_up - sc / v_uc)
                                             - p_z * coalesce(stddev_samp(sp / v_up - sc / v_uc), 0) / sqrt(count(*)),
                              'upper_bound', avg(sp / v_up - sc / v_uc)
                                             + p_z * coalesce(stddev_samp(sp / v_up - sc / v_uc), 0) / sqrt(count(*)))
    INTO v_skill
    FROM (SELECT (cc - yc::int) ^ 2 AS sc, (cp - yp::int) ^ 2 AS sp
          FROM unnest(c.confidence, c.correct, p.confidence, p.correct) AS u(cc, yc, cp, yp)) x;
  END IF;
  RETURN jsonb_build_object(
    'candidate', reflect._calibration_metrics(c.confidence, c.correct) || jsonb_build_object('served', (
      SELECT reflect._calibration_metrics(array_agg(a.confidence ORDER BY u.i), array_agg(u.y ORDER BY u.i))
      FROM unnest(d.c_ids, d.c_ys) WITH ORDINALITY AS u(r, y, i) JOIN reflect.answers a ON a.request_id = u.r)),
    'parent', reflect._calibration_metrics(p.confidence, p.correct) || jsonb_build_object('served', (
      SELECT reflect._calibration_metrics(array_agg(a.confidence ORDER BY u.i), array_agg(u.y ORDER BY u.i))
      FROM unnest(d.p_ids, d.p_ys) WITH ORDINALITY AS u(r, y, i) JOIN reflect.answers a ON a.request_id = u.r)),
    'skill', v_skill);
END
$$;
ALTER FUNCTION reflect._gate_calibration(p_job_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._heldout(p_request_id bigint, p_share double precision) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT (('x' || substr(md5('training-split:' || p_request_id), 1, 8))::bit(32)::bigint / 4294967296.0) < p_share
$$;
ALTER FUNCTION reflect._heldout(p_request_id bigint, p_share double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect._is_blank(p_text text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
  SELECT p_text ~ '^[[:space:][:cntrl:]\u00a0\u00ad\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u3000\ufeff]*$'
$_$;
ALTER FUNCTION reflect._is_blank(p_text text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._is_low_confidence(p_request_id bigint, p_params jsonb) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT coalesce(a.confidence < coalesce((p_params ->> 'confidence_threshold')::double precision,
                                          reflect._setting_float('confidence_threshold_default')), false)
         OR EXISTS (SELECT FROM reflect.answer_signals s
                    WHERE s.request_id = p_request_id AND s.name LIKE 'rule\_%' AND s.value > 0)
  FROM reflect.answers a WHERE a.request_id = p_request_id
$$;
ALTER FUNCTION reflect._is_low_confidence(p_request_id bigint, p_params jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._job_channel(p_kind text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT CASE WHEN p_kind IN ('finetune') THEN 'needs_finetune' ELSE 'needs_inference' END
$$;
ALTER FUNCTION reflect._job_channel(p_kind text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._key(p_key_id text) RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
  v_key text := nullif(current_setting('reflect.key_' || p_key_id, true), '');
BEGIN
  IF v_key IS NULL THEN
    RETURN NULL;
  END IF;
  IF NOT EXISTS (SELECT FROM reflect.key_verifiers
                 WHERE key_id = p_key_id AND verifier = reflect._key_verifier(p_key_id, v_key)) THEN
    RAISE EXCEPTION 'the key set for key id % is not the one registered for it', p_key_id
      USING ERRCODE = 'PR004', HINT = 'load keys with reflect.use_key_v1($1, $2), never with SET';
  END IF;
  RETURN v_key;
END
$_$;
ALTER FUNCTION reflect._key(p_key_id text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._key_verifier(p_key_id text, p_key text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT encode(public.hmac(convert_to('pgreflect key verifier v1:' || p_key_id, 'UTF8'), convert_to(p_key, 'UTF8'),
                            'sha256'), 'hex')
$$;
ALTER FUNCTION reflect._key_verifier(p_key_id text, p_key text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._knob_default(p_knob text) RETURNS double precision
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT CASE p_knob WHEN 'confidence_threshold' THEN reflect._setting_float('confidence_threshold_default')
                     WHEN 'memory_max_distance' THEN reflect._setting_float('memory_max_distance')
                     WHEN 'memory_k' THEN reflect._setting_float('memory_k_default') END
$$;
ALTER FUNCTION reflect._knob_default(p_knob text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._labels_by_kind(p_values jsonb[]) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT coalesce(jsonb_object_agg(kind, n), '{}')
  FROM (SELECT CASE WHEN (v ->> 'kind_choice')::float8 = 1 THEN 'choice'
                    WHEN (v ->> 'kind_number')::float8 = 1 THEN 'number'
                    WHEN (v ->> 'kind_long')::float8 = 1 THEN 'long'
                    WHEN v ->> 'kind_choice' IS NULL AND v ->> 'kind_number' IS NULL AND v ->> 'kind_long' IS NULL
                      THEN 'unknown'
                    ELSE 'short' END AS kind, count(*) AS n
        FROM unnest(p_values) v GROUP BY 1) k
$$;
ALTER FUNCTION reflect._labels_by_kind(p_values jsonb[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect._loaded_key_ids() RETURNS text[]
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT coalesce(array_agg(k ORDER BY k), '{}')
  FROM unnest(string_to_array(current_setting('reflect.loaded_key_ids', true), ',')) k
  WHERE k <> '' AND reflect._key(k) IS NOT NULL
$$;
ALTER FUNCTION reflect._loaded_key_ids() OWNER TO reflect_owner;
CREATE FUNCTION reflect._logistic(x double precision[], p_means double precision[], p_stds double precision[], p_weights double precision[]) RETURNS double precision
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT reflect._sigmoid(p_weights[1] + coalesce(sum(p_weights[j + 1] * (coalesce(x[j], p_means[j]) - p_means[j]) / p_stds[j]), 0))
  FROM generate_series(1, cardinality(p_means)) j
$$;
ALTER FUNCTION reflect._logistic(x double precision[], p_means double precision[], p_stds double precision[], p_weights double precision[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect._logistic_rows(x double precision[], p_means double precision[], p_stds double precision[], p_weights double precision[]) RETURNS double precision[]
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT array_agg(reflect._sigmoid(p_weights[1] + coalesce(
           (SELECT sum(p_weights[j + 1] * (coalesce(x[i][j], p_means[j]) - p_means[j]) / p_stds[j])
            FROM generate_series(1, cardinality(p_means)) j), 0)) ORDER BY i)
  FROM generate_series(1, coalesce(array_length(x, 1), 0)) i
$$;
ALTER FUNCTION reflect._logistic_rows(x double precision[], p_means double precision[], p_stds double precision[], p_weights double precision[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect._low_confidence_action(p_params jsonb, p_confidence double precision) RETURNS text
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT CASE WHEN p_confidence < coalesce((p_params ->> 'confidence_threshold')::double precision,
                                          reflect._setting_float('confidence_threshold_default'))
              THEN coalesce(p_params ->> 'low_confidence', reflect._setting_text('low_confidence_action_default'))
              ELSE 'answer' END
$$;
ALTER FUNCTION reflect._low_confidence_action(p_params jsonb, p_confidence double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect._matrix(p_values jsonb[], p_names text[]) RETURNS double precision[]
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT coalesce(array_agg(reflect._vector(v, p_names) ORDER BY i), '{}')
  FROM unnest(p_values) WITH ORDINALITY AS t(v, i)
$$;
ALTER FUNCTION reflect._matrix(p_values jsonb[], p_names text[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect._memory_max_distance(p_params jsonb) RETURNS double precision
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT coalesce((p_params ->> 'memory_max_distance')::double precision, reflect._setting_float('memory_max_distance'))
$$;
ALTER FUNCTION reflect._memory_max_distance(p_params jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._memory_owners(p_reader name) RETURNS name[]
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT array_append(coalesce(array_agg(s.owner), '{}'), p_reader)
  FROM reflect.memory_shares s WHERE s.reader = p_reader
$$;
ALTER FUNCTION reflect._memory_owners(p_reader name) OWNER TO reflect_owner;
CREATE FUNCTION reflect._normalize_params(p jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_key text;
  v_out jsonb;
  v_limit integer := reflect._setting_int('max_tokens_limit');
  v_stop jsonb;
BEGIN
  p := coalesce(p, '{}'::jsonb);
  IF jsonb_typeof(p) <> 'object' THEN
    RAISE EXCEPTION 'params must be a JSON object' USING ERRCODE = 'PR001';
  END IF;
  SELECT k INTO v_key FROM jsonb_object_keys(p) k
  WHERE k NOT IN ('max_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'stop', 'memory', 'memory_k',
                  'memory_max_distance', 'low_confidence', 'confidence_threshold', 'logprobs', 'top_logprobs',
                  'stream')
  LIMIT 1;
  IF v_key IS NOT NULL THEN
    RAISE EXCEPTION 'unknown generation parameter "%"', left(v_key, 40) USING ERRCODE = 'PR001',
      HINT = 'allowed: max_tokens, temperature, top_p, top_k, seed, stop, memory, memory_k, memory_max_distance, '
             'low_confidence, confidence_threshold, logprobs, top_logprobs, stream';
  END IF;
  IF p ? 'memory' AND jsonb_typeof(p -> 'memory') <> 'boolean' THEN
    RAISE EXCEPTION 'memory must be true or false' USING ERRCODE = 'PR001';
  END IF;
  IF p ? 'stream' AND jsonb_typeof(p -> 'stream') <> 'boolean' THEN
    RAISE EXCEPTION 'stream must be true or false' USING ERRCODE = 'PR001';
  END IF;
  IF p ? 'logprobs' AND jsonb_typeof(p -> 'logprobs') <> 'boolean' THEN
    RAISE EXCEPTION 'logprobs must be true or false' USING ERRCODE = 'PR001';
  END IF;
  IF coalesce(p ->> 'top_logprobs', '0') <> '0' AND NOT coalesce((p ->> 'logprobs')::boolean, false) THEN
    RAISE EXCEPTION 'top_logprobs needs logprobs = true' USING ERRCODE = 'PR001';
  END IF;
  IF p ? 'low_confidence' AND coalesce(p ->> 'low_confidence', '') NOT IN ('answer', 'flag', 'abstain', 'reanswer') THEN
    RAISE EXCEPTION 'low_confidence must be answer, flag, abstain or reanswer' USING ERRCODE = 'PR001';
  END IF;
  v_out := jsonb_build_object(
    'max_tokens', reflect._param_number(p, 'max_tokens', 1, v_limit, true,
                                        reflect._setting_int('max_tokens_default')),
    'temperature', reflect._param_number(p, 'temperature', 0, 2, false, 0),
    'top_p', reflect._param_number(p, 'top_p', 0.000001, 1, false, 1),
    'top_k', reflect._param_number(p, 'top_k', 0, 100000, true, 0),
    'seed', reflect._param_number(p, 'seed', 0, 2147483647, true, NULL),
    'memory', coalesce((p -> 'memory')::boolean, true),
    'memory_k', reflect._param_number(p, 'memory_k', 0, 20, true, reflect._setting_int('memory_k_default')),
    'memory_max_distance', reflect._param_number(p, 'memory_max_distance', 0, 2, false,
                                                 reflect._setting_float('memory_max_distance')::numeric),
    'low_confidence', coalesce(p ->> 'low_confidence', reflect._setting_text('low_confidence_action_default')),
    'confidence_threshold', reflect._param_number(p, 'confidence_threshold', 0, 1, false,
                                                  reflect._setting_float('confidence_threshold_default')::numeric),
    -- the answer's tokens and, per token, its top_logprobs most likely alternatives (stored encrypted)
    'logprobs', coalesce((p -> 'logprobs')::boolean, false),
    'top_logprobs', reflect._param_number(p, 'top_logprobs', 0, 20, true, 0),
    -- the text so far is published while it is generated (reflect.partial_answers), when the action shows it
    'stream', coalesce((p -> 'stream')::boolean, false)
  );
  v_stop := coalesce(p -> 'stop', '[]'::jsonb);
  IF jsonb_typeof(v_stop) = 'string' THEN
    v_stop := jsonb_build_array(v_stop);
  END IF;
  IF jsonb_typeof(v_stop) <> 'array' OR jsonb_array_length(v_stop) > 4
     OR EXISTS (SELECT FROM jsonb_array_elements(v_stop) e
                WHERE jsonb_typeof(e) <> 'string' OR length(e #>> '{}') NOT BETWEEN 1 AND 64) THEN
    RAISE EXCEPTION 'stop must be a string or a list of at most 4 strings of 1 to 64 characters'
      USING ERRCODE = 'PR001';
  END IF;
  RETURN v_out || jsonb_build_object('stop', v_stop);
END
$$;
ALTER FUNCTION reflect._normalize_params(p jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._paired(p_job_id bigint, p_part text, p_z double precision) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT reflect._paired_parts(p_job_id, ARRAY[p_part], p_z)
$$;
ALTER FUNCTION reflect._paired(p_job_id bigint, p_part text, p_z double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect._paired_parts(p_job_id bigint, p_parts text[], p_z double precision) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  WITH d AS (
    SELECT candidate_correct::int AS c, parent_correct::int AS p, candidate_correct::int - parent_correct::int AS diff
    FROM reflect.gate_items
    WHERE job_id = p_job_id AND part = ANY (p_parts) AND candidate_correct IS NOT NULL AND parent_correct IS NOT NULL
  ), s AS (
    SELECT count(*) AS n, avg(c) AS acc_c, avg(p) AS acc_p, avg(diff) AS mean_diff,
           coalesce(stddev_samp(diff), 0) / sqrt(greatest(count(*), 1)) AS se
    FROM d
  )
  SELECT jsonb_build_object('n', n, 'candidate_accuracy', acc_c, 'parent_accuracy', acc_p, 'difference', mean_diff,
                            'se', se, 'lower_bound', mean_diff - p_z * se, 'upper_bound', mean_diff + p_z * se)
  FROM s
$$;
ALTER FUNCTION reflect._paired_parts(p_job_id bigint, p_parts text[], p_z double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect._param_number(p jsonb, p_name text, p_min numeric, p_max numeric, p_integer boolean, p_default numeric) RETURNS numeric
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v jsonb := p -> p_name;
  n numeric;
BEGIN
  IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
    RETURN p_default;
  END IF;
  IF jsonb_typeof(v) <> 'number' THEN
    RAISE EXCEPTION '% must be a number', p_name USING ERRCODE = 'PR001';
  END IF;
  n := (v #>> '{}')::numeric;
  IF p_integer AND n <> trunc(n) THEN
    RAISE EXCEPTION '% must be an integer', p_name USING ERRCODE = 'PR001';
  END IF;
  IF n < p_min OR n > p_max THEN
    RAISE EXCEPTION '% must be between % and %', p_name, p_min, p_max USING ERRCODE = 'PR001';
  END IF;
  -- Stored normalised: 8.0 as 8, and a real number as the double the worker will use (1e-400 is 0).
  IF p_integer THEN
    RETURN trunc(n);
  ELSIF abs(n) < 1e-300 THEN
    RETURN 0;
  END IF;
  RETURN n::double precision::numeric;
END
$$;
ALTER FUNCTION reflect._param_number(p jsonb, p_name text, p_min numeric, p_max numeric, p_integer boolean, p_default numeric) OWNER TO reflect_owner;
CREATE FUNCTION reflect._penalised_log_loss(zx double precision[], y boolean[], w double precision[], p_anchor double precision[], pen double precision[]) RETURNS double precision
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT coalesce((SELECT sum(greatest(z, 0) + ln(1 + exp(-abs(z))) - CASE WHEN y[i] THEN z ELSE 0 END)
                   FROM (SELECT i, (SELECT sum(w[j] * zx[i][j]) FROM generate_series(1, cardinality(w)) j) AS z
                         FROM generate_series(1, coalesce(cardinality(y), 0)) i) r), 0)
         + 0.5 * (SELECT sum(pen[j] * (w[j] - p_anchor[j]) ^ 2) FROM generate_series(1, cardinality(w)) j)
$$;
ALTER FUNCTION reflect._penalised_log_loss(zx double precision[], y boolean[], w double precision[], p_anchor double precision[], pen double precision[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect._probe_signal(p_request_id bigint) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'public', 'pg_temp'
    AS $$
  SELECT coalesce((
    SELECT jsonb_build_object('probe', reflect._sigmoid(p.bias - (s.state OPERATOR(public.<#>) p.weights)))
    FROM reflect.answer_states s
    JOIN reflect.state_probes p ON p.model_version_id = s.model_version_id AND p.is_active
    WHERE s.request_id = p_request_id AND public.vector_dims(s.state) = public.vector_dims(p.weights)), '{}')
$$;
ALTER FUNCTION reflect._probe_signal(p_request_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._queue_followups(p_request_id bigint) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests;
  v_n integer := 0;
  v_scope text := reflect._setting_text('followups_scope');
  v_in_scope boolean;
  f record;
BEGIN
  SELECT * INTO r FROM reflect.requests WHERE id = p_request_id;
  v_in_scope := coalesce(r.caller = 'pgreflect-eval', false) OR v_scope = 'all'
                OR (v_scope = 'low_confidence' AND reflect._is_low_confidence(r.id, r.params));
  FOR f IN SELECT k, fraction FROM (VALUES ('critique', reflect._setting_float('critique_fraction')),
                                           ('agreement', reflect._setting_float('agreement_fraction'))) x(k, fraction)
  LOOP
    IF f.fraction > 0 AND v_in_scope AND (coalesce(r.caller = 'pgreflect-eval', false) OR random() < f.fraction) THEN
      -- The critique (a review aid: it told right from wrong no better than chance, AUROC 0.50 on 30) after every
      -- other job, priority -1; the agreement, which ranks low-confidence answers better, before it.
      IF reflect._enqueue_job(f.k, CASE f.k WHEN 'agreement' THEN jsonb_build_object(
             'samples', reflect._setting_int('agreement_samples'),
             'temperature', reflect._setting_float('agreement_temperature')) ELSE '{}'::jsonb END,
           r.id, r.model_version_id, CASE f.k WHEN 'critique' THEN -1 ELSE 0 END::smallint) IS NOT NULL THEN
        v_n := v_n + 1;
      END IF;
    END IF;
  END LOOP;
  RETURN v_n;
END
$$;
ALTER FUNCTION reflect._queue_followups(p_request_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._reap_expired_jobs() RETURNS integer
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  WITH expired AS (
    SELECT id FROM reflect.jobs WHERE state = 'running' AND lease_expires_at < clock_timestamp()
    ORDER BY id
    FOR UPDATE SKIP LOCKED
  ), moved AS (
    UPDATE reflect.jobs j
    SET state = CASE WHEN j.attempts < j.max_attempts THEN 'queued' ELSE 'failed' END::reflect.request_state,
        lease_token = NULL, lease_expires_at = NULL, run_after = clock_timestamp(),
        finished_at = CASE WHEN j.attempts < j.max_attempts THEN NULL ELSE clock_timestamp() END,
        last_error = format('lease of worker %s expired on attempt %s', j.worker_id, j.attempts)
    FROM expired WHERE j.id = expired.id
    RETURNING j.id, j.kind, j.state
  )
  SELECT count(CASE WHEN state = 'queued' THEN pg_notify(reflect._job_channel(kind), id::text) END)::integer
         + count(*) FILTER (WHERE state = 'failed')::integer
  FROM moved
$$;
ALTER FUNCTION reflect._reap_expired_jobs() OWNER TO reflect_owner;
CREATE TABLE reflect.requests (
    id bigint NOT NULL,
    key_id text NOT NULL,
    prompt_enc bytea NOT NULL,
    system_prompt_enc bytea,
    params jsonb DEFAULT '{}'::jsonb NOT NULL,
    idempotency_key text,
    caller text,
    submitted_by name NOT NULL,
    model_version_id integer NOT NULL,
    state reflect.request_state DEFAULT 'queued'::reflect.request_state NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer NOT NULL,
    run_after timestamp with time zone DEFAULT now() NOT NULL,
    lease_token uuid,
    lease_expires_at timestamp with time zone,
    worker_id text,
    last_error text,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    claimed_at timestamp with time zone,
    finished_at timestamp with time zone,
    history_enc bytea,
    CONSTRAINT attempts_within_max CHECK ((attempts <= max_attempts)),
    CONSTRAINT failed_has_reason CHECK (((state <> 'failed'::reflect.request_state) OR (last_error IS NOT NULL))),
    CONSTRAINT finished_iff_final CHECK (((state = ANY (ARRAY['succeeded'::reflect.request_state, 'failed'::reflect.request_state])) = (finished_at IS NOT NULL))),
    CONSTRAINT requests_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT requests_caller_check CHECK (((length(caller) >= 1) AND (length(caller) <= 200))),
    CONSTRAINT requests_idempotency_key_check CHECK (((length(idempotency_key) >= 1) AND (length(idempotency_key) <= 200))),
    CONSTRAINT requests_max_attempts_check CHECK (((max_attempts >= 1) AND (max_attempts <= 25))),
    CONSTRAINT requests_params_check CHECK ((jsonb_typeof(params) = 'object'::text)),
    CONSTRAINT running_iff_leased CHECK (((state = 'running'::reflect.request_state) = ((lease_token IS NOT NULL) AND (lease_expires_at IS NOT NULL))))
);
ALTER TABLE reflect.requests OWNER TO reflect_owner;
CREATE FUNCTION reflect._record_answer(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision) RETURNS reflect.requests
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests;
  v_n integer := coalesce(cardinality(p_token_logprobs), 0);
  v_mean double precision;
  v_min double precision;
BEGIN
  IF p_answer IS NULL THEN
    RAISE EXCEPTION 'answer must not be NULL' USING ERRCODE = 'PR001';
  END IF;
  IF p_finish_reason IS NULL OR p_finish_reason NOT IN ('stop', 'length', 'stop_sequence') THEN
    RAISE EXCEPTION 'finish reason must be stop, length or stop_sequence' USING ERRCODE = 'PR001';
  END IF;
  IF p_token_logprobs IS NULL OR array_position(p_token_logprobs, NULL) IS NOT NULL
     OR EXISTS (SELECT FROM unnest(p_token_logprobs) lp WHERE lp > 0 OR lp = 'NaN' OR lp = '-Infinity') THEN
    RAISE EXCEPTION 'token log-probabilities must be finite and <= 0' USING ERRCODE = 'PR001';
  END IF;
  IF p_prompt_tokens IS NULL OR p_prompt_tokens < 0 OR p_prompt_eval_ms IS NULL OR p_prompt_eval_ms < 0
     OR p_generation_ms IS NULL OR p_generation_ms < 0 THEN
    RAISE EXCEPTION 'token counts and timings must be non-negative' USING ERRCODE = 'PR001';
  END IF;
  r := reflect._take_lease(p_request_id, p_lease_token);
  SELECT avg(lp), min(lp) INTO v_mean, v_min FROM unnest(p_token_logprobs) lp;
  INSERT INTO reflect.answers
    (request_id, attempt, key_id, answer_enc, model_version_id, worker_id, finish_reason, prompt_tokens,
     completion_tokens, token_logprobs, logprob_mean, logprob_min, logprob_norm, queue_wait_ms,
     prompt_eval_ms, generation_ms, tokens_per_s)
  VALUES
    (r.id, r.attempts, r.key_id, reflect._encrypt(p_answer, r.key_id), r.model_version_id, r.worker_id,
     p_finish_reason, p_prompt_tokens, v_n, p_token_logprobs, v_mean, v_min, exp(v_mean),
     extract(epoch FROM (r.claimed_at - r.created_at)) * 1000, p_prompt_eval_ms, p_generation_ms,
     CASE WHEN p_generation_ms > 0 THEN v_n / (p_generation_ms / 1000) END);
  UPDATE reflect.requests
  SET state = 'succeeded', lease_token = NULL, lease_expires_at = NULL, finished_at = clock_timestamp(),
      last_error = NULL
  WHERE id = r.id;
  DELETE FROM reflect.partial_answers WHERE request_id = r.id;
  INSERT INTO reflect.request_events (request_id, event, attempt, worker_id)
  VALUES (r.id, 'succeeded', r.attempts, r.worker_id);
  RETURN r;
END
$$;
ALTER FUNCTION reflect._record_answer(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect._record_feedback(r reflect.requests, p_is_correct boolean, p_rating integer, p_correction text, p_source text) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
  v_id bigint;
  v_kind text;
  v_fid bigint;
BEGIN
  IF p_rating IS NOT NULL AND p_rating NOT BETWEEN 1 AND 5 THEN
    RAISE EXCEPTION 'rating must be between 1 and 5' USING ERRCODE = 'PR001';
  END IF;
  IF p_correction IS NOT NULL AND reflect._is_blank(p_correction) THEN
    RAISE EXCEPTION 'correction must not be empty' USING ERRCODE = 'PR001';
  END IF;
  IF length(p_correction) > reflect._setting_int('max_prompt_chars') THEN
    RAISE EXCEPTION 'correction is longer than % characters', reflect._setting_int('max_prompt_chars')
      USING ERRCODE = 'PR001';
  END IF;
  IF p_is_correct IS NULL AND p_rating IS NULL AND p_correction IS NULL THEN
    RAISE EXCEPTION 'feedback needs is_correct, a rating or a correction' USING ERRCODE = 'PR001';
  END IF;
  IF p_source IS NULL OR p_source !~ '^[a-z][a-z0-9_]{0,30}$' THEN
    RAISE EXCEPTION 'source must match ^[a-z][a-z0-9_]{0,30}$' USING ERRCODE = 'PR001';
  END IF;
  IF r.state <> 'succeeded' AND (p_is_correct IS NOT NULL OR p_rating IS NOT NULL) THEN
    RAISE EXCEPTION 'request % has no answer to judge (it is %)', r.id, r.state USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.feedback (request_id, is_correct, rating, key_id, correction_enc, source, given_by)
  VALUES (r.id, p_is_correct, p_rating, CASE WHEN p_correction IS NOT NULL THEN r.key_id END,
          reflect._encrypt(p_correction, r.key_id), p_source, session_user)
  RETURNING id INTO v_id;
  -- Memory follows the latest feedback that says something about correctness.
  SELECT CASE WHEN f.correction_enc IS NOT NULL THEN 'correction' WHEN f.is_correct THEN 'confirmed' END, f.id
  INTO v_kind, v_fid
  FROM reflect.feedback f
  WHERE f.request_id = r.id AND (f.is_correct IS NOT NULL OR f.correction_enc IS NOT NULL)
  ORDER BY f.id DESC LIMIT 1;
  -- A conversation's last question is not a memory: recalled on its own it would be out of context.
  IF v_kind IS NULL OR r.history_enc IS NOT NULL THEN
    DELETE FROM reflect.memories WHERE request_id = r.id;
  ELSE
    INSERT INTO reflect.memories (request_id, kind, feedback_id, embedding, owner)
    SELECT r.id, v_kind, v_fid, e.embedding, r.submitted_by FROM reflect.prompt_embeddings e WHERE e.request_id = r.id
    ON CONFLICT (request_id) DO UPDATE SET kind = excluded.kind, feedback_id = excluded.feedback_id;
  END IF;
  RETURN v_id;
END
$_$;
ALTER FUNCTION reflect._record_feedback(r reflect.requests, p_is_correct boolean, p_rating integer, p_correction text, p_source text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._requests_after_insert() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  INSERT INTO reflect.request_events (request_id, event, attempt, detail)
  VALUES (NEW.id, 'submitted', 0, NEW.caller);
  -- The payload is the id only: NOTIFY payloads are visible to every LISTENer.
  PERFORM pg_notify('needs_inference', NEW.id::text);
  RETURN NULL;
END
$$;
ALTER FUNCTION reflect._requests_after_insert() OWNER TO reflect_owner;
CREATE TABLE reflect.model_versions (
    id integer NOT NULL,
    name text NOT NULL,
    gguf_path text,
    source text NOT NULL,
    sha256 text,
    parent_id integer,
    n_ctx integer DEFAULT 4096 NOT NULL,
    is_active boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    backend text DEFAULT 'llama'::text NOT NULL,
    stage text DEFAULT 'registered'::text NOT NULL,
    base_model_version_id integer,
    adapter_path text,
    adapter_sha256 text,
    training_set_id integer,
    finetune_job_id bigint,
    hyperparameters jsonb,
    training_metrics jsonb,
    base_url text,
    remote_model text,
    CONSTRAINT adapter_complete CHECK ((((adapter_path IS NULL) = (adapter_sha256 IS NULL)) AND ((adapter_path IS NULL) = (base_model_version_id IS NULL)))),
    CONSTRAINT base_url_format CHECK ((base_url ~ '^https?://[^/@[:space:]]+(/[^[:space:]]*)?$'::text)),
    CONSTRAINT model_version_backend CHECK ((backend = ANY (ARRAY['llama'::text, 'noop'::text, 'openai'::text]))),
    CONSTRAINT model_version_location CHECK (
CASE
    WHEN (backend = 'openai'::text) THEN ((base_url IS NOT NULL) AND (remote_model IS NOT NULL) AND (gguf_path IS NULL) AND (sha256 IS NULL))
    ELSE ((gguf_path IS NOT NULL) AND (sha256 IS NOT NULL) AND (base_url IS NULL) AND (remote_model IS NULL))
END),
    CONSTRAINT model_version_name_format CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$'::text)),
    CONSTRAINT model_versions_adapter_sha256_check CHECK ((adapter_sha256 ~ '^[0-9a-f]{64}$'::text)),
    CONSTRAINT model_versions_gguf_path_check CHECK ((gguf_path <> ''::text)),
    CONSTRAINT model_versions_n_ctx_check CHECK (((n_ctx >= 256) AND (n_ctx <= 131072))),
    CONSTRAINT model_versions_source_check CHECK ((source <> ''::text)),
    CONSTRAINT model_versions_stage_check CHECK ((stage = ANY (ARRAY['registered'::text, 'candidate'::text, 'canary'::text, 'rejected'::text, 'retired'::text, 'promoted'::text]))),
    CONSTRAINT remote_model_format CHECK ((remote_model ~ '^[^[:space:][:cntrl:]]{1,200}$'::text)),
    CONSTRAINT sha256_hex CHECK ((sha256 ~ '^[0-9a-f]{64}$'::text))
);
ALTER TABLE reflect.model_versions OWNER TO reflect_owner;
CREATE FUNCTION reflect._root_version(p_id integer) RETURNS reflect.model_versions
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT r.* FROM reflect.model_versions mv
  JOIN reflect.model_versions r ON r.id = coalesce(mv.base_model_version_id, mv.id)
  WHERE mv.id = p_id
$$;
ALTER FUNCTION reflect._root_version(p_id integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect._sampled_for_review(p_request_id bigint) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT (('x' || substr(md5('review-sample:' || p_request_id), 1, 8))::bit(32)::bigint / 4294967296.0)
         < reflect._setting_float('review_sample_share')
$$;
ALTER FUNCTION reflect._sampled_for_review(p_request_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._setting_float(p_key text) RETURNS double precision
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT (value #>> '{}')::double precision FROM reflect.settings WHERE key = p_key
$$;
ALTER FUNCTION reflect._setting_float(p_key text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._setting_int(p_key text) RETURNS integer
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT (value #>> '{}')::integer FROM reflect.settings WHERE key = p_key
$$;
ALTER FUNCTION reflect._setting_int(p_key text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._setting_text(p_key text) RETURNS text
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT value #>> '{}' FROM reflect.settings WHERE key = p_key
$$;
ALTER FUNCTION reflect._setting_text(p_key text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._sigmoid(z double precision) RETURNS double precision
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT 1 / (1 + exp(-greatest(-30, least(30, z))))
$$;
ALTER FUNCTION reflect._sigmoid(z double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect._signals_of(p_request_id bigint) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT coalesce(jsonb_object_agg(name, value), '{}'::jsonb) FROM reflect.answer_signals WHERE request_id = p_request_id
$$;
ALTER FUNCTION reflect._signals_of(p_request_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._solve(a double precision[], b double precision[]) RETURNS double precision[]
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  n integer := array_length(b, 1);
  piv integer;
  f double precision;
  tmp double precision;
  x double precision[] := array_fill(0::double precision, ARRAY[n]);
BEGIN
  FOR k IN 1..n LOOP
    piv := k;
    FOR i IN k + 1..n LOOP
      IF abs(a[i][k]) > abs(a[piv][k]) THEN piv := i; END IF;
    END LOOP;
    IF abs(a[piv][k]) < 1e-12 THEN
      RAISE EXCEPTION 'singular system in calibrator fit';
    END IF;
    IF piv <> k THEN
      FOR j IN 1..n LOOP
        tmp := a[k][j]; a[k][j] := a[piv][j]; a[piv][j] := tmp;
      END LOOP;
      tmp := b[k]; b[k] := b[piv]; b[piv] := tmp;
    END IF;
    FOR i IN k + 1..n LOOP
      f := a[i][k] / a[k][k];
      FOR j IN k..n LOOP
        a[i][j] := a[i][j] - f * a[k][j];
      END LOOP;
      b[i] := b[i] - f * b[k];
    END LOOP;
  END LOOP;
  FOR i IN REVERSE n..1 LOOP
    tmp := b[i];
    FOR j IN i + 1..n LOOP
      tmp := tmp - a[i][j] * x[j];
    END LOOP;
    x[i] := tmp / a[i][i];
  END LOOP;
  RETURN x;
END
$$;
ALTER FUNCTION reflect._solve(a double precision[], b double precision[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect._store_signals(p_request_id bigint, p_signals jsonb) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
  v_bad text;
BEGIN
  IF p_signals IS NULL OR jsonb_typeof(p_signals) <> 'object' THEN
    RAISE EXCEPTION 'signals must be a JSON object of name: number' USING ERRCODE = 'PR001';
  END IF;
  SELECT k INTO v_bad FROM jsonb_each(p_signals) e(k, v)
  WHERE k !~ '^[a-z][a-z0-9_]{0,40}$' OR jsonb_typeof(v) <> 'number' LIMIT 1;
  IF v_bad IS NOT NULL THEN
    RAISE EXCEPTION 'signal "%" must be a lowercase name with a numeric value', left(v_bad, 40)
      USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.answer_signals (request_id, name, value)
  SELECT p_request_id, k, (v #>> '{}')::double precision FROM jsonb_each(p_signals) e(k, v)
  ON CONFLICT (request_id, name) DO UPDATE SET value = excluded.value, computed_at = now();
END
$_$;
ALTER FUNCTION reflect._store_signals(p_request_id bigint, p_signals jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect._take_job_lease(p_job_id bigint, p_lease_token uuid) RETURNS reflect.jobs
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  j reflect.jobs;
BEGIN
  SELECT * INTO j FROM reflect.jobs
  WHERE id = p_job_id AND state = 'running' AND lease_token = p_lease_token FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'stale lease: job % is not running under this lease token', p_job_id
      USING ERRCODE = 'PR002', HINT = 'the lease expired and the job was re-queued or finished; drop this work';
  END IF;
  RETURN j;
END
$$;
ALTER FUNCTION reflect._take_job_lease(p_job_id bigint, p_lease_token uuid) OWNER TO reflect_owner;
CREATE FUNCTION reflect._take_lease(p_request_id bigint, p_lease_token uuid) RETURNS reflect.requests
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests;
BEGIN
  SELECT * INTO r FROM reflect.requests
  WHERE id = p_request_id AND state = 'running' AND lease_token = p_lease_token
  FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'stale lease: request % is not running under this lease token', p_request_id
      USING ERRCODE = 'PR002',
            HINT = 'the lease expired and the request was re-queued or finished elsewhere; drop this work';
  END IF;
  RETURN r;
END
$$;
ALTER FUNCTION reflect._take_lease(p_request_id bigint, p_lease_token uuid) OWNER TO reflect_owner;
CREATE FUNCTION reflect._training_memory_policy(p_job_id bigint) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_ckpt text := reflect._setting_text('finetune_gradient_checkpointing');
  v_pause text := reflect._setting_text('finetune_pause_serving');
  v_reserve double precision := reflect._setting_float('finetune_memory_reserve_mb');
BEGIN
  IF v_ckpt IS NULL OR v_ckpt NOT IN ('auto', 'on', 'off') THEN
    RAISE EXCEPTION 'setting finetune_gradient_checkpointing must be "auto", "on" or "off" (it is %)', v_ckpt
      USING ERRCODE = 'PR001';
  END IF;
  IF v_pause IS NULL OR v_pause NOT IN ('auto', 'always', 'never') THEN
    RAISE EXCEPTION 'setting finetune_pause_serving must be "auto", "always" or "never" (it is %)', v_pause
      USING ERRCODE = 'PR001';
  END IF;
  IF v_reserve IS NULL OR v_reserve < 0 THEN
    RAISE EXCEPTION 'setting finetune_memory_reserve_mb must be a number of MB >= 0 (it is %)', v_reserve
      USING ERRCODE = 'PR001';
  END IF;
  RETURN jsonb_build_object(
    'reserve_mb', v_reserve, 'gradient_checkpointing', v_ckpt, 'pause_serving', v_pause,
    'seen_peak_mb', (SELECT max(rss_mb) FROM reflect.training_progress WHERE job_id = p_job_id),
    'seen_with_checkpointing', (SELECT gradient_checkpointing FROM reflect.training_memory WHERE job_id = p_job_id
                                ORDER BY attempt DESC LIMIT 1));
END
$$;
ALTER FUNCTION reflect._training_memory_policy(p_job_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._tuned(p_model_version_id integer, p_knob text) RETURNS double precision
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT new_value FROM reflect.tuning_changes
  WHERE model_version_id = p_model_version_id AND knob = p_knob AND reverted_at IS NULL
  ORDER BY id DESC LIMIT 1
$$;
ALTER FUNCTION reflect._tuned(p_model_version_id integer, p_knob text) OWNER TO reflect_owner;
CREATE FUNCTION reflect._uniform(p_a bigint, p_b bigint, p_stream bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT ((hashint8extended(p_a * 1000003 + p_b, p_stream) >> 11) & 9007199254740991)::double precision
         / 9007199254740992.0
$$;
ALTER FUNCTION reflect._uniform(p_a bigint, p_b bigint, p_stream bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect._vector(p_values jsonb, p_names text[]) RETURNS double precision[]
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT array_agg((p_values ->> n)::double precision ORDER BY i) FROM unnest(p_names) WITH ORDINALITY AS t(n, i)
$$;
ALTER FUNCTION reflect._vector(p_values jsonb, p_names text[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.accuracy_at_coverage_v1(p_confidence double precision[], p_correct boolean[], p_coverage double precision DEFAULT 0.8) RETURNS double precision
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  WITH d AS (
    SELECT y, row_number() OVER (ORDER BY c DESC) AS rn, count(*) OVER () AS n
    FROM unnest(p_confidence, p_correct) AS t(c, y) WHERE c IS NOT NULL AND y IS NOT NULL
  )
  SELECT avg(y::int)::double precision FROM d WHERE rn <= greatest(1, ceil(p_coverage * n))
$$;
ALTER FUNCTION reflect.accuracy_at_coverage_v1(p_confidence double precision[], p_correct boolean[], p_coverage double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect.activate_model_version_v1(p_name text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
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
ALTER FUNCTION reflect.activate_model_version_v1(p_name text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.active_probe_v1(p_model_version text) RETURNS TABLE(id integer, weights real[], bias double precision)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public', 'pg_temp'
    AS $$
  SELECT p.id, p.weights::real[], p.bias
  FROM reflect.state_probes p JOIN reflect.model_versions mv ON mv.id = p.model_version_id
  WHERE mv.name = p_model_version AND p.is_active
$$;
ALTER FUNCTION reflect.active_probe_v1(p_model_version text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.add_retention_items_v1(p_items jsonb, p_embedding_model text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_n integer;
BEGIN
  IF jsonb_typeof(p_items) IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'retention items must be a JSON array' USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.retention_items (dataset, item_id, prompt, system_prompt, reference, max_tokens,
                                       embedding_model, embedding)
  SELECT i ->> 'dataset', i ->> 'id', i ->> 'question', i ->> 'system_prompt', i ->> 'answer',
         coalesce((i ->> 'max_tokens')::integer, 64), p_embedding_model, (i ->> 'embedding')::public.vector
  FROM jsonb_array_elements(p_items) i
  ON CONFLICT (dataset, item_id) DO NOTHING;
  GET DIAGNOSTICS v_n = ROW_COUNT;
  RETURN v_n;
END
$$;
ALTER FUNCTION reflect.add_retention_items_v1(p_items jsonb, p_embedding_model text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.add_signals_v1(p_request_id bigint, p_signals jsonb) RETURNS double precision
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  IF NOT EXISTS (SELECT FROM reflect.answers WHERE request_id = p_request_id) THEN
    RAISE EXCEPTION 'request % has no answer', p_request_id USING ERRCODE = 'PR005';
  END IF;
  PERFORM reflect._store_signals(p_request_id, p_signals);
  RETURN reflect._apply_confidence(p_request_id);
END
$$;
ALTER FUNCTION reflect.add_signals_v1(p_request_id bigint, p_signals jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect.auroc_v1(p_scores double precision[], p_positives boolean[]) RETURNS double precision
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  WITH d AS (
    SELECT s, p FROM unnest(p_scores, p_positives) AS t(s, p) WHERE s IS NOT NULL AND p IS NOT NULL
  ), r AS (
    SELECT p, rank() OVER (ORDER BY s) + (count(*) OVER (PARTITION BY s) - 1) / 2.0 AS rk FROM d
  ), c AS (
    SELECT count(*) FILTER (WHERE p) AS n_pos, count(*) FILTER (WHERE NOT p) AS n_neg,
           sum(rk) FILTER (WHERE p) AS rank_sum
    FROM r
  )
  SELECT CASE WHEN n_pos = 0 OR n_neg = 0 THEN NULL
              ELSE ((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))::double precision END
  FROM c
$$;
ALTER FUNCTION reflect.auroc_v1(p_scores double precision[], p_positives boolean[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.bootstrap_v1(p_confidence double precision[], p_correct boolean[], p_resamples integer DEFAULT 1000) RETURNS TABLE(accuracy_lo double precision, accuracy_hi double precision, auroc_lo double precision, auroc_hi double precision)
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  WITH d AS (
    SELECT row_number() OVER (ORDER BY i) AS i, c, y
    FROM unnest(p_confidence, p_correct) WITH ORDINALITY AS t(c, y, i) WHERE c IS NOT NULL AND y IS NOT NULL
  ), n AS (
    SELECT count(*) AS n FROM d
  ), draws AS (
    SELECT b, 1 + floor(reflect._uniform(b, k, 2) * n.n)::bigint AS i
    FROM n, generate_series(1, p_resamples) AS b, generate_series(1, n.n) AS k
  ), per AS (
    SELECT b, avg(d.y::int)::double precision AS acc,
           reflect.auroc_v1(array_agg(1 - d.c), array_agg(NOT d.y)) AS auroc
    FROM draws JOIN d USING (i)
    GROUP BY b
  )
  SELECT percentile_cont(0.025) WITHIN GROUP (ORDER BY acc), percentile_cont(0.975) WITHIN GROUP (ORDER BY acc),
         percentile_cont(0.025) WITHIN GROUP (ORDER BY auroc), percentile_cont(0.975) WITHIN GROUP (ORDER BY auroc)
  FROM per
$$;
ALTER FUNCTION reflect.bootstrap_v1(p_confidence double precision[], p_correct boolean[], p_resamples integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.brier_v1(p_confidence double precision[], p_correct boolean[]) RETURNS double precision
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT avg((c - y::int) ^ 2) FROM unnest(p_confidence, p_correct) AS t(c, y)
  WHERE c IS NOT NULL AND y IS NOT NULL
$$;
ALTER FUNCTION reflect.brier_v1(p_confidence double precision[], p_correct boolean[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.calibration_features_v1() RETURNS text[]
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT ARRAY['logprob_mean', 'logprob_min', 'p_true', 'rule_failed', 'log_tokens', 'p_answer', 'agreement',
               'critique_verdict']
$$;
ALTER FUNCTION reflect.calibration_features_v1() OWNER TO reflect_owner;
CREATE FUNCTION reflect.calibration_features_v2() RETURNS text[]
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT reflect.calibration_features_v1()
         || ARRAY['option_max_prob', 'option_margin', 'option_entropy', 'kind_choice', 'kind_number', 'kind_long']
$$;
ALTER FUNCTION reflect.calibration_features_v2() OWNER TO reflect_owner;
CREATE FUNCTION reflect.canary_step_v1() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  c reflect.canaries;
  e reflect.canary_status;
  v_n integer := 0;
BEGIN
  FOR c IN SELECT * FROM reflect.canaries WHERE state = 'running' FOR UPDATE SKIP LOCKED LOOP
    IF NOT EXISTS (SELECT FROM reflect.model_versions WHERE id = c.parent_id AND is_active) THEN
      UPDATE reflect.canaries SET state = 'stopped', ended_at = clock_timestamp() WHERE id = c.id;
      UPDATE reflect.model_versions SET stage = 'candidate' WHERE id = c.candidate_id AND stage = 'canary';
      v_n := v_n + 1;
      CONTINUE;
    END IF;
    SELECT * INTO e FROM reflect.canary_status WHERE id = c.id;
    CONTINUE WHEN least(e.candidate_labels, e.parent_labels) < e.min_labels OR e.glr <= e.threshold;
    PERFORM reflect._decide(c.candidate_id,
      CASE WHEN e.candidate_accuracy > e.parent_accuracy THEN 'promote' ELSE 'reject' END,
      format('canary: candidate %s of %s right, parent %s of %s (GLR %s > %s)', e.candidate_right,
             e.candidate_labels, e.parent_right, e.parent_labels, round(e.glr::numeric, 2), round(e.threshold::numeric, 2)),
      jsonb_build_object('canary', to_jsonb(e)),
      jsonb_build_object('delta', reflect._setting_float('canary_delta'), 'min_labels', e.min_labels));
    v_n := v_n + 1;
  END LOOP;
  RETURN v_n;
END
$$;
ALTER FUNCTION reflect.canary_step_v1() OWNER TO reflect_owner;
CREATE FUNCTION reflect.checkpoint_job_v1(p_job_id bigint, p_lease_token uuid, p_checkpoint jsonb, p_lease_seconds integer) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
BEGIN
  IF p_checkpoint IS NULL OR jsonb_typeof(p_checkpoint) <> 'object' THEN
    RAISE EXCEPTION 'a checkpoint must be a JSON object' USING ERRCODE = 'PR001';
  END IF;
  UPDATE reflect.jobs
  SET checkpoint = p_checkpoint, lease_expires_at = clock_timestamp() + reflect._check_lease_seconds(p_lease_seconds)
  WHERE id = j.id;
END
$$;
ALTER FUNCTION reflect.checkpoint_job_v1(p_job_id bigint, p_lease_token uuid, p_checkpoint jsonb, p_lease_seconds integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.claim_followups_v1(p_worker_id text, p_limit integer, p_lease_seconds integer, p_model_version_ids integer[] DEFAULT NULL::integer[]) RETURNS TABLE(followup_id bigint, lease_token uuid, kind text, request_id bigint, model_version_id integer, prompt text, system_prompt text, answer text, params jsonb, samples integer, temperature double precision)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
  c record;
  i record;
BEGIN
  FOR c IN SELECT * FROM reflect.claim_jobs_v1(p_worker_id, ARRAY['critique', 'agreement'], p_limit, p_lease_seconds,
                                                p_model_version_ids) LOOP
    SELECT * INTO i FROM reflect.job_input_v1(c.job_id, c.lease_token);
    CONTINUE WHEN NOT FOUND;  -- the text did not decrypt: job_input_v1 failed the job
    followup_id := c.job_id;
    lease_token := c.lease_token;
    kind := c.kind;
    request_id := c.request_id;
    model_version_id := c.model_version_id;
    prompt := i.prompt;
    system_prompt := i.system_prompt;
    answer := i.answer;
    params := i.params;
    samples := reflect._setting_int('agreement_samples');
    temperature := reflect._setting_float('agreement_temperature');
    RETURN NEXT;
  END LOOP;
END
$$;
ALTER FUNCTION reflect.claim_followups_v1(p_worker_id text, p_limit integer, p_lease_seconds integer, p_model_version_ids integer[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.claim_jobs_v1(p_worker_id text, p_kinds text[], p_limit integer, p_lease_seconds integer, p_model_version_ids integer[] DEFAULT NULL::integer[]) RETURNS TABLE(job_id bigint, lease_token uuid, kind text, attempt integer, request_id bigint, model_version_id integer, payload jsonb, checkpoint jsonb)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
  v_lease interval := reflect._check_lease_seconds(p_lease_seconds);
  v_keys text[] := reflect._loaded_key_ids();
BEGIN
  IF p_worker_id IS NULL OR length(p_worker_id) NOT BETWEEN 1 AND 200 THEN
    RAISE EXCEPTION 'worker id must be 1 to 200 characters' USING ERRCODE = 'PR001';
  END IF;
  IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
    RAISE EXCEPTION 'claim limit must be between 1 and 1000' USING ERRCODE = 'PR001';
  END IF;
  RETURN QUERY
  WITH picked AS (
    SELECT j.id FROM reflect.jobs j
    LEFT JOIN reflect.requests r ON r.id = j.request_id
    WHERE j.state = 'queued' AND j.run_after <= now()
      AND j.kind = ANY (p_kinds)
      AND (j.model_version_id IS NULL OR p_model_version_ids IS NULL OR j.model_version_id = ANY (p_model_version_ids))
      AND (j.request_id IS NULL OR r.key_id = ANY (v_keys))
    ORDER BY j.priority DESC, j.id
    LIMIT p_limit
    FOR UPDATE OF j SKIP LOCKED
  ), claimed AS (
    UPDATE reflect.jobs j
    SET state = 'running', attempts = j.attempts + 1, lease_token = gen_random_uuid(),
        lease_expires_at = clock_timestamp() + v_lease, worker_id = p_worker_id,
        started_at = coalesce(j.started_at, clock_timestamp())
    FROM picked WHERE j.id = picked.id
    RETURNING j.*
  )
  SELECT c.id, c.lease_token, c.kind, c.attempts, c.request_id, c.model_version_id, c.payload, c.checkpoint
  FROM claimed c ORDER BY c.priority DESC, c.id;
END
$$;
ALTER FUNCTION reflect.claim_jobs_v1(p_worker_id text, p_kinds text[], p_limit integer, p_lease_seconds integer, p_model_version_ids integer[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.claim_v1(p_worker_id text, p_limit integer, p_lease_seconds integer, p_model_version_ids integer[] DEFAULT NULL::integer[]) RETURNS TABLE(request_id bigint, lease_token uuid, attempt integer, model_version_id integer, prompt text, system_prompt text, params jsonb, queue_wait_ms double precision)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
  v_lease interval := reflect._check_lease_seconds(p_lease_seconds);
  v_keys text[] := reflect._loaded_key_ids();
  c record;
  v_prompt record;
  v_system record;
  v_want integer := p_limit;
  v_seen integer;
  v_bad integer;
BEGIN
  IF p_worker_id IS NULL OR length(p_worker_id) NOT BETWEEN 1 AND 200 THEN
    RAISE EXCEPTION 'worker id must be 1 to 200 characters' USING ERRCODE = 'PR001';
  END IF;
  IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
    RAISE EXCEPTION 'claim limit must be between 1 and 1000' USING ERRCODE = 'PR001';
  END IF;
  -- Each undecryptable row is failed and replaced by the next queued one, so the caller still gets work.
  LOOP
    v_seen := 0;
    v_bad := 0;
    FOR c IN
      WITH picked AS (
        SELECT r.id
        FROM reflect.requests r
        WHERE r.state = 'queued'
          AND r.run_after <= now()
          AND (p_model_version_ids IS NULL OR r.model_version_id = ANY (p_model_version_ids))
          AND r.key_id = ANY (v_keys)
        ORDER BY r.id
        LIMIT v_want
        FOR UPDATE SKIP LOCKED
      ), claimed AS (
        UPDATE reflect.requests r
        SET state = 'running',
            attempts = r.attempts + 1,
            lease_token = gen_random_uuid(),
            lease_expires_at = clock_timestamp() + v_lease,
            worker_id = p_worker_id,
            claimed_at = clock_timestamp()
        FROM picked
        WHERE r.id = picked.id
        RETURNING r.*
      ), logged AS (
        INSERT INTO reflect.request_events (request_id, event, attempt, worker_id)
        SELECT cl.id, 'claimed', cl.attempts, p_worker_id FROM claimed cl
      )
      SELECT * FROM claimed ORDER BY id
    LOOP
      v_seen := v_seen + 1;
      SELECT * INTO v_prompt FROM reflect._decrypt_safe(c.prompt_enc, c.key_id);
      SELECT * INTO v_system FROM reflect._decrypt_safe(c.system_prompt_enc, c.key_id);
      IF NOT (v_prompt.ok AND v_system.ok) THEN
        PERFORM reflect._fail_undecryptable(c.id, c.lease_token, c.key_id);
        v_bad := v_bad + 1;
        CONTINUE;
      END IF;
      request_id := c.id;
      lease_token := c.lease_token;
      attempt := c.attempts;
      model_version_id := c.model_version_id;
      prompt := v_prompt.plain;
      system_prompt := v_system.plain;
      params := c.params;
      queue_wait_ms := extract(epoch FROM (c.claimed_at - c.created_at))::double precision * 1000;
      RETURN NEXT;
    END LOOP;
    EXIT WHEN v_bad = 0 OR v_seen = 0;
    v_want := v_bad;
  END LOOP;
END
$$;
ALTER FUNCTION reflect.claim_v1(p_worker_id text, p_limit integer, p_lease_seconds integer, p_model_version_ids integer[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.complete_followup_v1(p_followup_id bigint, p_lease_token uuid, p_signals jsonb, p_critique text DEFAULT NULL::text) RETURNS double precision
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  RETURN (reflect.complete_job_v1(p_followup_id, p_lease_token,
            jsonb_build_object('signals', coalesce(p_signals, '{}'::jsonb), 'critique', p_critique))
          ->> 'confidence')::double precision;
END
$$;
ALTER FUNCTION reflect.complete_followup_v1(p_followup_id bigint, p_lease_token uuid, p_signals jsonb, p_critique text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.complete_job_v1(p_job_id bigint, p_lease_token uuid, p_result jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
  v_out jsonb;
BEGIN
  IF p_result IS NULL OR jsonb_typeof(p_result) <> 'object' THEN
    RAISE EXCEPTION 'a job result must be a JSON object' USING ERRCODE = 'PR001';
  END IF;
  v_out := reflect._finish_job(j, p_result);
  UPDATE reflect.jobs
  SET state = 'succeeded', lease_token = NULL, lease_expires_at = NULL, finished_at = clock_timestamp(),
      last_error = NULL, result = p_result || coalesce(v_out, '{}'::jsonb)
  WHERE id = j.id;
  RETURN v_out;
END
$$;
ALTER FUNCTION reflect.complete_job_v1(p_job_id bigint, p_lease_token uuid, p_result jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect.complete_v1(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  PERFORM reflect.complete_v2(p_request_id, p_lease_token, p_answer, p_finish_reason, p_prompt_tokens,
                              p_token_logprobs, p_prompt_eval_ms, p_generation_ms, '{}'::jsonb);
END
$$;
ALTER FUNCTION reflect.complete_v1(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect.complete_v2(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision, p_signals jsonb) RETURNS double precision
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests;
  v_conf double precision;
BEGIN
  r := reflect._record_answer(p_request_id, p_lease_token, p_answer, p_finish_reason, p_prompt_tokens,
                              p_token_logprobs, p_prompt_eval_ms, p_generation_ms);
  PERFORM reflect._store_signals(r.id, p_signals || reflect._probe_signal(r.id));
  v_conf := reflect._apply_confidence(r.id);
  -- when attempts were recorded (re-answer), the stored answer is the most confident one
  UPDATE reflect.answer_candidates ac SET chosen = (ac.n = (
    SELECT c.n FROM reflect.answer_candidates c WHERE c.request_id = r.id ORDER BY c.confidence DESC, c.n LIMIT 1))
  WHERE ac.request_id = r.id;
  PERFORM reflect._queue_followups(r.id);
  PERFORM pg_notify('request_done', r.id::text);
  RETURN v_conf;
END
$$;
ALTER FUNCTION reflect.complete_v2(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision, p_signals jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect.create_api_key_v1(p_name text, p_app text) RETURNS TABLE(id text, key text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;
ALTER FUNCTION reflect.create_api_key_v1(p_name text, p_app text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.curate_training_set_v1(p_owner name, p_model_version text DEFAULT NULL::text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public', 'pg_temp'
    AS $$
DECLARE
  v_model integer;
  v_max_distance double precision := 1 - reflect._setting_float('curation_duplicate_similarity');
  v_leak_distance double precision := 1 - coalesce(reflect._setting_float('curation_leakage_similarity'),
                                                   reflect._setting_float('curation_duplicate_similarity'));
  v_heldout double precision := reflect._setting_float('curation_heldout_share');
  v_set integer;
  v_candidates integer;
  v_no_embedding integer;
  v_leak integer;
  v_dupes integer;
BEGIN
  IF p_owner IS NULL OR NOT EXISTS (SELECT FROM pg_roles WHERE rolname = p_owner) THEN
    RAISE EXCEPTION 'no login named "%"', left(p_owner, 63) USING ERRCODE = 'PR001';
  END IF;
  IF p_model_version IS NULL THEN
    SELECT id INTO v_model FROM reflect.model_versions WHERE is_active;
  ELSE
    SELECT id INTO v_model FROM reflect.model_versions WHERE name = p_model_version;
  END IF;
  IF v_model IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', coalesce(p_model_version, '(active)') USING ERRCODE = 'PR003';
  END IF;
  DROP TABLE IF EXISTS pg_temp._cand;  -- a second call in the same transaction
  CREATE TEMP TABLE _cand ON COMMIT DROP AS
  SELECT l.request_id, l.feedback_id, l.source, e.embedding,
         r.key_id, r.prompt_enc, r.system_prompt_enc,
         CASE l.source WHEN 'correction' THEN l.correction_enc ELSE a.answer_enc END AS completion_enc,
         CASE l.source WHEN 'correction' THEN l.correction_key_id ELSE a.key_id END AS completion_key_id
  FROM (
    SELECT DISTINCT ON (f.request_id) f.request_id, f.id AS feedback_id, f.correction_enc, f.key_id AS correction_key_id,
           CASE WHEN f.correction_enc IS NOT NULL THEN 'correction' WHEN f.is_correct THEN 'confirmed' END AS source
    FROM reflect.feedback f
    JOIN reflect.requests r ON r.id = f.request_id
    WHERE r.submitted_by = p_owner AND (f.is_correct IS NOT NULL OR f.correction_enc IS NOT NULL)
    ORDER BY f.request_id, f.id DESC
  ) l
  JOIN reflect.requests r ON r.id = l.request_id
  LEFT JOIN reflect.answers a ON a.request_id = l.request_id
  LEFT JOIN reflect.prompt_embeddings e ON e.request_id = l.request_id
  WHERE l.source IS NOT NULL AND r.id NOT IN (SELECT request_id FROM reflect.eval_requests)
    AND r.history_enc IS NULL;  -- a conversation's last turn alone is out of context: not training data (yet)
  GET DIAGNOSTICS v_candidates = ROW_COUNT;
  DELETE FROM _cand WHERE embedding IS NULL OR completion_enc IS NULL;
  GET DIAGNOSTICS v_no_embedding = ROW_COUNT;
  DELETE FROM _cand c WHERE EXISTS (
    SELECT FROM reflect.eval_requests er
    JOIN reflect.prompt_embeddings ee ON ee.request_id = er.request_id
    WHERE (ee.embedding OPERATOR(public.<=>) c.embedding) <= v_leak_distance)
  OR EXISTS (
    SELECT FROM reflect.retention_items ri
    WHERE (ri.embedding OPERATOR(public.<=>) c.embedding) <= v_leak_distance);
  GET DIAGNOSTICS v_leak = ROW_COUNT;
  DELETE FROM _cand c WHERE EXISTS (
    SELECT FROM _cand d
    WHERE d.request_id <> c.request_id
      AND (d.embedding OPERATOR(public.<=>) c.embedding) <= v_max_distance
      AND (d.source = 'correction', d.feedback_id) > (c.source = 'correction', c.feedback_id));
  GET DIAGNOSTICS v_dupes = ROW_COUNT;
  IF NOT EXISTS (SELECT FROM _cand) THEN
    RAISE EXCEPTION 'nothing to train on for %: % labelled request(s), % without an embedding, % too close to evaluation items',
      p_owner, v_candidates, v_no_embedding, v_leak
      USING ERRCODE = 'PR001',
            HINT = 'corrections (or answers confirmed correct) of requests answered with memory on are the training data';
  END IF;
  INSERT INTO reflect.training_sets (owner, base_model_version_id, created_by, n_candidates, n_corrections,
                                     n_confirmed, n_duplicates_merged, n_excluded_leakage, n_excluded_no_embedding,
                                     n_train, n_heldout, content_hash, settings)
  SELECT p_owner, v_model, session_user, v_candidates,
         count(*) FILTER (WHERE source = 'correction'), count(*) FILTER (WHERE source = 'confirmed'),
         v_dupes, v_leak, v_no_embedding,
         count(*) FILTER (WHERE NOT reflect._heldout(request_id, v_heldout)),
         count(*) FILTER (WHERE reflect._heldout(request_id, v_heldout)),
         encode(public.digest(string_agg(request_id::text || ':' || encode(public.digest(prompt_enc || completion_enc, 'sha256'), 'hex'),
                                         ',' ORDER BY request_id), 'sha256'), 'hex'),
         jsonb_build_object('duplicate_similarity', 1 - v_max_distance, 'leakage_similarity', 1 - v_leak_distance,
                            'heldout_share', v_heldout)
  FROM _cand
  RETURNING id INTO v_set;
  INSERT INTO reflect.training_examples (training_set_id, request_id, feedback_id, source, split, key_id, prompt_enc,
                                         system_prompt_enc, completion_enc)
  SELECT v_set, c.request_id, c.feedback_id, c.source,
         CASE WHEN reflect._heldout(c.request_id, v_heldout) THEN 'heldout' ELSE 'train' END,
         c.key_id, c.prompt_enc, c.system_prompt_enc,
         CASE WHEN c.completion_key_id = c.key_id THEN c.completion_enc
              ELSE reflect._encrypt(reflect._decrypt(c.completion_enc, c.completion_key_id), c.key_id) END
  FROM _cand c;
  RETURN v_set;
END
$$;
ALTER FUNCTION reflect.curate_training_set_v1(p_owner name, p_model_version text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.decide_model_version_v1(p_name text, p_decision text, p_reason text DEFAULT NULL::text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  c reflect.model_versions;
BEGIN
  IF p_decision IS NULL OR p_decision NOT IN ('promote', 'reject', 'canary') THEN
    RAISE EXCEPTION 'decision must be promote, reject or canary' USING ERRCODE = 'PR001';
  END IF;
  SELECT * INTO c FROM reflect.model_versions WHERE name = p_name;
  IF c.id IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', left(p_name, 100) USING ERRCODE = 'PR003';
  END IF;
  IF p_decision = 'canary' AND (c.is_active OR reflect._setting_float('canary_share') <= 0) THEN
    RAISE EXCEPTION 'model version "%" cannot be a canary (it is active, or canary_share is 0)', c.name
      USING ERRCODE = 'PR001';
  END IF;
  IF p_decision = 'promote' AND c.is_active THEN
    RAISE EXCEPTION 'model version "%" is already active', c.name USING ERRCODE = 'PR001';
  END IF;
  IF p_decision = 'reject' AND c.is_active THEN
    RAISE EXCEPTION 'model version "%" is active: roll it back instead', c.name USING ERRCODE = 'PR001',
      HINT = 'pgreflect models rollback';
  END IF;
  RETURN reflect._decide(c.id, p_decision, coalesce(nullif(p_reason, ''), 'decided by ' || session_user),
                         '{}'::jsonb, '{}'::jsonb);
END
$$;
ALTER FUNCTION reflect.decide_model_version_v1(p_name text, p_decision text, p_reason text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.ece_floor_v1(p_confidence double precision[], p_sims integer DEFAULT 200, p_bins integer DEFAULT 10) RETURNS TABLE(mean double precision, p95 double precision)
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  WITH d AS (
    SELECT row_number() OVER (ORDER BY i) AS i, c
    FROM unnest(p_confidence) WITH ORDINALITY AS t(c, i) WHERE c IS NOT NULL
  ), sims AS (
    SELECT s, reflect.ece_v1(array_agg(d.c), array_agg(reflect._uniform(s, d.i, 1) < d.c), p_bins) AS e
    FROM generate_series(1, p_sims) AS s CROSS JOIN d
    GROUP BY s
  )
  SELECT avg(e), percentile_cont(0.95) WITHIN GROUP (ORDER BY e) FROM sims
$$;
ALTER FUNCTION reflect.ece_floor_v1(p_confidence double precision[], p_sims integer, p_bins integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.ece_v1(p_confidence double precision[], p_correct boolean[], p_bins integer DEFAULT 10) RETURNS double precision
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  WITH d AS (
    SELECT c, y::int AS y, least(floor(c * p_bins)::int, p_bins - 1) AS bin
    FROM unnest(p_confidence, p_correct) AS t(c, y) WHERE c IS NOT NULL AND y IS NOT NULL
  )
  SELECT sum(abs(sum_c - sum_y)) / nullif(sum(n), 0)
  FROM (SELECT bin, count(*) AS n, sum(c) AS sum_c, sum(y) AS sum_y FROM d GROUP BY bin) b
$$;
ALTER FUNCTION reflect.ece_v1(p_confidence double precision[], p_correct boolean[], p_bins integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.ensure_login_role_v1(p_login text, p_group text) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;
ALTER FUNCTION reflect.ensure_login_role_v1(p_login text, p_group text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.eval_metrics_v1(p_confidence double precision[], p_correct boolean[], p_resamples integer DEFAULT 1000, p_coverage double precision DEFAULT 0.8) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_n integer;
  v_acc double precision;
  v_cov double precision;
  v_oracle double precision;
  v_floor record;
  v_boot record;
BEGIN
  SELECT count(*), avg(y::int) INTO v_n, v_acc
  FROM unnest(p_confidence, p_correct) AS t(c, y) WHERE c IS NOT NULL AND y IS NOT NULL;
  IF v_n = 0 THEN
    RETURN jsonb_build_object('n', 0);
  END IF;
  v_cov := reflect.accuracy_at_coverage_v1(p_confidence, p_correct, p_coverage);
  v_oracle := least(1.0, v_acc / p_coverage) - v_acc;
  SELECT * INTO v_floor FROM reflect.ece_floor_v1(
    ARRAY(SELECT c FROM unnest(p_confidence, p_correct) AS t(c, y) WHERE c IS NOT NULL AND y IS NOT NULL));
  SELECT * INTO v_boot FROM reflect.bootstrap_v1(p_confidence, p_correct, p_resamples);
  RETURN jsonb_build_object(
    'n', v_n,
    'accuracy', v_acc, 'accuracy_ci', jsonb_build_array(v_boot.accuracy_lo, v_boot.accuracy_hi),
    'mean_confidence', (SELECT avg(c) FROM unnest(p_confidence, p_correct) AS t(c, y)
                        WHERE c IS NOT NULL AND y IS NOT NULL),
    'auroc', (SELECT reflect.auroc_v1(array_agg(1 - c), array_agg(NOT y)) FROM unnest(p_confidence, p_correct) AS t(c, y)),
    'auroc_ci', jsonb_build_array(v_boot.auroc_lo, v_boot.auroc_hi),
    'ece', reflect.ece_v1(p_confidence, p_correct), 'ece_floor', v_floor.mean, 'ece_floor_p95', v_floor.p95,
    'brier', reflect.brier_v1(p_confidence, p_correct),
    'coverage', p_coverage, 'accuracy_at_coverage', v_cov,
    'selective_gain', v_cov - v_acc, 'oracle_gain', v_oracle,
    'selective_gain_share', CASE WHEN v_oracle > 0 THEN (v_cov - v_acc) / v_oracle END,
    'resamples', p_resamples);
END
$$;
ALTER FUNCTION reflect.eval_metrics_v1(p_confidence double precision[], p_correct boolean[], p_resamples integer, p_coverage double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect.evidence_v1(p_request_id bigint, p_lease_token uuid, p_k integer DEFAULT 3) RETURNS TABLE(memory_request_id bigint, prompt text, answer text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests;
  v_embedding public.vector;
BEGIN
  r := reflect._take_lease(p_request_id, p_lease_token);
  SELECT embedding INTO v_embedding FROM reflect.prompt_embeddings WHERE request_id = r.id;
  IF v_embedding IS NULL THEN
    RETURN;
  END IF;
  PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);  -- as in recall_v1: the owner filter
  RETURN QUERY
  WITH nearest AS (  -- ids first: only the k rows found are decrypted
    SELECT m.request_id, m.feedback_id, m.embedding OPERATOR(public.<=>) v_embedding AS dist
    FROM reflect.memories m
    JOIN reflect.requests mr ON mr.id = m.request_id
    WHERE m.request_id <> r.id AND m.owner = ANY (reflect._memory_owners(r.submitted_by))
      AND mr.key_id = ANY (reflect._loaded_key_ids())
    ORDER BY m.embedding OPERATOR(public.<=>) v_embedding
    LIMIT greatest(1, least(coalesce(p_k, 3), 20))
  )
  SELECT n.request_id, p.plain, coalesce(co.plain, an.plain)
  FROM nearest n
  JOIN reflect.requests mr ON mr.id = n.request_id
  LEFT JOIN reflect.answers a ON a.request_id = n.request_id
  LEFT JOIN reflect.feedback f ON f.id = n.feedback_id
  CROSS JOIN LATERAL reflect._decrypt_safe(mr.prompt_enc, mr.key_id) p
  CROSS JOIN LATERAL reflect._decrypt_safe(a.answer_enc, a.key_id) an
  CROSS JOIN LATERAL reflect._decrypt_safe(f.correction_enc, f.key_id) co
  WHERE p.ok AND an.ok AND co.ok AND n.dist <= reflect._memory_max_distance(r.params)
  ORDER BY n.dist;
END
$$;
ALTER FUNCTION reflect.evidence_v1(p_request_id bigint, p_lease_token uuid, p_k integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.export_calibrator_v1(p_model_version text) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT jsonb_build_object(
    'format', 'pgreflect-calibrator-1', 'model_version', mv.name, 'gguf_sha256', coalesce(b.sha256, mv.sha256),
    'adapter_sha256', mv.adapter_sha256, 'method', c.method, 'features', to_jsonb(c.features),
    'feature_means', to_jsonb(c.feature_means), 'feature_stds', to_jsonb(c.feature_stds),
    'weights', to_jsonb(c.weights), 'n_train', c.n_train, 'n_heldout', c.n_heldout,
    'heldout_metrics', c.heldout_metrics, 'fitted_at', c.created_at)
  FROM reflect.model_versions mv
  JOIN reflect.calibrators c ON c.model_version_id = mv.id AND c.is_active
  LEFT JOIN reflect.model_versions b ON b.id = mv.base_model_version_id
  WHERE mv.name = p_model_version
$$;
ALTER FUNCTION reflect.export_calibrator_v1(p_model_version text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.fail_followup_v1(p_followup_id bigint, p_lease_token uuid, p_error text, p_release boolean DEFAULT false) RETURNS reflect.request_state
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  RETURN reflect.fail_job_v1(p_followup_id, p_lease_token, p_error, true, p_release);
END
$$;
ALTER FUNCTION reflect.fail_followup_v1(p_followup_id bigint, p_lease_token uuid, p_error text, p_release boolean) OWNER TO reflect_owner;
CREATE FUNCTION reflect.fail_job_v1(p_job_id bigint, p_lease_token uuid, p_error text, p_retryable boolean DEFAULT true, p_release boolean DEFAULT false) RETURNS reflect.request_state
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
  v_state reflect.request_state;
  v_error text := left(coalesce(nullif(p_error, ''), 'unknown error'), 1000);
BEGIN
  v_state := CASE WHEN coalesce(p_release, false)
                    OR (coalesce(p_retryable, true) AND j.attempts < j.max_attempts) THEN 'queued'
                  ELSE 'failed' END;
  UPDATE reflect.jobs
  SET state = v_state, lease_token = NULL, lease_expires_at = NULL,
      attempts = CASE WHEN p_release THEN greatest(j.attempts - 1, 0) ELSE j.attempts END,
      run_after = CASE WHEN p_release THEN clock_timestamp()
                       ELSE clock_timestamp() + make_interval(secs => least(reflect._setting_int('retry_max_s'),
                              reflect._setting_int('retry_base_s') * 2 ^ (j.attempts - 1))) END,
      last_error = CASE WHEN p_release THEN j.last_error ELSE v_error END,
      finished_at = CASE WHEN v_state = 'failed' THEN clock_timestamp() END
  WHERE id = j.id;
  IF v_state = 'queued' THEN
    PERFORM pg_notify(reflect._job_channel(j.kind), j.id::text);
  END IF;
  RETURN v_state;
END
$$;
ALTER FUNCTION reflect.fail_job_v1(p_job_id bigint, p_lease_token uuid, p_error text, p_retryable boolean, p_release boolean) OWNER TO reflect_owner;
CREATE FUNCTION reflect.fail_v1(p_request_id bigint, p_lease_token uuid, p_error text, p_retryable boolean DEFAULT true) RETURNS reflect.request_state
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests;
  v_error text := left(coalesce(nullif(p_error, ''), 'unknown error'), 1000);
  v_backoff double precision;
BEGIN
  r := reflect._take_lease(p_request_id, p_lease_token);
  DELETE FROM reflect.partial_answers WHERE request_id = r.id;  -- a next attempt starts over
  IF coalesce(p_retryable, true) AND r.attempts < r.max_attempts THEN
    v_backoff := least(reflect._setting_int('retry_max_s'),
                       reflect._setting_int('retry_base_s') * 2 ^ (r.attempts - 1));
    UPDATE reflect.requests
    SET state = 'queued', lease_token = NULL, lease_expires_at = NULL, last_error = v_error,
        run_after = clock_timestamp() + make_interval(secs => v_backoff)
    WHERE id = r.id;
    INSERT INTO reflect.request_events (request_id, event, attempt, worker_id, detail)
    VALUES (r.id, 'retry', r.attempts, r.worker_id, v_error);
    RETURN 'queued';
  END IF;
  UPDATE reflect.requests
  SET state = 'failed', lease_token = NULL, lease_expires_at = NULL, finished_at = clock_timestamp(),
      last_error = CASE WHEN coalesce(p_retryable, true)
                        THEN format('gave up after %s attempts: %s', r.attempts, v_error)
                        ELSE v_error END
  WHERE id = r.id;
  INSERT INTO reflect.request_events (request_id, event, attempt, worker_id, detail)
  VALUES (r.id, 'failed', r.attempts, r.worker_id, v_error);
  PERFORM pg_notify('request_done', r.id::text);
  RETURN 'failed';
END
$$;
ALTER FUNCTION reflect.fail_v1(p_request_id bigint, p_lease_token uuid, p_error text, p_retryable boolean) OWNER TO reflect_owner;
CREATE FUNCTION reflect.feedback_v1(p_request_id bigint, p_is_correct boolean DEFAULT NULL::boolean, p_rating integer DEFAULT NULL::integer, p_correction text DEFAULT NULL::text, p_source text DEFAULT 'human'::text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests;
BEGIN
  SELECT * INTO r FROM reflect.requests WHERE id = p_request_id;
  IF r.id IS NULL OR NOT (r.submitted_by = session_user OR pg_has_role(session_user, 'reflect_owner', 'MEMBER')) THEN
    RAISE EXCEPTION 'no request % (or it is not yours)', p_request_id USING ERRCODE = 'PR005';
  END IF;
  RETURN reflect._record_feedback(r, p_is_correct, p_rating, p_correction, p_source);
END
$$;
ALTER FUNCTION reflect.feedback_v1(p_request_id bigint, p_is_correct boolean, p_rating integer, p_correction text, p_source text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.finetune_examples_v1(p_job_id bigint, p_lease_token uuid) RETURNS TABLE(request_id bigint, source text, split text, system_prompt text, prompt text, completion text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
BEGIN
  RETURN QUERY
  SELECT e.request_id, e.source, e.split, s.plain, p.plain, c.plain
  FROM reflect.training_examples e
  CROSS JOIN LATERAL reflect._decrypt_safe(e.prompt_enc, e.key_id) p
  CROSS JOIN LATERAL reflect._decrypt_safe(e.system_prompt_enc, e.key_id) s
  CROSS JOIN LATERAL reflect._decrypt_safe(e.completion_enc, e.key_id) c
  WHERE e.training_set_id = (j.payload ->> 'training_set_id')::integer AND p.ok AND s.ok AND c.ok
  ORDER BY e.request_id;
END
$$;
ALTER FUNCTION reflect.finetune_examples_v1(p_job_id bigint, p_lease_token uuid) OWNER TO reflect_owner;
CREATE FUNCTION reflect.finetune_plan_v1(p_job_id bigint, p_lease_token uuid) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
  p reflect.model_versions;
  b reflect.model_versions;
BEGIN
  IF j.kind <> 'finetune' THEN
    RAISE EXCEPTION 'job % is a % job, not a fine-tune', j.id, j.kind USING ERRCODE = 'PR001';
  END IF;
  SELECT * INTO p FROM reflect.model_versions WHERE id = j.model_version_id;
  b := reflect._root_version(p.id);
  RETURN jsonb_build_object(
    'training_set_id', (j.payload ->> 'training_set_id')::integer,
    'parent', jsonb_build_object('id', p.id, 'name', p.name),
    'base', jsonb_build_object('id', b.id, 'name', b.name, 'gguf_path', b.gguf_path, 'sha256', b.sha256,
                               'backend', b.backend),
    'hyperparameters', coalesce(j.payload -> 'hyperparameters', reflect._finetune_hyperparameters()),
    'memory', reflect._training_memory_policy(j.id));
END
$$;
ALTER FUNCTION reflect.finetune_plan_v1(p_job_id bigint, p_lease_token uuid) OWNER TO reflect_owner;
CREATE FUNCTION reflect.finetune_when_ready_v1() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  o record;
  v_n integer := 0;
BEGIN
  FOR o IN
    SELECT r.submitted_by AS owner, count(*) AS new_corrections
    FROM reflect.feedback f
    JOIN reflect.requests r ON r.id = f.request_id
    WHERE f.correction_enc IS NOT NULL
      AND f.created_at > coalesce((SELECT max(t.created_at) FROM reflect.training_sets t
                                   WHERE t.owner = r.submitted_by), '-infinity')
    GROUP BY r.submitted_by
    HAVING count(*) >= reflect._setting_int('finetune_min_new_corrections')
  LOOP
    CONTINUE WHEN EXISTS (SELECT FROM reflect.jobs j WHERE j.kind = 'finetune' AND j.state IN ('queued', 'running')
                          AND j.payload ->> 'owner' = o.owner);
    BEGIN
      PERFORM reflect.request_finetune_v1(o.owner);
      v_n := v_n + 1;
    EXCEPTION WHEN SQLSTATE 'PR001' THEN
      RAISE NOTICE 'no training set for %: %', o.owner, SQLERRM;  -- nothing usable yet; try at the next run
    END;
  END LOOP;
  RETURN v_n;
END
$$;
ALTER FUNCTION reflect.finetune_when_ready_v1() OWNER TO reflect_owner;
CREATE FUNCTION reflect.fit_calibrator_v1(p_model_version text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_mv integer;
  v_names text[] := reflect.calibration_features_v2();
  tv jsonb[];
  ty boolean[];
  hv jsonb[];
  hy boolean[];
  tx double precision[];
  hx double precision[];
  v_labels integer;
  f record;
  old reflect.calibrators;
  anchor reflect.calibrators;
  v_prefix text := 'calibration_';
  v_new jsonb;
  v_old jsonb;
  v_keep boolean := false;
  v_id integer;
BEGIN
  SELECT id INTO v_mv FROM reflect.model_versions WHERE name = p_model_version;
  IF v_mv IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', p_model_version USING ERRCODE = 'PR003';
  END IF;
  -- The hidden-state probe's signal is a feature once the version has an active probe (pgreflect.meta.probe).
  IF EXISTS (SELECT FROM reflect.state_probes WHERE model_version_id = v_mv AND is_active) THEN
    v_names := v_names || 'probe'::text;
  END IF;
  SELECT count(*),
         array_agg(reflect._feature_values_of(l.request_id) ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 <> 0),
         array_agg(l.is_correct ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 <> 0),
         array_agg(reflect._feature_values_of(l.request_id) ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 = 0),
         array_agg(l.is_correct ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 = 0)
  INTO v_labels, tv, ty, hv, hy
  FROM reflect.labels l JOIN reflect.answers a ON a.request_id = l.request_id
  WHERE a.model_version_id = v_mv;
  SELECT * INTO anchor FROM reflect.calibrators
  WHERE model_version_id = v_mv AND heldout_metrics ->> 'source' = 'installed' AND features <@ v_names
    AND ('probe' = ANY (features)) = ('probe' = ANY (v_names))
  ORDER BY id DESC LIMIT 1;
  IF anchor.id IS NOT NULL THEN
    v_prefix := 'calibration_anchor_';
    v_names := anchor.features;
  END IF;
  IF v_labels < reflect._setting_int(v_prefix || 'min_labels') OR ty IS NULL
     OR (SELECT count(*) FILTER (WHERE y) FROM unnest(ty) y) < reflect._setting_int(v_prefix || 'min_per_class')
     OR (SELECT count(*) FILTER (WHERE NOT y) FROM unnest(ty) y) < reflect._setting_int(v_prefix || 'min_per_class') THEN
    RAISE NOTICE 'model version %: % labels, not enough to fit a calibrator', p_model_version, v_labels;
    RETURN NULL;
  END IF;
  tx := reflect._matrix(tv, v_names);
  hx := reflect._matrix(hv, v_names);
  IF anchor.id IS NULL THEN
    f := reflect._fit_logistic(tx, ty, reflect._setting_float('calibration_l2'));
  ELSE
    SELECT anchor.feature_means AS means, anchor.feature_stds AS stds, a.weights, a.iterations INTO f
    FROM reflect._fit_logistic_around_kinds(tx, ty, v_names, anchor.feature_means, anchor.feature_stds,
                                            anchor.weights, reflect._setting_float('calibration_anchor_l2'),
                                            reflect._setting_float('calibration_anchor_intercept_l2')) a;
  END IF;
  v_new := reflect._calibration_metrics(reflect._logistic_rows(hx, f.means, f.stds, f.weights), hy);
  SELECT * INTO old FROM reflect.calibrators WHERE model_version_id = v_mv AND is_active;
  IF old.id IS NOT NULL AND hy IS NOT NULL THEN
    v_old := reflect._calibration_metrics(
      reflect._logistic_rows(reflect._matrix(hv, old.features), old.feature_means, old.feature_stds, old.weights), hy);
    v_keep := (v_old ->> 'brier')::double precision < (v_new ->> 'brier')::double precision;
  END IF;
  IF NOT v_keep THEN
    UPDATE reflect.calibrators SET is_active = false WHERE model_version_id = v_mv AND is_active;
  END IF;
  INSERT INTO reflect.calibrators (model_version_id, method, features, feature_means, feature_stds, weights, n_train,
                                   n_heldout, heldout_metrics, labels_seen, is_active)
  VALUES (v_mv, 'logistic_l2', v_names, f.means, f.stds, f.weights, cardinality(ty),
          coalesce(cardinality(hy), 0),
          jsonb_build_object(
            'iterations', f.iterations, 'anchored_on', anchor.id,
            -- the kinds of question its labels asked: an anchored refit moves those (_fit_logistic_around_kinds)
            'train_labels_by_kind', reflect._labels_by_kind(tv),
            'heldout', v_new,
            'train', reflect._calibration_metrics(reflect._logistic_rows(tx, f.means, f.stds, f.weights), ty)
                     - 'accuracy_at_80' - 'mean_confidence')
          || CASE WHEN old.id IS NULL OR hy IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(
               'replaced', jsonb_build_object('calibrator_id', old.id, 'heldout', v_old, 'kept', v_keep,
                 'reason', CASE WHEN v_keep
                   THEN format('not activated: held-out Brier %s is worse than the active calibrator''s %s on the same %s answers',
                               round((v_new ->> 'brier')::numeric, 4), round((v_old ->> 'brier')::numeric, 4), cardinality(hy))
                   ELSE format('activated: held-out Brier %s against the replaced calibrator''s %s on the same %s answers',
                               round((v_new ->> 'brier')::numeric, 4), round((v_old ->> 'brier')::numeric, 4), cardinality(hy))
                   END)) END,
          v_labels, NOT v_keep)
  RETURNING id INTO v_id;
  IF v_keep THEN
    RAISE NOTICE 'model version %: refit % kept inactive, the active calibrator % calibrates the held-out answers better',
      p_model_version, v_id, old.id;
  END IF;
  RETURN v_id;
END
$$;
ALTER FUNCTION reflect.fit_calibrator_v1(p_model_version text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.gate_answers_v1(p_job_id bigint, p_lease_token uuid) RETURNS TABLE(candidate_request_id bigint, part text, reference text, candidate_state text, candidate_answer text, parent_state text, parent_answer text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
BEGIN
  RETURN QUERY
  SELECT g.candidate_request_id, g.part,
         coalesce(ri.reference, reflect._decrypt_or_null(t.completion_enc, t.key_id)),
         rc.state::text, reflect._decrypt_or_null(ac.answer_enc, ac.key_id),
         rp.state::text, reflect._decrypt_or_null(ap.answer_enc, ap.key_id)
  FROM reflect.gate_items g
  JOIN reflect.requests rc ON rc.id = g.candidate_request_id
  JOIN reflect.requests rp ON rp.id = g.parent_request_id
  LEFT JOIN reflect.answers ac ON ac.request_id = rc.id
  LEFT JOIN reflect.answers ap ON ap.request_id = rp.id
  LEFT JOIN reflect.retention_items ri ON ri.id = g.retention_item_id
  LEFT JOIN reflect.training_examples t
    ON t.training_set_id = (j.payload ->> 'training_set_id')::integer AND t.request_id = g.example_request_id
  WHERE g.job_id = j.id
  ORDER BY g.part, g.candidate_request_id;
END
$$;
ALTER FUNCTION reflect.gate_answers_v1(p_job_id bigint, p_lease_token uuid) OWNER TO reflect_owner;
CREATE FUNCTION reflect.gate_rephrase_v1(p_job_id bigint, p_lease_token uuid, p_instruction text, p_max_tokens integer) RETURNS TABLE(example_request_id bigint, state text, prompt text, rephrasing text, reference text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
  v_label text := format('gate-%s', p_job_id);
  v_params jsonb;
  ex record;
  v_id bigint;
BEGIN
  IF j.kind <> 'gate' THEN
    RAISE EXCEPTION 'job % is a % job, not a gate', j.id, j.kind USING ERRCODE = 'PR001';
  END IF;
  IF reflect._is_blank(p_instruction) THEN
    RAISE EXCEPTION 'a rewording instruction is needed' USING ERRCODE = 'PR001';
  END IF;
  IF coalesce(reflect._setting_text('gate_rephrase')::boolean, false)
     AND NOT EXISTS (SELECT FROM reflect.gate_items g WHERE g.job_id = j.id)
     AND NOT EXISTS (SELECT FROM reflect.eval_requests e WHERE e.run_label = v_label AND e.dataset = 'gate_rephrase') THEN
    v_params := reflect._normalize_params(jsonb_build_object('max_tokens', p_max_tokens, 'temperature', 0,
                                                             'memory', false, 'low_confidence', 'answer'));
    FOR ex IN
      SELECT t.request_id, t.key_id, t.prompt_enc
      FROM reflect.training_examples t
      WHERE t.training_set_id = (j.payload ->> 'training_set_id')::integer AND t.split <> 'heldout'
        AND t.source = 'correction'
        AND char_length(reflect._decrypt_or_null(t.prompt_enc, t.key_id)) <= reflect._setting_int('gate_rephrase_max_chars')
      ORDER BY t.request_id
    LOOP
      INSERT INTO reflect.requests (key_id, prompt_enc, system_prompt_enc, params, caller, submitted_by,
                                    model_version_id, max_attempts)
      VALUES (ex.key_id, ex.prompt_enc, reflect._encrypt(p_instruction, ex.key_id), v_params,
              format('pgreflect-gate-%s', j.id), session_user, (j.payload ->> 'parent_id')::integer,
              reflect._setting_int('max_attempts'))
      RETURNING id INTO v_id;
      INSERT INTO reflect.eval_requests (request_id, dataset, item_id, run_label)
      VALUES (v_id, 'gate_rephrase', ex.request_id::text, v_label);
    END LOOP;
  END IF;
  RETURN QUERY
  SELECT t.request_id, r.state::text, reflect._decrypt_or_null(t.prompt_enc, t.key_id),
         reflect._decrypt_or_null(a.answer_enc, a.key_id), reflect._decrypt_or_null(t.completion_enc, t.key_id)
  FROM reflect.eval_requests e
  JOIN reflect.requests r ON r.id = e.request_id
  LEFT JOIN reflect.answers a ON a.request_id = r.id
  JOIN reflect.training_examples t
    ON t.training_set_id = (j.payload ->> 'training_set_id')::integer AND t.request_id = e.item_id::bigint
  WHERE e.run_label = v_label AND e.dataset = 'gate_rephrase'
  ORDER BY t.request_id;
END
$$;
ALTER FUNCTION reflect.gate_rephrase_v1(p_job_id bigint, p_lease_token uuid, p_instruction text, p_max_tokens integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.gate_submit_v1(p_job_id bigint, p_lease_token uuid) RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT reflect.gate_submit_v2(p_job_id, p_lease_token, '[]'::jsonb)
$$;
ALTER FUNCTION reflect.gate_submit_v1(p_job_id bigint, p_lease_token uuid) OWNER TO reflect_owner;
CREATE FUNCTION reflect.gate_submit_v2(p_job_id bigint, p_lease_token uuid, p_rephrasings jsonb) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
  v_candidate integer := (j.payload ->> 'candidate_id')::integer;
  v_parent integer := (j.payload ->> 'parent_id')::integer;
  v_set integer := (j.payload ->> 'training_set_id')::integer;
  v_params jsonb := reflect._normalize_params(jsonb_build_object(
    'max_tokens', reflect._setting_int('gate_max_tokens'), 'temperature', 0, 'memory', false,
    'low_confidence', 'answer'));
  v_key text;
  v_n integer;
  e record;
  v_c bigint;
  v_p bigint;
BEGIN
  IF j.kind <> 'gate' THEN
    RAISE EXCEPTION 'job % is a % job, not a gate', j.id, j.kind USING ERRCODE = 'PR001';
  END IF;
  IF jsonb_typeof(p_rephrasings) IS DISTINCT FROM 'array'
     OR EXISTS (SELECT FROM jsonb_array_elements(p_rephrasings) x
                WHERE jsonb_typeof(x -> 'example_request_id') IS DISTINCT FROM 'number'
                   OR reflect._is_blank(x ->> 'prompt')) THEN
    RAISE EXCEPTION 'rephrasings must be an array of {"example_request_id": number, "prompt": non-blank text}'
      USING ERRCODE = 'PR001';
  END IF;
  IF EXISTS (SELECT FROM jsonb_array_elements(p_rephrasings) x
             WHERE NOT EXISTS (SELECT FROM reflect.training_examples t
                               WHERE t.training_set_id = v_set AND t.request_id = (x ->> 'example_request_id')::bigint
                                 AND t.split <> 'heldout' AND t.source = 'correction')) THEN
    RAISE EXCEPTION 'a rephrasing names no corrected prompt of training set %', v_set USING ERRCODE = 'PR001';
  END IF;
  SELECT count(*) INTO v_n FROM reflect.gate_items WHERE job_id = j.id;
  IF v_n > 0 THEN
    RETURN v_n;
  END IF;
  v_key := reflect._current_key_id();
  FOR e IN
    SELECT CASE WHEN t.split = 'heldout' THEN 'b' ELSE 'a' END AS part, t.request_id AS example, NULL::integer AS item,
           t.key_id, t.prompt_enc, t.system_prompt_enc, v_params AS params
    FROM reflect.training_examples t
    WHERE t.training_set_id = v_set AND (t.split = 'heldout' OR t.source = 'correction')
    UNION ALL
    SELECT 'r', t.request_id, NULL, t.key_id, reflect._encrypt(x.prompt, t.key_id), t.system_prompt_enc, v_params
    FROM jsonb_to_recordset(p_rephrasings) x(example_request_id bigint, prompt text)
    JOIN reflect.training_examples t ON t.training_set_id = v_set AND t.request_id = x.example_request_id
    UNION ALL
    SELECT 'c', NULL, ri.id, v_key, reflect._encrypt(ri.prompt, v_key), reflect._encrypt(ri.system_prompt, v_key),
           v_params || jsonb_build_object('max_tokens', ri.max_tokens)
    FROM (SELECT * FROM reflect.retention_items ORDER BY id LIMIT reflect._setting_int('gate_retention_size')) ri
    ORDER BY 1, 2, 3
  LOOP
    WITH ins AS (
      INSERT INTO reflect.requests (key_id, prompt_enc, system_prompt_enc, params, caller, submitted_by,
                                    model_version_id, max_attempts)
      SELECT e.key_id, e.prompt_enc, e.system_prompt_enc, e.params, format('pgreflect-gate-%s', j.id), session_user,
             v, reflect._setting_int('max_attempts')
      FROM unnest(ARRAY[v_candidate, v_parent]) v
      RETURNING id, model_version_id
    )
    SELECT max(id) FILTER (WHERE model_version_id = v_candidate), max(id) FILTER (WHERE model_version_id = v_parent)
    INTO v_c, v_p FROM ins;
    INSERT INTO reflect.gate_items (job_id, part, example_request_id, retention_item_id, candidate_request_id,
                                    parent_request_id)
    VALUES (j.id, e.part, e.example, e.item, v_c, v_p);
    -- Evaluation traffic: never curated into training data.
    INSERT INTO reflect.eval_requests (request_id, dataset, item_id, run_label)
    VALUES (v_c, 'gate_' || e.part, coalesce(e.example::text, e.item::text), format('gate-%s', j.id)),
           (v_p, 'gate_' || e.part, coalesce(e.example::text, e.item::text), format('gate-%s', j.id));
  END LOOP;
  SELECT count(*) INTO v_n FROM reflect.gate_items WHERE job_id = j.id;
  RETURN v_n;
END
$$;
ALTER FUNCTION reflect.gate_submit_v2(p_job_id bigint, p_lease_token uuid, p_rephrasings jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect.heartbeat_followups_v1(p_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) RETURNS SETOF bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  RETURN QUERY SELECT * FROM reflect.heartbeat_jobs_v1(p_ids, p_lease_tokens, p_lease_seconds);
END
$$;
ALTER FUNCTION reflect.heartbeat_followups_v1(p_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.heartbeat_jobs_v1(p_job_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) RETURNS SETOF bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_lease interval := reflect._check_lease_seconds(p_lease_seconds);
BEGIN
  IF cardinality(p_job_ids) IS DISTINCT FROM cardinality(p_lease_tokens) THEN
    RAISE EXCEPTION 'job ids and lease tokens must have the same length' USING ERRCODE = 'PR001';
  END IF;
  RETURN QUERY
  UPDATE reflect.jobs j SET lease_expires_at = clock_timestamp() + v_lease
  FROM unnest(p_job_ids, p_lease_tokens) AS h(id, token)
  WHERE j.id = h.id AND j.state = 'running' AND j.lease_token = h.token
  RETURNING j.id;
END
$$;
ALTER FUNCTION reflect.heartbeat_jobs_v1(p_job_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.heartbeat_v1(p_request_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) RETURNS SETOF bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_lease interval := reflect._check_lease_seconds(p_lease_seconds);
BEGIN
  IF cardinality(p_request_ids) IS DISTINCT FROM cardinality(p_lease_tokens) THEN
    RAISE EXCEPTION 'request ids and lease tokens must have the same length' USING ERRCODE = 'PR001';
  END IF;
  RETURN QUERY
  UPDATE reflect.requests r
  SET lease_expires_at = clock_timestamp() + v_lease
  FROM unnest(p_request_ids, p_lease_tokens) AS h(id, token)
  WHERE r.id = h.id AND r.state = 'running' AND r.lease_token = h.token
  RETURNING r.id;
END
$$;
ALTER FUNCTION reflect.heartbeat_v1(p_request_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.install_calibrator_v1(p_model_version text, p_doc jsonb) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  mv reflect.model_versions;
  v_sha text;
  v_features text[];
  v_known text[] := ARRAY(SELECT jsonb_object_keys(reflect._feature_values(0, 0, 0, '{}')))
                    || reflect.optional_features_v1();
  v_digest text := encode(sha256(convert_to(p_doc::text, 'UTF8')), 'hex');
  v_id integer;
BEGIN
  SELECT * INTO mv FROM reflect.model_versions WHERE name = p_model_version;
  IF mv.id IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', p_model_version USING ERRCODE = 'PR003';
  END IF;
  IF p_doc ->> 'format' IS DISTINCT FROM 'pgreflect-calibrator-1' OR p_doc ->> 'method' IS DISTINCT FROM 'logistic_l2'
     OR jsonb_typeof(p_doc -> 'features') <> 'array' THEN
    RAISE EXCEPTION 'not a pgreflect calibrator document (format pgreflect-calibrator-1, method logistic_l2)'
      USING ERRCODE = 'PR001';
  END IF;
  SELECT coalesce(b.sha256, mv.sha256) INTO v_sha FROM reflect.model_versions b WHERE b.id = mv.base_model_version_id;
  v_sha := coalesce(v_sha, mv.sha256);
  IF p_doc ->> 'gguf_sha256' IS DISTINCT FROM v_sha OR p_doc ->> 'adapter_sha256' IS DISTINCT FROM mv.adapter_sha256 THEN
    RAISE EXCEPTION 'this calibrator was fitted on other model bytes (GGUF %, adapter %) than version "%" (GGUF %, adapter %)',
      p_doc ->> 'gguf_sha256', coalesce(p_doc ->> 'adapter_sha256', 'none'), p_model_version, v_sha,
      coalesce(mv.adapter_sha256, 'none') USING ERRCODE = 'PR001';
  END IF;
  v_features := ARRAY(SELECT jsonb_array_elements_text(p_doc -> 'features'));
  IF NOT v_features <@ v_known THEN
    RAISE EXCEPTION 'unknown calibrator features: %', ARRAY(SELECT unnest(v_features) EXCEPT SELECT unnest(v_known))
      USING ERRCODE = 'PR001';
  END IF;
  SELECT id INTO v_id FROM reflect.calibrators
  WHERE model_version_id = mv.id AND heldout_metrics ->> 'document_sha256' = v_digest;
  IF v_id IS NOT NULL THEN
    RETURN v_id;
  END IF;
  INSERT INTO reflect.calibrators (model_version_id, method, features, feature_means, feature_stds, weights, n_train,
                                   n_heldout, heldout_metrics, labels_seen, is_active)
  VALUES (mv.id, 'logistic_l2', v_features,
          ARRAY(SELECT jsonb_array_elements_text(p_doc -> 'feature_means')::double precision),
          ARRAY(SELECT jsonb_array_elements_text(p_doc -> 'feature_stds')::double precision),
          ARRAY(SELECT jsonb_array_elements_text(p_doc -> 'weights')::double precision),
          (p_doc ->> 'n_train')::integer, (p_doc ->> 'n_heldout')::integer,
          coalesce(p_doc -> 'heldout_metrics', '{}') || jsonb_build_object('source', 'installed',
            'document_sha256', v_digest, 'fitted_at', p_doc -> 'fitted_at', 'fit', p_doc -> 'fit'),
          0, NOT EXISTS (SELECT FROM reflect.calibrators WHERE model_version_id = mv.id AND is_active))
  RETURNING id INTO v_id;
  RETURN v_id;
EXCEPTION WHEN check_violation OR invalid_text_representation THEN
  RAISE EXCEPTION 'malformed calibrator document: %', SQLERRM USING ERRCODE = 'PR001';
END
$$;
ALTER FUNCTION reflect.install_calibrator_v1(p_model_version text, p_doc jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect.install_probe_v1(p_model_version text, p_weights public.vector, p_bias double precision, p_n_train integer, p_metrics jsonb, p_activate boolean) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public', 'pg_temp'
    AS $$
DECLARE
  v_mv integer;
  v_id integer;
BEGIN
  SELECT id INTO v_mv FROM reflect.model_versions WHERE name = p_model_version;
  IF v_mv IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', p_model_version USING ERRCODE = 'PR003';
  END IF;
  IF p_weights IS NULL OR p_bias IS NULL OR p_bias = 'NaN' OR p_n_train IS NULL OR p_n_train < 1 THEN
    RAISE EXCEPTION 'a probe needs weights, a finite bias and its training size' USING ERRCODE = 'PR001';
  END IF;
  IF p_activate THEN
    UPDATE reflect.state_probes SET is_active = false WHERE model_version_id = v_mv AND is_active;
  END IF;
  INSERT INTO reflect.state_probes (model_version_id, method, weights, bias, n_train, metrics, is_active)
  VALUES (v_mv, 'logistic_l2', p_weights, p_bias, p_n_train, coalesce(p_metrics, '{}'), coalesce(p_activate, false))
  RETURNING id INTO v_id;
  RETURN v_id;
END
$$;
ALTER FUNCTION reflect.install_probe_v1(p_model_version text, p_weights public.vector, p_bias double precision, p_n_train integer, p_metrics jsonb, p_activate boolean) OWNER TO reflect_owner;
CREATE FUNCTION reflect.job_history_v1(p_job_id bigint, p_lease_token uuid) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
  r reflect.requests;
BEGIN
  SELECT * INTO r FROM reflect.requests WHERE id = j.request_id;
  RETURN reflect._decrypt(r.history_enc, r.key_id)::jsonb;
END;
$$;
ALTER FUNCTION reflect.job_history_v1(p_job_id bigint, p_lease_token uuid) OWNER TO reflect_owner;
CREATE FUNCTION reflect.job_input_v1(p_job_id bigint, p_lease_token uuid) RETURNS TABLE(prompt text, system_prompt text, answer text, params jsonb)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
  r reflect.requests;
  a reflect.answers;
  v_prompt record;
  v_system record;
  v_answer record;
BEGIN
  SELECT * INTO r FROM reflect.requests WHERE id = j.request_id;
  IF r.id IS NULL THEN
    RAISE EXCEPTION 'job % works on no request', p_job_id USING ERRCODE = 'PR001';
  END IF;
  SELECT * INTO a FROM reflect.answers WHERE request_id = r.id;
  SELECT * INTO v_prompt FROM reflect._decrypt_safe(r.prompt_enc, r.key_id);
  SELECT * INTO v_system FROM reflect._decrypt_safe(r.system_prompt_enc, r.key_id);
  SELECT * INTO v_answer FROM reflect._decrypt_safe(a.answer_enc, a.key_id);
  IF NOT (v_prompt.ok AND v_system.ok AND v_answer.ok) THEN
    UPDATE reflect.jobs
    SET state = 'failed', lease_token = NULL, lease_expires_at = NULL, finished_at = clock_timestamp(),
        last_error = format('cannot decrypt request %s with the key registered for key id %s', r.id, r.key_id)
    WHERE id = j.id;
    RETURN;
  END IF;
  RETURN QUERY SELECT v_prompt.plain, v_system.plain, v_answer.plain, r.params;
END
$$;
ALTER FUNCTION reflect.job_input_v1(p_job_id bigint, p_lease_token uuid) OWNER TO reflect_owner;
CREATE FUNCTION reflect.key_usage_v1() RETURNS TABLE(key_id text, table_name name, n_rows bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  t record;
BEGIN
  FOR t IN SELECT * FROM reflect._encrypted_columns() LOOP
    RETURN QUERY EXECUTE format('SELECT key_id, %L::name, count(*) FROM reflect.%I GROUP BY key_id ORDER BY key_id',
                                t.table_name, t.table_name);
  END LOOP;
END
$$;
ALTER FUNCTION reflect.key_usage_v1() OWNER TO reflect_owner;
CREATE FUNCTION reflect.live_worker_count_v1(p_model_version text DEFAULT NULL::text) RETURNS integer
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT count(*)::integer
  FROM reflect.workers w
  JOIN reflect.model_versions mv
    ON mv.id = ANY (w.model_version_ids)
   AND (mv.name = p_model_version OR (p_model_version IS NULL AND mv.is_active))
  WHERE w.stopped_at IS NULL
    AND w.last_seen_at > now() - make_interval(secs => reflect._setting_int('worker_live_s'))
$$;
ALTER FUNCTION reflect.live_worker_count_v1(p_model_version text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.model_versions_to_serve_v1(p_names text[] DEFAULT NULL::text[]) RETURNS TABLE(id integer, name text, gguf_path text, sha256 text, n_ctx integer, is_active boolean)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT * FROM reflect.model_versions_to_serve_v2('llama', p_names)
$$;
ALTER FUNCTION reflect.model_versions_to_serve_v1(p_names text[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.model_versions_to_serve_v2(p_backend text, p_names text[] DEFAULT NULL::text[]) RETURNS TABLE(id integer, name text, gguf_path text, sha256 text, n_ctx integer, is_active boolean)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
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
ALTER FUNCTION reflect.model_versions_to_serve_v2(p_backend text, p_names text[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.model_versions_to_serve_v3(p_backend text, p_names text[] DEFAULT NULL::text[]) RETURNS TABLE(id integer, name text, gguf_path text, sha256 text, n_ctx integer, is_active boolean, base_model_version_id integer, adapter_path text, adapter_sha256 text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
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
ALTER FUNCTION reflect.model_versions_to_serve_v3(p_backend text, p_names text[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.model_versions_to_serve_v4(p_backend text, p_names text[] DEFAULT NULL::text[]) RETURNS TABLE(id integer, name text, gguf_path text, sha256 text, n_ctx integer, is_active boolean, base_model_version_id integer, adapter_path text, adapter_sha256 text, base_url text, remote_model text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT s.*, (SELECT mv.base_url FROM reflect.model_versions mv WHERE mv.id = s.id),
         (SELECT mv.remote_model FROM reflect.model_versions mv WHERE mv.id = s.id)
  FROM reflect.model_versions_to_serve_v3(p_backend, p_names) s  -- in its order: bases first
$$;
ALTER FUNCTION reflect.model_versions_to_serve_v4(p_backend text, p_names text[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.optional_features_v1() RETURNS text[]
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT ARRAY['p_answer', 'agreement', 'critique_verdict', 'option_max_prob', 'option_margin', 'option_entropy',
               'kind_choice', 'kind_number', 'kind_long', 'probe']
$$;
ALTER FUNCTION reflect.optional_features_v1() OWNER TO reflect_owner;
CREATE FUNCTION reflect.probe_training_set_v1(p_model_version text) RETURNS TABLE(request_id bigint, state real[], is_correct boolean, dataset text, heldout boolean)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public', 'pg_temp'
    AS $$
#variable_conflict use_column
BEGIN
  IF NOT EXISTS (SELECT FROM reflect.model_versions WHERE name = p_model_version) THEN
    RAISE EXCEPTION 'unknown model version "%"', p_model_version USING ERRCODE = 'PR003';
  END IF;
  RETURN QUERY
  SELECT s.request_id, s.state::real[], l.is_correct, er.dataset,
         abs(hashtext(s.request_id::text)) % 5 = 0  -- the calibrator fit's held-out rule
  FROM reflect.answer_states s
  JOIN reflect.model_versions mv ON mv.id = s.model_version_id AND mv.name = p_model_version
  JOIN reflect.labels l ON l.request_id = s.request_id
  LEFT JOIN reflect.eval_requests er ON er.request_id = s.request_id
  ORDER BY s.request_id;
END
$$;
ALTER FUNCTION reflect.probe_training_set_v1(p_model_version text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.purge_answer_states_v1() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_n integer;
BEGIN
  DELETE FROM reflect.answer_states s
  WHERE s.created_at < now() - make_interval(days => reflect._setting_int('answer_state_retention_days'))
    AND NOT EXISTS (SELECT FROM reflect.labels l WHERE l.request_id = s.request_id);
  GET DIAGNOSTICS v_n = ROW_COUNT;
  RETURN v_n;
END
$$;
ALTER FUNCTION reflect.purge_answer_states_v1() OWNER TO reflect_owner;
CREATE FUNCTION reflect.rate_critique_v1(p_request_id bigint, p_rating integer) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  IF p_rating IS NULL OR p_rating NOT BETWEEN 1 AND 5 THEN
    RAISE EXCEPTION 'rating must be between 1 and 5' USING ERRCODE = 'PR001';
  END IF;
  UPDATE reflect.critiques c SET rating = p_rating, rated_by = session_user
  FROM reflect.requests r
  WHERE c.request_id = p_request_id AND r.id = c.request_id
    AND (r.submitted_by = session_user OR pg_has_role(session_user, 'reflect_owner', 'MEMBER')
         OR pg_has_role(session_user, 'reflect_reviewer', 'MEMBER'));
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no critique for request % (or it is not yours)', p_request_id USING ERRCODE = 'PR005';
  END IF;
END
$$;
ALTER FUNCTION reflect.rate_critique_v1(p_request_id bigint, p_rating integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.reap_expired_v1() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_n integer;
BEGIN
  WITH expired AS (
    SELECT id FROM reflect.requests
    WHERE state = 'running' AND lease_expires_at < clock_timestamp()
    ORDER BY id
    FOR UPDATE SKIP LOCKED
  ), moved AS (
    UPDATE reflect.requests r
    SET state = CASE WHEN r.attempts < r.max_attempts THEN 'queued' ELSE 'failed' END::reflect.request_state,
        lease_token = NULL,
        lease_expires_at = NULL,
        run_after = clock_timestamp(),
        finished_at = CASE WHEN r.attempts < r.max_attempts THEN NULL ELSE clock_timestamp() END,
        last_error = CASE WHEN r.attempts < r.max_attempts
                          THEN format('lease of worker %s expired on attempt %s', r.worker_id, r.attempts)
                          ELSE format('gave up after %s attempts: lease of worker %s expired',
                                      r.attempts, r.worker_id) END
    FROM expired
    WHERE r.id = expired.id
    RETURNING r.id, r.state, r.attempts, r.worker_id
  ), logged AS (
    INSERT INTO reflect.request_events (request_id, event, attempt, worker_id, detail)
    SELECT id, 'lease_expired', attempts, worker_id, state::text FROM moved
  ), cleared AS (
    DELETE FROM reflect.partial_answers p USING moved WHERE p.request_id = moved.id
  )
  SELECT count(pg_notify(CASE WHEN state = 'queued' THEN 'needs_inference' ELSE 'request_done' END,
                         id::text))
  INTO v_n FROM moved;
  RETURN v_n + reflect._reap_expired_jobs();
END
$$;
ALTER FUNCTION reflect.reap_expired_v1() OWNER TO reflect_owner;
CREATE FUNCTION reflect.recall_v1(p_request_id bigint, p_lease_token uuid, p_model text, p_embedding public.vector, p_k integer DEFAULT NULL::integer) RETURNS TABLE(memory_request_id bigint, kind text, distance double precision, prompt text, answer text, correction text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
  r reflect.requests;
  v_k integer;
  v_max double precision;
  v_keys text[] := reflect._loaded_key_ids();
  v_ids bigint[];
  v_kinds text[];
  v_feedback bigint[];
  v_dists double precision[];
  v_used integer;
BEGIN
  r := reflect._take_lease(p_request_id, p_lease_token);
  IF p_embedding IS NULL OR public.vector_dims(p_embedding) <> 384 THEN
    RAISE EXCEPTION 'embedding must have 384 dimensions' USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.prompt_embeddings (request_id, model, embedding)
  VALUES (r.id, p_model, p_embedding)
  ON CONFLICT (request_id) DO UPDATE SET model = excluded.model, embedding = excluded.embedding;
  DELETE FROM reflect.answer_memories WHERE request_id = r.id;  -- a re-claim starts over
  IF coalesce((r.params ->> 'memory')::boolean, true) IS FALSE THEN
    RETURN;
  END IF;
  v_k := greatest(coalesce(p_k, (r.params ->> 'memory_k')::integer, reflect._setting_int('memory_k_default')), 0);
  v_max := reflect._memory_max_distance(r.params);
  -- transaction-local; a SET clause on the function would need the setting known when it is created
  PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
  -- the k nearest (at least the nearest, whose distance is recorded even when k is 0)
  SELECT array_agg(n.request_id ORDER BY n.dist), array_agg(n.kind ORDER BY n.dist),
         array_agg(n.feedback_id ORDER BY n.dist), array_agg(n.dist ORDER BY n.dist)
  INTO v_ids, v_kinds, v_feedback, v_dists
  FROM (SELECT m.request_id, m.kind, m.feedback_id, (m.embedding OPERATOR(public.<=>) p_embedding) AS dist
        FROM reflect.memories m
        WHERE m.request_id <> r.id AND m.owner = ANY (reflect._memory_owners(r.submitted_by))
        ORDER BY m.embedding OPERATOR(public.<=>) p_embedding
        LIMIT greatest(v_k, 1)) n;
  RETURN QUERY
  WITH nearest AS (
    SELECT u.request_id, u.kind, u.feedback_id, u.dist
    FROM unnest(v_ids, v_kinds, v_feedback, v_dists) WITH ORDINALITY AS u(request_id, kind, feedback_id, dist, i)
    -- only those close enough to be about the same kind of question
    -- (memory_max_distance; why 0.38: bench/results/memory-distance.md; tuned: reflect.tune_memory_v1)
    WHERE u.i <= v_k AND u.dist <= v_max
  ), texts AS (
    SELECT n.request_id, n.kind, n.dist, p.plain AS prompt, an.plain AS answer, co.plain AS correction,
           p.ok AND an.ok AND co.ok AS ok
    FROM nearest n
    JOIN reflect.requests mr ON mr.id = n.request_id AND mr.key_id = ANY (v_keys)
    LEFT JOIN reflect.answers a ON a.request_id = n.request_id
    LEFT JOIN reflect.feedback f ON f.id = n.feedback_id
    CROSS JOIN LATERAL reflect._decrypt_safe(mr.prompt_enc, mr.key_id) p
    CROSS JOIN LATERAL reflect._decrypt_safe(a.answer_enc, a.key_id) an
    CROSS JOIN LATERAL reflect._decrypt_safe(f.correction_enc, f.key_id) co
  ), used AS (
    INSERT INTO reflect.answer_memories (request_id, memory_request_id, rank, distance)
    SELECT r.id, t.request_id, row_number() OVER (ORDER BY t.dist), t.dist FROM texts t WHERE t.ok
    RETURNING memory_request_id
  )
  SELECT t.request_id, t.kind, t.dist, t.prompt, t.answer, t.correction
  FROM texts t
  JOIN used u ON u.memory_request_id = t.request_id
  ORDER BY t.dist;
  SELECT count(*) INTO v_used FROM reflect.answer_memories am WHERE am.request_id = r.id;
  INSERT INTO reflect.memory_lookups (request_id, nearest_distance, max_distance, k, explored, used)
  VALUES (r.id, v_dists[1], v_max, v_k, coalesce((r.params ->> 'memory_explore')::boolean, false), v_used)
  ON CONFLICT (request_id) DO UPDATE
  SET nearest_distance = excluded.nearest_distance, max_distance = excluded.max_distance, k = excluded.k,
      explored = excluded.explored, used = excluded.used, looked_up_at = clock_timestamp();
END
$$;
ALTER FUNCTION reflect.recall_v1(p_request_id bigint, p_lease_token uuid, p_model text, p_embedding public.vector, p_k integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.record_candidate_v1(p_request_id bigint, p_lease_token uuid, p_answer text, p_token_logprobs real[], p_signals jsonb, p_evidence_request_ids bigint[] DEFAULT '{}'::bigint[]) RETURNS TABLE(n integer, confidence double precision, reanswer boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
  r reflect.requests;
  v_mean double precision;
  v_min double precision;
  v_tokens integer := coalesce(cardinality(p_token_logprobs), 0);
  c record;
  v_n integer;
BEGIN
  r := reflect._take_lease(p_request_id, p_lease_token);
  IF p_answer IS NULL OR p_signals IS NULL OR jsonb_typeof(p_signals) <> 'object' THEN
    RAISE EXCEPTION 'a candidate needs an answer and a signals object' USING ERRCODE = 'PR001';
  END IF;
  SELECT avg(lp), min(lp) INTO v_mean, v_min FROM unnest(p_token_logprobs) lp;
  SELECT * INTO c FROM reflect._confidence(r.model_version_id, reflect._feature_values(v_mean, v_min, v_tokens, p_signals),
                                           p_signals, exp(v_mean));
  SELECT coalesce(max(ac.n), 0) + 1 INTO v_n FROM reflect.answer_candidates ac WHERE ac.request_id = r.id;
  INSERT INTO reflect.answer_candidates (request_id, n, key_id, answer_enc, completion_tokens, logprob_mean,
                                         logprob_min, signals, confidence, evidence_request_ids)
  VALUES (r.id, v_n, r.key_id, reflect._encrypt(p_answer, r.key_id), v_tokens, v_mean, v_min, p_signals,
          c.confidence, coalesce(p_evidence_request_ids, '{}'));
  RETURN QUERY SELECT v_n, c.confidence,
    v_n = 1 AND reflect._low_confidence_action(r.params, c.confidence) = 'reanswer'
      AND EXISTS (SELECT FROM reflect.memories m
                 WHERE m.request_id <> r.id AND m.owner = ANY (reflect._memory_owners(r.submitted_by)));
END
$$;
ALTER FUNCTION reflect.record_candidate_v1(p_request_id bigint, p_lease_token uuid, p_answer text, p_token_logprobs real[], p_signals jsonb, p_evidence_request_ids bigint[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.record_training_memory_v1(p_job_id bigint, p_lease_token uuid, p_estimate_mb double precision, p_available_mb double precision, p_reserve_mb double precision, p_gradient_checkpointing boolean, p_serving_paused boolean, p_decision text, p_detail text, p_peak_rss_mb double precision DEFAULT NULL::double precision) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
BEGIN
  IF j.kind <> 'finetune' THEN
    RAISE EXCEPTION 'job % is a % job, not a fine-tune', j.id, j.kind USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.training_memory AS m (job_id, attempt, estimate_mb, available_mb, reserve_mb,
                                            gradient_checkpointing, serving_paused, decision, detail, peak_rss_mb)
  VALUES (j.id, j.attempts, p_estimate_mb, p_available_mb, p_reserve_mb, p_gradient_checkpointing,
          p_serving_paused, p_decision, left(p_detail, 2000), p_peak_rss_mb)
  ON CONFLICT (job_id, attempt) DO UPDATE
    SET estimate_mb = excluded.estimate_mb, available_mb = excluded.available_mb, reserve_mb = excluded.reserve_mb,
        gradient_checkpointing = excluded.gradient_checkpointing, serving_paused = excluded.serving_paused,
        decision = excluded.decision, detail = excluded.detail,
        peak_rss_mb = coalesce(excluded.peak_rss_mb, m.peak_rss_mb);
END
$$;
ALTER FUNCTION reflect.record_training_memory_v1(p_job_id bigint, p_lease_token uuid, p_estimate_mb double precision, p_available_mb double precision, p_reserve_mb double precision, p_gradient_checkpointing boolean, p_serving_paused boolean, p_decision text, p_detail text, p_peak_rss_mb double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect.record_training_progress_v1(p_job_id bigint, p_lease_token uuid, p_step integer, p_total_steps integer, p_epoch double precision, p_loss double precision, p_tokens_per_s double precision, p_eta_s double precision, p_rss_mb double precision) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
BEGIN
  INSERT INTO reflect.training_progress (job_id, step, total_steps, epoch, loss, tokens_per_s, eta_s, rss_mb)
  VALUES (j.id, p_step, p_total_steps, p_epoch, p_loss, p_tokens_per_s, p_eta_s, p_rss_mb)
  ON CONFLICT (job_id, step) DO UPDATE
    SET total_steps = excluded.total_steps, epoch = excluded.epoch, loss = excluded.loss,
        tokens_per_s = excluded.tokens_per_s, eta_s = excluded.eta_s, rss_mb = excluded.rss_mb,
        recorded_at = clock_timestamp();
END
$$;
ALTER FUNCTION reflect.record_training_progress_v1(p_job_id bigint, p_lease_token uuid, p_step integer, p_total_steps integer, p_epoch double precision, p_loss double precision, p_tokens_per_s double precision, p_eta_s double precision, p_rss_mb double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect.refit_calibrators_v1() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v record;
  v_n integer := 0;
BEGIN
  FOR v IN
    -- labels_seen of the latest fit, active or not: a refit kept inactive (worse) waits for new labels too
    SELECT mv.name, count(l.request_id) AS labels,
           (SELECT max(c.labels_seen) FROM reflect.calibrators c WHERE c.model_version_id = mv.id) AS labels_seen
    FROM reflect.model_versions mv
    JOIN reflect.answers a ON a.model_version_id = mv.id
    JOIN reflect.labels l ON l.request_id = a.request_id
    GROUP BY mv.id, mv.name
  LOOP
    IF (v.labels_seen IS NULL AND v.labels >= reflect._setting_int('calibration_min_labels'))
       OR v.labels - v.labels_seen >= reflect._setting_int('calibration_refit_new_labels') THEN
      IF reflect.fit_calibrator_v1(v.name) IS NOT NULL THEN
        v_n := v_n + 1;
      END IF;
    END IF;
  END LOOP;
  RETURN v_n;
END
$$;
ALTER FUNCTION reflect.refit_calibrators_v1() OWNER TO reflect_owner;
CREATE FUNCTION reflect.register_eval_items_v1(p_dataset text, p_item_ids text[], p_splits text[]) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
  v_n integer;
  v_conflict text;
BEGIN
  IF p_dataset IS NULL OR p_dataset !~ '^[a-z0-9_]{1,40}$' THEN
    RAISE EXCEPTION 'dataset name must match ^[a-z0-9_]{1,40}$' USING ERRCODE = 'PR001';
  END IF;
  IF cardinality(p_item_ids) IS DISTINCT FROM cardinality(p_splits)
     OR EXISTS (SELECT FROM unnest(p_splits) s WHERE s IS NULL OR s NOT IN ('train', 'heldout')) THEN
    RAISE EXCEPTION 'one split (train or heldout) per item id' USING ERRCODE = 'PR001';
  END IF;
  SELECT i.id INTO v_conflict FROM unnest(p_item_ids, p_splits) AS i(id, split)
  JOIN reflect.eval_items e ON e.dataset = p_dataset AND e.item_id = i.id AND e.split <> i.split LIMIT 1;
  IF v_conflict IS NOT NULL THEN
    RAISE EXCEPTION 'item % of % is already stored in the other split', v_conflict, p_dataset USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.eval_items (dataset, item_id, split)
  SELECT p_dataset, id, split FROM unnest(p_item_ids, p_splits) AS i(id, split)
  ON CONFLICT DO NOTHING;
  GET DIAGNOSTICS v_n = ROW_COUNT;
  RETURN v_n;
END
$_$;
ALTER FUNCTION reflect.register_eval_items_v1(p_dataset text, p_item_ids text[], p_splits text[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.register_model_version_v1(p_name text, p_gguf_path text, p_sha256 text, p_source text, p_n_ctx integer DEFAULT 4096, p_parent text DEFAULT NULL::text, p_activate boolean DEFAULT false) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  RETURN reflect.register_model_version_v2(p_name, p_gguf_path, p_sha256, p_source, p_n_ctx, p_parent, p_activate,
                                           'llama');
END
$$;
ALTER FUNCTION reflect.register_model_version_v1(p_name text, p_gguf_path text, p_sha256 text, p_source text, p_n_ctx integer, p_parent text, p_activate boolean) OWNER TO reflect_owner;
CREATE FUNCTION reflect.register_model_version_v2(p_name text, p_gguf_path text, p_sha256 text, p_source text, p_n_ctx integer DEFAULT 4096, p_parent text DEFAULT NULL::text, p_activate boolean DEFAULT false, p_backend text DEFAULT 'llama'::text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;
ALTER FUNCTION reflect.register_model_version_v2(p_name text, p_gguf_path text, p_sha256 text, p_source text, p_n_ctx integer, p_parent text, p_activate boolean, p_backend text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.register_remote_model_version_v1(p_name text, p_base_url text, p_remote_model text, p_n_ctx integer DEFAULT 4096, p_parent text DEFAULT NULL::text, p_activate boolean DEFAULT false) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;
ALTER FUNCTION reflect.register_remote_model_version_v1(p_name text, p_base_url text, p_remote_model text, p_n_ctx integer, p_parent text, p_activate boolean) OWNER TO reflect_owner;
CREATE FUNCTION reflect.release_v1(p_request_id bigint, p_lease_token uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests;
BEGIN
  r := reflect._take_lease(p_request_id, p_lease_token);
  DELETE FROM reflect.partial_answers WHERE request_id = r.id;
  UPDATE reflect.requests
  SET state = 'queued', lease_token = NULL, lease_expires_at = NULL, run_after = clock_timestamp(),
      attempts = greatest(r.attempts - 1, 0)
  WHERE id = r.id;
  INSERT INTO reflect.request_events (request_id, event, attempt, worker_id)
  VALUES (r.id, 'released', r.attempts, r.worker_id);
  PERFORM pg_notify('needs_inference', r.id::text);
END
$$;
ALTER FUNCTION reflect.release_v1(p_request_id bigint, p_lease_token uuid) OWNER TO reflect_owner;
CREATE FUNCTION reflect.report_partial_v1(p_request_id bigint, p_lease_token uuid, p_text text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests := reflect._take_lease(p_request_id, p_lease_token);
BEGIN
  IF NOT coalesce((r.params ->> 'stream')::boolean, false)
     OR coalesce(r.params ->> 'low_confidence', '') NOT IN ('answer', 'flag') THEN
    RAISE EXCEPTION 'request % publishes no partial answer (it needs params.stream and a low-confidence action '
                    'of answer or flag)', r.id USING ERRCODE = 'PR001';
  END IF;
  IF p_text IS NULL THEN
    RAISE EXCEPTION 'a partial answer must not be NULL' USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.partial_answers (request_id, attempt, key_id, text_enc)
  VALUES (r.id, r.attempts, r.key_id, reflect._encrypt(p_text, r.key_id))
  ON CONFLICT (request_id) DO UPDATE
    SET attempt = EXCLUDED.attempt, key_id = EXCLUDED.key_id, text_enc = EXCLUDED.text_enc,
        updated_at = clock_timestamp();
  PERFORM pg_notify('request_progress', r.id::text);
END
$$;
ALTER FUNCTION reflect.report_partial_v1(p_request_id bigint, p_lease_token uuid, p_text text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.request_finetune_v1(p_owner name, p_model_version text DEFAULT NULL::text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_remote text;
  v_set integer;
  s reflect.training_sets;
BEGIN
  SELECT name INTO v_remote FROM reflect.model_versions
  WHERE backend = 'openai' AND (name = p_model_version OR (p_model_version IS NULL AND is_active));
  IF v_remote IS NOT NULL THEN
    RAISE EXCEPTION 'model version "%" is served by an OpenAI-compatible server: only a version whose GGUF is here '
                    'can be fine-tuned', v_remote USING ERRCODE = 'PR001';
  END IF;
  v_set := reflect.curate_training_set_v1(p_owner, p_model_version);
  SELECT * INTO s FROM reflect.training_sets WHERE id = v_set;
  -- work_id names the job's folder of checkpoints on the workers (job ids repeat across databases)
  RETURN reflect._enqueue_job('finetune', jsonb_build_object('training_set_id', s.id, 'owner', s.owner,
                                                             'hyperparameters', reflect._finetune_hyperparameters(),
                                                             'work_id', gen_random_uuid()),
                              NULL, s.base_model_version_id, 0::smallint, 3);
END
$$;
ALTER FUNCTION reflect.request_finetune_v1(p_owner name, p_model_version text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.request_history_v1(p_request_id bigint, p_lease_token uuid) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests := reflect._take_lease(p_request_id, p_lease_token);
BEGIN
  RETURN reflect._decrypt(r.history_enc, r.key_id)::jsonb;
END;
$$;
ALTER FUNCTION reflect.request_history_v1(p_request_id bigint, p_lease_token uuid) OWNER TO reflect_owner;
CREATE FUNCTION reflect.reveal_request_v1(p_request_id bigint, p_purpose text, p_redacted boolean) RETURNS TABLE(request_id bigint, submitted_by name, caller text, state text, prompt text, system_prompt text, answer text, corrections text[], critique text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
  r reflect.requests;
BEGIN
  IF p_purpose IS NULL OR reflect._is_blank(p_purpose) OR length(btrim(p_purpose)) NOT BETWEEN 3 AND 500 THEN
    RAISE EXCEPTION 'say why you need to see this text (3 to 500 characters); it is recorded in the audit trail'
      USING ERRCODE = 'PR001';
  END IF;
  IF p_redacted IS NULL THEN
    RAISE EXCEPTION 'redacted must be true or false' USING ERRCODE = 'PR001';
  END IF;
  SELECT * INTO r FROM reflect.requests WHERE id = p_request_id;
  IF r.id IS NULL THEN
    RAISE EXCEPTION 'no request %', p_request_id USING ERRCODE = 'PR005';
  END IF;
  INSERT INTO reflect.decryption_audit (by_login, request_id, what, purpose, redacted)
  VALUES (session_user, r.id,
          ARRAY['prompt', 'system_prompt', 'answer', 'corrections', 'critique'], btrim(p_purpose), p_redacted);
  RETURN QUERY
  SELECT r.id, r.submitted_by, r.caller, r.state::text,
         reflect._decrypt(r.prompt_enc, r.key_id), reflect._decrypt(r.system_prompt_enc, r.key_id),
         (SELECT reflect._decrypt(a.answer_enc, a.key_id) FROM reflect.answers a WHERE a.request_id = r.id),
         ARRAY(SELECT reflect._decrypt(f.correction_enc, f.key_id) FROM reflect.feedback f
               WHERE f.request_id = r.id AND f.correction_enc IS NOT NULL ORDER BY f.id),
         (SELECT reflect._decrypt(c.critique_enc, c.key_id) FROM reflect.critiques c WHERE c.request_id = r.id);
END
$$;
ALTER FUNCTION reflect.reveal_request_v1(p_request_id bigint, p_purpose text, p_redacted boolean) OWNER TO reflect_owner;
CREATE FUNCTION reflect.revert_tuning_v1(p_change_id bigint) RETURNS double precision
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  c reflect.tuning_changes;
BEGIN
  UPDATE reflect.tuning_changes SET reverted_at = clock_timestamp(), reverted_by = session_user
  WHERE id = p_change_id AND reverted_at IS NULL
  RETURNING * INTO c;
  IF c.id IS NULL THEN
    RAISE EXCEPTION 'no tuning change % in force', p_change_id USING ERRCODE = 'PR003';
  END IF;
  RETURN coalesce(reflect._tuned(c.model_version_id, c.knob), reflect._knob_default(c.knob));
END
$$;
ALTER FUNCTION reflect.revert_tuning_v1(p_change_id bigint) OWNER TO reflect_owner;
CREATE FUNCTION reflect.review_v1(p_request_id bigint, p_is_correct boolean, p_correction text DEFAULT NULL::text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests;
BEGIN
  SELECT * INTO r FROM reflect.requests WHERE id = p_request_id;
  IF r.id IS NULL THEN
    RAISE EXCEPTION 'no request %', p_request_id USING ERRCODE = 'PR005';
  END IF;
  IF p_is_correct IS NULL THEN
    RAISE EXCEPTION 'a review says whether the answer is correct' USING ERRCODE = 'PR001';
  END IF;
  IF p_is_correct AND p_correction IS NOT NULL THEN
    RAISE EXCEPTION 'a correct answer takes no correction' USING ERRCODE = 'PR001';
  END IF;
  RETURN reflect._record_feedback(r, p_is_correct, NULL, p_correction, 'review');
END
$$;
ALTER FUNCTION reflect.review_v1(p_request_id bigint, p_is_correct boolean, p_correction text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.revoke_api_key_v1(p_name_or_id text) RETURNS text
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
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
ALTER FUNCTION reflect.revoke_api_key_v1(p_name_or_id text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.revoke_person_v1(p_name text) RETURNS name
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
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
ALTER FUNCTION reflect.revoke_person_v1(p_name text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.rollback_model_version_v1(p_reason text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  c reflect.model_versions;
BEGIN
  SELECT * INTO c FROM reflect.model_versions WHERE is_active FOR UPDATE;
  IF c.id IS NULL THEN
    RAISE EXCEPTION 'no active model version' USING ERRCODE = 'PR003';
  END IF;
  IF c.parent_id IS NULL THEN
    RAISE EXCEPTION 'the active version "%" has no parent to roll back to', c.name USING ERRCODE = 'PR001';
  END IF;
  PERFORM reflect._decide(c.id, 'rollback', coalesce(nullif(p_reason, ''), 'rolled back by ' || session_user),
                          '{}'::jsonb, '{}'::jsonb);
  RETURN (SELECT name FROM reflect.model_versions WHERE id = c.parent_id);
END
$$;
ALTER FUNCTION reflect.rollback_model_version_v1(p_reason text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.rotate_key_v1(p_from_key_id text, p_batch integer DEFAULT 500) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
  v_to text := reflect._current_key_id();
  v_left integer := p_batch;
  v_n integer;
  v_total integer := 0;
  t record;
BEGIN
  PERFORM reflect._check_key_id(p_from_key_id);
  IF p_from_key_id = v_to THEN
    RAISE EXCEPTION 'the key to rotate away from (%) is the current key', p_from_key_id USING ERRCODE = 'PR001';
  END IF;
  IF reflect._key(p_from_key_id) IS NULL THEN
    RAISE EXCEPTION 'no encryption key loaded for key id %', p_from_key_id USING ERRCODE = 'PR004';
  END IF;
  IF p_batch IS NULL OR p_batch < 1 OR p_batch > 100000 THEN
    RAISE EXCEPTION 'batch must be between 1 and 100000' USING ERRCODE = 'PR001';
  END IF;
  FOR t IN SELECT * FROM reflect._encrypted_columns() LOOP
    EXIT WHEN v_left <= 0;
    EXECUTE format(
      'WITH batch AS (SELECT ctid FROM reflect.%1$I WHERE key_id = $1 LIMIT $3 FOR UPDATE SKIP LOCKED), '
      'moved AS (UPDATE reflect.%1$I t SET %2$s, key_id = $2 FROM batch WHERE t.ctid = batch.ctid RETURNING t.*) '
      '%3$s SELECT count(*) FROM moved',
      t.table_name,
      (SELECT string_agg(format('%1$I = reflect._encrypt(reflect._decrypt(t.%1$I, $1), $2)', col), ', ')
       FROM unnest(t.column_names) col),
      CASE WHEN t.table_name = 'requests'
           THEN ', logged AS (INSERT INTO reflect.request_events (request_id, event, attempt, detail) '
                'SELECT id, ''key_rotated'', attempts, $1 || '' -> '' || $2 FROM moved)'
           ELSE '' END)
    INTO v_n
    USING p_from_key_id, v_to, v_left;
    v_left := v_left - v_n;
    v_total := v_total + v_n;
  END LOOP;
  RETURN v_total;
END
$_$;
ALTER FUNCTION reflect.rotate_key_v1(p_from_key_id text, p_batch integer) OWNER TO reflect_owner;
CREATE FUNCTION reflect.set_person_v1(p_name text, p_role text) RETURNS TABLE(login name, password text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;
ALTER FUNCTION reflect.set_person_v1(p_name text, p_role text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.set_probe_signals_v1(p_model_version text, p_request_ids bigint[], p_values double precision[]) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_n integer;
BEGIN
  IF cardinality(p_request_ids) IS DISTINCT FROM cardinality(p_values)
     OR EXISTS (SELECT FROM unnest(p_values) v WHERE v IS NULL OR v < 0 OR v > 1) THEN
    RAISE EXCEPTION 'one probability in [0, 1] per request id' USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.answer_signals (request_id, name, value)
  SELECT a.request_id, 'probe', t.v
  FROM unnest(p_request_ids, p_values) AS t(id, v)
  JOIN reflect.answers a ON a.request_id = t.id
  JOIN reflect.model_versions mv ON mv.id = a.model_version_id AND mv.name = p_model_version
  ON CONFLICT (request_id, name) DO UPDATE SET value = excluded.value, computed_at = now();
  GET DIAGNOSTICS v_n = ROW_COUNT;
  RETURN v_n;
END
$$;
ALTER FUNCTION reflect.set_probe_signals_v1(p_model_version text, p_request_ids bigint[], p_values double precision[]) OWNER TO reflect_owner;
CREATE FUNCTION reflect.share_memories_v1(p_reader name, p_share boolean DEFAULT true) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  IF p_reader IS NULL OR NOT EXISTS (SELECT FROM pg_roles WHERE rolname = p_reader)
     OR NOT pg_has_role(p_reader, 'reflect_app', 'MEMBER') THEN
    RAISE EXCEPTION 'no app login named "%"', left(p_reader, 63) USING ERRCODE = 'PR001';
  END IF;
  IF p_reader = session_user THEN
    RAISE EXCEPTION 'an app always reads its own memories' USING ERRCODE = 'PR001';
  END IF;
  IF coalesce(p_share, true) THEN
    INSERT INTO reflect.memory_shares (owner, reader) VALUES (session_user, p_reader) ON CONFLICT DO NOTHING;
  ELSE
    DELETE FROM reflect.memory_shares WHERE owner = session_user AND reader = p_reader;
  END IF;
  RETURN coalesce(p_share, true);
END
$$;
ALTER FUNCTION reflect.share_memories_v1(p_reader name, p_share boolean) OWNER TO reflect_owner;
CREATE FUNCTION reflect.signal_orientations_v1() RETURNS TABLE(signal text, higher_is_right boolean)
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  VALUES ('logprob_mean', true), ('logprob_min', true), ('logprob_norm', true), ('p_true', true),
         ('p_answer', true), ('rule_failed', false), ('agreement', true), ('critique_verdict', true),
         ('option_max_prob', true), ('option_margin', true), ('option_entropy', false), ('probe', true)
$$;
ALTER FUNCTION reflect.signal_orientations_v1() OWNER TO reflect_owner;
CREATE FUNCTION reflect.snooze_job_v1(p_job_id bigint, p_lease_token uuid, p_seconds double precision, p_checkpoint jsonb DEFAULT NULL::jsonb) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
BEGIN
  IF p_seconds IS NULL OR p_seconds NOT BETWEEN 0 AND 3600 THEN
    RAISE EXCEPTION 'snooze seconds must be between 0 and 3600' USING ERRCODE = 'PR001';
  END IF;
  UPDATE reflect.jobs
  SET state = 'queued', lease_token = NULL, lease_expires_at = NULL, attempts = greatest(j.attempts - 1, 0),
      run_after = clock_timestamp() + make_interval(secs => p_seconds),
      checkpoint = coalesce(p_checkpoint, j.checkpoint)
  WHERE id = j.id;
END
$$;
ALTER FUNCTION reflect.snooze_job_v1(p_job_id bigint, p_lease_token uuid, p_seconds double precision, p_checkpoint jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect.store_answer_state_v1(p_request_id bigint, p_lease_token uuid, p_state public.vector) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests := reflect._take_lease(p_request_id, p_lease_token);
BEGIN
  IF p_state IS NULL THEN
    RAISE EXCEPTION 'no hidden state given' USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.answer_states (request_id, model_version_id, state)
  VALUES (r.id, r.model_version_id, p_state)
  ON CONFLICT (request_id) DO UPDATE
    SET model_version_id = EXCLUDED.model_version_id, state = EXCLUDED.state, created_at = now();
END;
$$;
ALTER FUNCTION reflect.store_answer_state_v1(p_request_id bigint, p_lease_token uuid, p_state public.vector) OWNER TO reflect_owner;
CREATE FUNCTION reflect.store_answer_tokens_v1(p_request_id bigint, p_lease_token uuid, p_tokens jsonb) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  r reflect.requests := reflect._take_lease(p_request_id, p_lease_token);
BEGIN
  IF p_tokens IS NULL OR jsonb_typeof(p_tokens) <> 'array' THEN
    RAISE EXCEPTION 'tokens must be a JSON array' USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.answer_tokens (request_id, key_id, tokens_enc)
  VALUES (r.id, r.key_id, reflect._encrypt(p_tokens::text, r.key_id))
  ON CONFLICT (request_id) DO UPDATE
    SET key_id = EXCLUDED.key_id, tokens_enc = EXCLUDED.tokens_enc, created_at = now();
END;
$$;
ALTER FUNCTION reflect.store_answer_tokens_v1(p_request_id bigint, p_lease_token uuid, p_tokens jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect.submit_v1(p_prompt text, p_system_prompt text DEFAULT NULL::text, p_params jsonb DEFAULT NULL::jsonb, p_idempotency_key text DEFAULT NULL::text, p_caller text DEFAULT NULL::text, p_model_version text DEFAULT NULL::text) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT reflect.submit_v2(p_prompt, p_system_prompt, p_params, p_idempotency_key, p_caller, p_model_version, NULL)
$$;
ALTER FUNCTION reflect.submit_v1(p_prompt text, p_system_prompt text, p_params jsonb, p_idempotency_key text, p_caller text, p_model_version text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.submit_v2(p_prompt text, p_system_prompt text DEFAULT NULL::text, p_params jsonb DEFAULT NULL::jsonb, p_idempotency_key text DEFAULT NULL::text, p_caller text DEFAULT NULL::text, p_model_version text DEFAULT NULL::text, p_history jsonb DEFAULT NULL::jsonb) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_max integer := reflect._setting_int('max_prompt_chars');
  v_key_id text;
  v_model integer;
  v_params jsonb;
  v_tuned double precision;
  v_id bigint;
  v_limit integer;
BEGIN
  IF jsonb_typeof(p_history) = 'array' AND jsonb_array_length(p_history) = 0 THEN
    p_history := NULL;
  END IF;
  IF p_history IS NOT NULL AND reflect._check_history(p_history) > v_max THEN
    RAISE EXCEPTION 'history is longer than % characters in all', v_max USING ERRCODE = 'PR001',
      HINT = 'the limit is the max_prompt_chars setting';
  END IF;
  IF p_prompt IS NULL OR reflect._is_blank(p_prompt) THEN
    RAISE EXCEPTION 'prompt must not be empty' USING ERRCODE = 'PR001';
  END IF;
  IF length(p_prompt) > v_max THEN
    RAISE EXCEPTION 'prompt is % characters long; the limit is %', length(p_prompt), v_max
      USING ERRCODE = 'PR001', HINT = 'the limit is the max_prompt_chars setting';
  END IF;
  IF length(p_system_prompt) > v_max THEN
    RAISE EXCEPTION 'system prompt is % characters long; the limit is %', length(p_system_prompt), v_max
      USING ERRCODE = 'PR001';
  END IF;
  IF p_idempotency_key IS NOT NULL AND length(p_idempotency_key) NOT BETWEEN 1 AND 200 THEN
    RAISE EXCEPTION 'idempotency key must be 1 to 200 characters' USING ERRCODE = 'PR001';
  END IF;
  IF p_caller IS NOT NULL AND length(p_caller) NOT BETWEEN 1 AND 200 THEN
    RAISE EXCEPTION 'caller must be 1 to 200 characters' USING ERRCODE = 'PR001';
  END IF;
  v_params := reflect._normalize_params(p_params);
  IF p_history IS NOT NULL THEN
    -- Set here, never by the caller (an unknown parameter to _normalize_params): the worker reads the turns only
    -- for the requests that have them.
    v_params := v_params || jsonb_build_object('history_turns', jsonb_array_length(p_history));
  END IF;
  IF p_model_version IS NULL THEN
    v_model := reflect._default_version();  -- the active version, or its canary (770_improve.sql)
    IF v_model IS NULL THEN
      RAISE EXCEPTION 'no active model version' USING ERRCODE = 'PR003',
        HINT = 'register one: pgreflect models install-default, or pgreflect models register';
    END IF;
  ELSE
    SELECT id INTO v_model FROM reflect.model_versions WHERE name = p_model_version;
    IF v_model IS NULL THEN
      RAISE EXCEPTION 'unknown model version "%"', left(p_model_version, 100) USING ERRCODE = 'PR003';
    END IF;
  END IF;
  IF p_idempotency_key IS NOT NULL THEN
    SELECT id INTO v_id FROM reflect.requests
    WHERE submitted_by = session_user AND idempotency_key = p_idempotency_key;
    IF v_id IS NOT NULL THEN
      RETURN v_id;
    END IF;
  END IF;
  -- Back-pressure: counting stops at the limit, so the check costs at most max_queued_per_version index entries.
  v_limit := reflect._setting_int('max_queued_per_version');
  IF v_limit > 0 AND (SELECT count(*) FROM (SELECT FROM reflect.requests
                                            WHERE state = 'queued' AND model_version_id = v_model LIMIT v_limit) q)
                     >= v_limit THEN
    RAISE EXCEPTION 'model version "%" already has % requests waiting, its limit: retry later',
      (SELECT name FROM reflect.model_versions WHERE id = v_model), v_limit
      USING ERRCODE = 'PR007', HINT = 'the limit is the max_queued_per_version setting (0: none)';
  END IF;
  -- A threshold tuned for this version (780_tuning.sql) replaces the global default, not a request's own.
  IF NOT coalesce(p_params ? 'confidence_threshold', false) THEN
    v_tuned := reflect._tuned(v_model, 'confidence_threshold');
    IF v_tuned IS NOT NULL THEN
      v_params := v_params || jsonb_build_object('confidence_threshold', v_tuned);
    END IF;
  END IF;
  -- A request that leaves memory to pgreflect gets the version's tuned cutoff and k, or, for a random
  -- memory_explore_share of them, a random policy whose labels later tune them (reflect.tune_memory_v1).
  IF NOT coalesce(p_params ?| ARRAY['memory', 'memory_k', 'memory_max_distance'], false) THEN
    IF random() < reflect._setting_float('memory_explore_share') THEN
      v_params := v_params || jsonb_build_object(
        'memory_k', floor(random() * (reflect._setting_int('memory_k_max') + 1))::integer,
        'memory_max_distance', reflect._setting_float('memory_explore_max_distance'), 'memory_explore', true);
    ELSE
      v_params := v_params || jsonb_strip_nulls(jsonb_build_object(
        'memory_k', round(reflect._tuned(v_model, 'memory_k'))::integer,
        'memory_max_distance', reflect._tuned(v_model, 'memory_max_distance')));
    END IF;
  END IF;
  v_key_id := reflect._current_key_id();
  INSERT INTO reflect.requests
    (key_id, prompt_enc, system_prompt_enc, history_enc, params, idempotency_key, caller, submitted_by,
     model_version_id, max_attempts)
  VALUES
    (v_key_id, reflect._encrypt(p_prompt, v_key_id), reflect._encrypt(p_system_prompt, v_key_id),
     reflect._encrypt(p_history::text, v_key_id), v_params,
     p_idempotency_key, p_caller, session_user, v_model, reflect._setting_int('max_attempts'))
  ON CONFLICT (submitted_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING id INTO v_id;
  IF v_id IS NULL THEN  -- a concurrent insert with the same idempotency key committed first
    SELECT id INTO v_id FROM reflect.requests
    WHERE submitted_by = session_user AND idempotency_key = p_idempotency_key;
  END IF;
  RETURN v_id;
END
$$;
ALTER FUNCTION reflect.submit_v2(p_prompt text, p_system_prompt text, p_params jsonb, p_idempotency_key text, p_caller text, p_model_version text, p_history jsonb) OWNER TO reflect_owner;
CREATE FUNCTION reflect.tag_eval_request_v1(p_request_id bigint, p_dataset text, p_item_id text, p_run_label text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  IF NOT EXISTS (SELECT FROM reflect.requests WHERE id = p_request_id AND submitted_by = session_user) THEN
    RAISE EXCEPTION 'no request % (or it is not yours)', p_request_id USING ERRCODE = 'PR005';
  END IF;
  IF p_run_label IS NULL OR length(p_run_label) NOT BETWEEN 1 AND 100 THEN
    RAISE EXCEPTION 'run label must be 1 to 100 characters' USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.eval_requests (request_id, dataset, item_id, run_label)
  VALUES (p_request_id, p_dataset, p_item_id, p_run_label)
  ON CONFLICT (request_id) DO UPDATE SET dataset = excluded.dataset, item_id = excluded.item_id,
                                         run_label = excluded.run_label;
END
$$;
ALTER FUNCTION reflect.tag_eval_request_v1(p_request_id bigint, p_dataset text, p_item_id text, p_run_label text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.tune_confidence_threshold_v1(p_model_version text, p_target_accuracy double precision DEFAULT NULL::double precision) RETURNS double precision
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_model integer;
  v_target double precision := coalesce(p_target_accuracy, reflect._setting_float('tuning_target_accuracy'));
  v_min integer := reflect._setting_int('tuning_min_labels');
  v_n integer;
  v_cut bigint;
  v_t double precision;
  v_fit record;
  v_check record;
  v_current double precision;
BEGIN
  SELECT id INTO v_model FROM reflect.model_versions WHERE name = p_model_version FOR UPDATE;
  IF v_model IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', left(p_model_version, 100) USING ERRCODE = 'PR003';
  END IF;
  IF v_target IS NULL OR v_target <= 0 OR v_target >= 1 THEN
    RAISE EXCEPTION 'target accuracy must be between 0 and 1' USING ERRCODE = 'PR001';
  END IF;
  DROP TABLE IF EXISTS pg_temp._tune;
  CREATE TEMP TABLE _tune ON COMMIT DROP AS
  SELECT r.id AS request_id, a.confidence::double precision AS confidence, l.is_correct
  FROM reflect.labels l
  JOIN reflect.requests r ON r.id = l.request_id
  JOIN reflect.answers a ON a.request_id = r.id
  WHERE r.model_version_id = v_model AND a.confidence IS NOT NULL;
  SELECT count(*) INTO v_n FROM _tune;
  IF v_n < v_min THEN
    RAISE EXCEPTION 'version % has % labelled answers; tuning needs %', p_model_version, v_n, v_min
      USING ERRCODE = 'PR001', HINT = 'the tuning_min_labels setting';
  END IF;
  SELECT request_id INTO v_cut FROM _tune ORDER BY request_id OFFSET (v_n * 7 / 10) LIMIT 1;
  SELECT t.confidence AS threshold, t.covered, t.accuracy INTO v_fit
  FROM (
    SELECT confidence, count(*) OVER w AS covered, avg(is_correct::int) OVER w AS accuracy
    FROM _tune WHERE request_id < v_cut
    WINDOW w AS (ORDER BY confidence DESC RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
  ) t
  WHERE t.covered >= 10 AND t.accuracy >= v_target
  ORDER BY t.confidence ASC LIMIT 1;
  IF v_fit.threshold IS NULL THEN
    RAISE EXCEPTION 'no confidence threshold reaches % accuracy on the labelled answers of %', v_target,
      p_model_version USING ERRCODE = 'PR001', HINT = 'lower the target (tuning_target_accuracy) or label more answers';
  END IF;
  v_t := round(v_fit.threshold::numeric, 4);
  SELECT count(*) AS n, avg((confidence >= v_t)::int) AS coverage,
         avg(is_correct::int) FILTER (WHERE confidence >= v_t) AS accuracy, avg(is_correct::int) AS accuracy_all
  INTO v_check FROM _tune WHERE request_id >= v_cut;
  v_current := coalesce(reflect._tuned(v_model, 'confidence_threshold'),
                        reflect._setting_float('confidence_threshold_default'));
  IF abs(v_t - v_current) < 0.01 THEN
    RETURN v_current;
  END IF;
  INSERT INTO reflect.tuning_changes (model_version_id, knob, old_value, new_value, reason, evidence, decided_by)
  VALUES (v_model, 'confidence_threshold', v_current, v_t,
          format('lowest threshold reaching %s accuracy on %s labelled answers; on the %s newer ones it lets %s%% through at %s accuracy (all: %s)',
                 v_target, v_n - v_check.n, v_check.n, round(100 * v_check.coverage::numeric),
                 coalesce(round(v_check.accuracy::numeric, 3)::text, 'n/a'), round(v_check.accuracy_all::numeric, 3)),
          jsonb_build_object('labels', v_n, 'fit_labels', v_n - v_check.n, 'check_labels', v_check.n,
                             'label_request_ids', jsonb_build_array((SELECT min(request_id) FROM _tune),
                                                                    (SELECT max(request_id) FROM _tune)),
                             'target_accuracy', v_target, 'fit_coverage', v_fit.covered::float8 / (v_n - v_check.n),
                             'fit_accuracy', v_fit.accuracy, 'expected_coverage', v_check.coverage,
                             'expected_accuracy', v_check.accuracy, 'accuracy_without_threshold', v_check.accuracy_all),
          session_user);
  RETURN v_t;
END
$$;
ALTER FUNCTION reflect.tune_confidence_threshold_v1(p_model_version text, p_target_accuracy double precision) OWNER TO reflect_owner;
CREATE FUNCTION reflect.tune_memory_v1(p_model_version text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_model integer;
  v_reach double precision := reflect._setting_float('memory_explore_max_distance');
  v_kmax integer := reflect._setting_int('memory_k_max');
  v_n integer;
  v_cut bigint;
  v_c0 double precision;
  v_k0 integer;
  v_new record;
  v_old record;
  v_k record;
  v_k_new integer;
  v_evidence jsonb;
  v_changed boolean := false;
  v_reason text;
BEGIN
  SELECT id INTO v_model FROM reflect.model_versions WHERE name = p_model_version FOR UPDATE;
  IF v_model IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', left(p_model_version, 100) USING ERRCODE = 'PR003';
  END IF;
  DROP TABLE IF EXISTS pg_temp._explored;
  CREATE TEMP TABLE _explored ON COMMIT DROP AS
  SELECT r.id AS request_id, ml.nearest_distance AS d, ml.k AS drawn_k, ml.used, l.is_correct::int AS y,
         CASE WHEN ml.used > 0 THEN (v_kmax + 1)::float8 / v_kmax ELSE v_kmax + 1 END AS w
  FROM reflect.labels l
  JOIN reflect.requests r ON r.id = l.request_id
  JOIN reflect.memory_lookups ml ON ml.request_id = r.id
  WHERE r.model_version_id = v_model AND ml.explored AND ml.nearest_distance <= v_reach;
  SELECT count(*) INTO v_n FROM _explored;
  IF v_n < reflect._setting_int('memory_tuning_min_labels') THEN
    RAISE EXCEPTION 'version % has % labelled explored answers with a memory in reach; tuning memory needs %',
      p_model_version, v_n, reflect._setting_int('memory_tuning_min_labels')
      USING ERRCODE = 'PR001', HINT = 'the memory_tuning_min_labels and memory_explore_share settings';
  END IF;
  SELECT request_id INTO v_cut FROM _explored ORDER BY request_id OFFSET (v_n * 7 / 10) LIMIT 1;
  v_c0 := round(coalesce(reflect._tuned(v_model, 'memory_max_distance'),
                         reflect._setting_float('memory_max_distance'))::numeric, 4)::float8;
  v_k0 := round(coalesce(reflect._tuned(v_model, 'memory_k'), reflect._setting_float('memory_k_default')))::integer;
  DROP TABLE IF EXISTS pg_temp._cutoffs;
  CREATE TEMP TABLE _cutoffs ON COMMIT DROP AS
  SELECT p.c,
         count(*) FILTER (WHERE e.request_id < v_cut) AS n_fit,
         sum(e.w * e.y) FILTER (WHERE e.request_id < v_cut) / sum(e.w) FILTER (WHERE e.request_id < v_cut) AS v_fit,
         count(*) FILTER (WHERE e.request_id >= v_cut) AS n_check,
         sum(e.w * e.y) FILTER (WHERE e.request_id >= v_cut) / sum(e.w) FILTER (WHERE e.request_id >= v_cut) AS v_check
  FROM (SELECT round((g * 0.05)::numeric, 4)::float8 AS c FROM generate_series(0, floor(v_reach / 0.05 + 1e-9)::int) g
        UNION SELECT v_c0) p
  JOIN _explored e ON (e.d <= p.c AND e.used > 0) OR (e.d > p.c AND e.used = 0)
  GROUP BY p.c;
  SELECT * INTO v_new FROM _cutoffs WHERE n_fit >= 10 ORDER BY v_fit DESC, c LIMIT 1;
  SELECT * INTO v_old FROM _cutoffs WHERE c = v_c0;
  IF v_new.c IS NULL THEN
    RAISE EXCEPTION 'no memory cutoff has 10 matching labelled answers among the older % of version %',
      v_n * 7 / 10, p_model_version USING ERRCODE = 'PR001';
  END IF;
  -- k: the most accurate drawn k on the older answers within the chosen cutoff that used memories
  SELECT drawn_k AS k, count(*) AS n, avg(y) AS accuracy INTO v_k
  FROM _explored WHERE request_id < v_cut AND d <= v_new.c AND used > 0
  GROUP BY drawn_k HAVING count(*) >= 10 ORDER BY avg(y) DESC, drawn_k LIMIT 1;
  v_k_new := coalesce(v_k.k, v_k0);
  v_evidence := jsonb_build_object(
    'labels', v_n, 'fit_labels', (SELECT count(*) FROM _explored WHERE request_id < v_cut),
    'check_labels', (SELECT count(*) FROM _explored WHERE request_id >= v_cut),
    'label_request_ids', jsonb_build_array((SELECT min(request_id) FROM _explored), (SELECT max(request_id) FROM _explored)),
    'reach', v_reach,
    'chosen', jsonb_build_object('max_distance', v_new.c, 'k', v_k_new, 'fit_accuracy', v_new.v_fit,
                                 'fit_n', v_new.n_fit, 'expected_accuracy', v_new.v_check, 'check_n', v_new.n_check,
                                 'k_fit_accuracy', v_k.accuracy, 'k_fit_n', v_k.n),
    'in_force', jsonb_build_object('max_distance', v_c0, 'k', v_k0, 'fit_accuracy', v_old.v_fit, 'fit_n', v_old.n_fit,
                                   'check_accuracy', v_old.v_check, 'check_n', v_old.n_check),
    'cutoffs', (SELECT jsonb_agg(jsonb_build_object('max_distance', c, 'fit_accuracy', round(v_fit::numeric, 4),
                                                    'fit_n', n_fit) ORDER BY c) FROM _cutoffs),
    'ks', (SELECT jsonb_agg(jsonb_build_object('k', drawn_k, 'fit_accuracy', round(a::numeric, 4), 'fit_n', n) ORDER BY drawn_k)
           FROM (SELECT drawn_k, avg(y) AS a, count(*) AS n FROM _explored
                 WHERE request_id < v_cut AND d <= v_new.c AND used > 0 GROUP BY drawn_k) ks));
  IF v_new.v_check IS NOT NULL AND v_old.v_check IS NOT NULL AND v_new.v_check < v_old.v_check THEN
    RAISE NOTICE 'memory of %: the newer labels do not confirm cutoff % (% vs % in force); kept',
      p_model_version, v_new.c, round(v_new.v_check::numeric, 3), round(v_old.v_check::numeric, 3);
    RETURN jsonb_build_object('max_distance', v_c0, 'k', v_k0, 'changed', false, 'evidence', v_evidence);
  END IF;
  v_reason := format('on %s older labelled explored answers, memory within cutoff %s was right %s of the time '
                     '(weighted; cutoff in force %s: %s), best with k = %s; on the %s newer ones: %s vs %s',
                     v_evidence ->> 'fit_labels', v_new.c, round(v_new.v_fit::numeric, 3), v_c0,
                     coalesce(round(v_old.v_fit::numeric, 3)::text, 'n/a'), v_k_new, v_evidence ->> 'check_labels',
                     coalesce(round(v_new.v_check::numeric, 3)::text, 'n/a'),
                     coalesce(round(v_old.v_check::numeric, 3)::text, 'n/a'));
  IF abs(v_new.c - v_c0) >= 0.005 THEN
    INSERT INTO reflect.tuning_changes (model_version_id, knob, old_value, new_value, reason, evidence, decided_by)
    VALUES (v_model, 'memory_max_distance', v_c0, v_new.c, v_reason, v_evidence, session_user);
    v_changed := true;
  END IF;
  IF v_new.c > 0 AND v_k_new <> v_k0 THEN
    INSERT INTO reflect.tuning_changes (model_version_id, knob, old_value, new_value, reason, evidence, decided_by)
    VALUES (v_model, 'memory_k', v_k0, v_k_new, v_reason, v_evidence, session_user);
    v_changed := true;
  END IF;
  RETURN jsonb_build_object('max_distance', v_new.c, 'k', CASE WHEN v_new.c > 0 THEN v_k_new ELSE v_k0 END,
                            'changed', v_changed, 'evidence', v_evidence);
END
$$;
ALTER FUNCTION reflect.tune_memory_v1(p_model_version text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.tune_when_ready_v1() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v record;
  v_before bigint := (SELECT count(*) FROM reflect.tuning_changes);
BEGIN
  FOR v IN
    SELECT mv.name
    FROM reflect.model_versions mv
    WHERE (SELECT count(*) FROM reflect.labels l JOIN reflect.requests r ON r.id = l.request_id
           WHERE r.model_version_id = mv.id
             AND l.created_at > coalesce((SELECT max(decided_at) FROM reflect.tuning_changes t
                                          WHERE t.model_version_id = mv.id AND t.knob = 'confidence_threshold'),
                                         '-infinity'))
          >= reflect._setting_int('tuning_min_labels')
  LOOP
    BEGIN
      PERFORM reflect.tune_confidence_threshold_v1(v.name);
    EXCEPTION WHEN SQLSTATE 'PR001' THEN
      RAISE NOTICE 'threshold of % not tuned: %', v.name, SQLERRM;
    END;
  END LOOP;
  FOR v IN
    SELECT mv.name
    FROM reflect.model_versions mv
    WHERE (SELECT count(*) FROM reflect.labels l JOIN reflect.memory_lookups ml ON ml.request_id = l.request_id
           JOIN reflect.requests r ON r.id = l.request_id
           WHERE r.model_version_id = mv.id AND ml.explored
             AND l.created_at > coalesce((SELECT max(decided_at) FROM reflect.tuning_changes t
                                          WHERE t.model_version_id = mv.id AND t.knob LIKE 'memory%'), '-infinity'))
          >= reflect._setting_int('memory_tuning_min_labels')
  LOOP
    BEGIN
      PERFORM reflect.tune_memory_v1(v.name);
    EXCEPTION WHEN SQLSTATE 'PR001' THEN
      RAISE NOTICE 'memory of % not tuned: %', v.name, SQLERRM;
    END;
  END LOOP;
  RETURN (SELECT count(*) FROM reflect.tuning_changes) - v_before;
END
$$;
ALTER FUNCTION reflect.tune_when_ready_v1() OWNER TO reflect_owner;
CREATE FUNCTION reflect.use_key_v1(p_key_id text, p_key text, p_current boolean DEFAULT true) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_verifier text;
  v_known text;
  v_sampled integer;
  v_readable integer;
BEGIN
  PERFORM reflect._check_key_id(p_key_id);
  IF p_key IS NULL OR length(p_key) < 32 THEN
    RAISE EXCEPTION 'encryption key for key id % must be at least 32 characters', p_key_id
      USING ERRCODE = 'PR001';
  END IF;
  v_verifier := reflect._key_verifier(p_key_id, p_key);
  SELECT verifier INTO v_known FROM reflect.key_verifiers WHERE key_id = p_key_id;
  IF v_known IS NULL THEN
    SELECT count(*), count(*) FILTER (WHERE reflect._decrypts(s.prompt_enc, p_key))
    INTO v_sampled, v_readable
    FROM (SELECT prompt_enc FROM reflect.requests WHERE key_id = p_key_id ORDER BY id LIMIT 5) s;
    IF v_sampled > 0 AND v_readable * 2 <= v_sampled THEN
      RAISE EXCEPTION 'wrong key for key id %: it does not decrypt the rows already stored under that id', p_key_id
        USING ERRCODE = 'PR004';
    END IF;
    INSERT INTO reflect.key_verifiers (key_id, verifier, registered_by)
    VALUES (p_key_id, v_verifier, session_user)
    ON CONFLICT (key_id) DO NOTHING;
    SELECT verifier INTO v_known FROM reflect.key_verifiers WHERE key_id = p_key_id;
  END IF;
  IF v_known <> v_verifier THEN
    RAISE EXCEPTION 'wrong key for key id %: another key is registered under that id', p_key_id
      USING ERRCODE = 'PR004',
            HINT = 'two keys must never share a key id; give each app its own (pgreflect apps add)';
  END IF;
  PERFORM set_config('reflect.key_' || p_key_id, p_key, false);
  PERFORM set_config('reflect.loaded_key_ids', array_to_string(ARRAY(
    SELECT DISTINCT k FROM unnest(string_to_array(current_setting('reflect.loaded_key_ids', true), ',')
                                  || p_key_id) k WHERE k <> '' ORDER BY k), ','), false);
  IF p_current THEN
    PERFORM set_config('reflect.current_key_id', p_key_id, false);
  END IF;
END
$$;
ALTER FUNCTION reflect.use_key_v1(p_key_id text, p_key text, p_current boolean) OWNER TO reflect_owner;
CREATE FUNCTION reflect.verify_api_key_v1(p_key text) RETURNS TABLE(key_id text, app text, login name)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;
ALTER FUNCTION reflect.verify_api_key_v1(p_key text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.verify_person_v1(p_name text, p_password text) RETURNS TABLE(login name, role text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT p.login, p.role FROM reflect.people p
  WHERE p.name = p_name AND p.revoked_at IS NULL AND length(p_password) <= 200
    AND p.password_hash = public.crypt(p_password, p.password_hash)
$$;
ALTER FUNCTION reflect.verify_person_v1(p_name text, p_password text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.worker_seen_v1(p_worker_id text, p_model_version_ids integer[], p_pid integer, p_hostname text) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  INSERT INTO reflect.workers (worker_id, hostname, pid, model_version_ids)
  VALUES (p_worker_id, left(p_hostname, 200), p_pid, p_model_version_ids)
  ON CONFLICT (worker_id) DO UPDATE
  SET last_seen_at = now(), model_version_ids = excluded.model_version_ids, stopped_at = NULL
$$;
ALTER FUNCTION reflect.worker_seen_v1(p_worker_id text, p_model_version_ids integer[], p_pid integer, p_hostname text) OWNER TO reflect_owner;
CREATE FUNCTION reflect.worker_stopped_v1(p_worker_id text) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  UPDATE reflect.workers SET stopped_at = now(), last_seen_at = now() WHERE worker_id = p_worker_id
$$;
ALTER FUNCTION reflect.worker_stopped_v1(p_worker_id text) OWNER TO reflect_owner;
CREATE TABLE reflect.answer_candidates (
    request_id bigint NOT NULL,
    n integer NOT NULL,
    key_id text NOT NULL,
    answer_enc bytea NOT NULL,
    completion_tokens integer NOT NULL,
    logprob_mean double precision,
    logprob_min double precision,
    signals jsonb NOT NULL,
    confidence double precision NOT NULL,
    evidence_request_ids bigint[] DEFAULT '{}'::bigint[] NOT NULL,
    chosen boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    CONSTRAINT answer_candidates_confidence_check CHECK (((confidence >= (0)::double precision) AND (confidence <= (1)::double precision))),
    CONSTRAINT answer_candidates_n_check CHECK ((n >= 1))
);
ALTER TABLE reflect.answer_candidates OWNER TO reflect_owner;
CREATE TABLE reflect.answer_memories (
    request_id bigint NOT NULL,
    memory_request_id bigint NOT NULL,
    rank integer NOT NULL,
    distance double precision NOT NULL
);
ALTER TABLE reflect.answer_memories OWNER TO reflect_owner;
CREATE TABLE reflect.answer_signals (
    request_id bigint NOT NULL,
    name text NOT NULL,
    value double precision NOT NULL,
    computed_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT answer_signals_name_check CHECK ((name ~ '^[a-z][a-z0-9_]{0,40}$'::text)),
    CONSTRAINT answer_signals_value_check CHECK ((value = value))
);
ALTER TABLE reflect.answer_signals OWNER TO reflect_owner;
CREATE TABLE reflect.answer_states (
    request_id bigint NOT NULL,
    model_version_id integer NOT NULL,
    state public.vector NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);
ALTER TABLE reflect.answer_states OWNER TO reflect_owner;
CREATE TABLE reflect.answer_tokens (
    request_id bigint NOT NULL,
    key_id text NOT NULL,
    tokens_enc bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);
ALTER TABLE reflect.answer_tokens OWNER TO reflect_owner;
CREATE TABLE reflect.answers (
    request_id bigint NOT NULL,
    attempt integer NOT NULL,
    key_id text NOT NULL,
    answer_enc bytea NOT NULL,
    model_version_id integer NOT NULL,
    worker_id text NOT NULL,
    finish_reason text NOT NULL,
    prompt_tokens integer NOT NULL,
    completion_tokens integer NOT NULL,
    token_logprobs real[] NOT NULL,
    logprob_mean double precision,
    logprob_min double precision,
    logprob_norm double precision,
    queue_wait_ms double precision NOT NULL,
    prompt_eval_ms double precision NOT NULL,
    generation_ms double precision NOT NULL,
    tokens_per_s double precision,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    confidence double precision,
    calibrator_id integer,
    action text DEFAULT 'answer'::text NOT NULL,
    memory_used boolean DEFAULT false NOT NULL,
    CONSTRAINT answers_action_check CHECK ((action = ANY (ARRAY['answer'::text, 'flag'::text, 'abstain'::text, 'reanswer'::text]))),
    CONSTRAINT answers_completion_tokens_check CHECK ((completion_tokens >= 0)),
    CONSTRAINT answers_confidence_check CHECK (((confidence >= (0)::double precision) AND (confidence <= (1)::double precision))),
    CONSTRAINT answers_finish_reason_check CHECK ((finish_reason = ANY (ARRAY['stop'::text, 'length'::text, 'stop_sequence'::text]))),
    CONSTRAINT answers_generation_ms_check CHECK ((generation_ms >= (0)::double precision)),
    CONSTRAINT answers_logprob_norm_check CHECK (((logprob_norm >= (0)::double precision) AND (logprob_norm <= (1)::double precision))),
    CONSTRAINT answers_prompt_eval_ms_check CHECK ((prompt_eval_ms >= (0)::double precision)),
    CONSTRAINT answers_prompt_tokens_check CHECK ((prompt_tokens >= 0)),
    CONSTRAINT one_logprob_per_token CHECK ((cardinality(token_logprobs) = completion_tokens))
);
ALTER TABLE reflect.answers OWNER TO reflect_owner;
CREATE TABLE reflect.api_keys (
    id text NOT NULL,
    name text NOT NULL,
    app text NOT NULL,
    secret_hash text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    created_by name DEFAULT SESSION_USER NOT NULL,
    last_used_at timestamp with time zone,
    revoked_at timestamp with time zone,
    CONSTRAINT api_key_id_format CHECK ((id ~ '^[0-9a-f]{12}$'::text)),
    CONSTRAINT api_key_name_format CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'::text))
);
ALTER TABLE reflect.api_keys OWNER TO reflect_owner;
CREATE TABLE reflect.apps (
    name text NOT NULL,
    login name NOT NULL,
    key_id text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone,
    CONSTRAINT app_name_format CHECK ((name ~ '^[a-z][a-z0-9_]{0,40}$'::text))
);
ALTER TABLE reflect.apps OWNER TO reflect_owner;
CREATE VIEW reflect.api_key_list AS
 SELECT k.id,
    k.name,
    k.app,
    a.login,
    k.created_at,
    k.created_by,
    k.last_used_at,
    k.revoked_at
   FROM (reflect.api_keys k
     JOIN reflect.apps a ON ((a.name = k.app)));
ALTER TABLE reflect.api_key_list OWNER TO reflect_owner;
CREATE TABLE reflect.critiques (
    request_id bigint NOT NULL,
    key_id text NOT NULL,
    critique_enc bytea NOT NULL,
    verdict text NOT NULL,
    n_issues integer NOT NULL,
    max_severity text,
    rating smallint,
    rated_by name,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT critiques_max_severity_check CHECK ((max_severity = ANY (ARRAY['low'::text, 'medium'::text, 'high'::text]))),
    CONSTRAINT critiques_n_issues_check CHECK ((n_issues >= 0)),
    CONSTRAINT critiques_rating_check CHECK (((rating >= 1) AND (rating <= 5))),
    CONSTRAINT critiques_verdict_check CHECK ((verdict = ANY (ARRAY['correct'::text, 'partially_correct'::text, 'incorrect'::text, 'unsure'::text])))
);
ALTER TABLE reflect.critiques OWNER TO reflect_owner;
CREATE TABLE reflect.feedback (
    id bigint NOT NULL,
    request_id bigint NOT NULL,
    is_correct boolean,
    rating smallint,
    key_id text,
    correction_enc bytea,
    source text NOT NULL,
    given_by name NOT NULL,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    CONSTRAINT correction_has_key CHECK (((correction_enc IS NULL) = (key_id IS NULL))),
    CONSTRAINT feedback_rating_check CHECK (((rating >= 1) AND (rating <= 5))),
    CONSTRAINT feedback_says_something CHECK (((is_correct IS NOT NULL) OR (rating IS NOT NULL) OR (correction_enc IS NOT NULL))),
    CONSTRAINT feedback_source_check CHECK ((source ~ '^[a-z][a-z0-9_]{0,30}$'::text))
);
ALTER TABLE reflect.feedback OWNER TO reflect_owner;
CREATE TABLE reflect.partial_answers (
    request_id bigint NOT NULL,
    attempt integer NOT NULL,
    key_id text NOT NULL,
    text_enc bytea NOT NULL,
    updated_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL
);
ALTER TABLE reflect.partial_answers OWNER TO reflect_owner;
CREATE VIEW reflect.app_requests WITH (security_barrier='true') AS
 SELECT r.id,
    reflect._decrypt_or_null(r.prompt_enc, r.key_id) AS prompt,
    reflect._decrypt_or_null(r.system_prompt_enc, r.key_id) AS system_prompt,
    r.params,
    r.idempotency_key,
    r.caller,
    mv.name AS model_version,
    (r.state)::text AS state,
    r.attempts,
    r.last_error,
    r.created_at,
    r.finished_at,
    reflect._decrypt_or_null(a.answer_enc, a.key_id) AS answer,
    a.finish_reason,
    a.completion_tokens AS tokens,
    a.tokens_per_s,
    a.logprob_mean,
    a.logprob_min,
    COALESCE(a.confidence, a.logprob_norm) AS confidence,
    a.prompt_tokens,
    a.queue_wait_ms,
    a.prompt_eval_ms,
    a.generation_ms,
    (a.calibrator_id IS NOT NULL) AS calibrated,
    a.action,
    a.memory_used,
    ( SELECT jsonb_object_agg(s.name, s.value) AS jsonb_object_agg
           FROM reflect.answer_signals s
          WHERE (s.request_id = r.id)) AS signals,
    reflect._decrypt_or_null(c.critique_enc, c.key_id) AS critique,
    c.verdict AS critique_verdict,
    c.rating AS critique_rating,
    ( SELECT count(*) AS count
           FROM reflect.jobs f
          WHERE ((f.request_id = r.id) AND (f.kind = ANY (ARRAY['critique'::text, 'agreement'::text])) AND (f.state = ANY (ARRAY['queued'::reflect.request_state, 'running'::reflect.request_state])))) AS followups_pending,
    ( SELECT f.is_correct
           FROM reflect.feedback f
          WHERE ((f.request_id = r.id) AND (f.is_correct IS NOT NULL))
          ORDER BY f.id DESC
         LIMIT 1) AS is_correct,
    a.token_logprobs,
    ( SELECT (reflect._decrypt_or_null(t.tokens_enc, t.key_id))::jsonb AS _decrypt_or_null
           FROM reflect.answer_tokens t
          WHERE (t.request_id = r.id)) AS answer_tokens,
    (reflect._decrypt_or_null(r.history_enc, r.key_id))::jsonb AS history,
    ( SELECT reflect._decrypt_or_null(p.text_enc, p.key_id) AS _decrypt_or_null
           FROM reflect.partial_answers p
          WHERE (p.request_id = r.id)) AS partial_answer
   FROM (((reflect.requests r
     JOIN reflect.model_versions mv ON ((mv.id = r.model_version_id)))
     LEFT JOIN reflect.answers a ON ((a.request_id = r.id)))
     LEFT JOIN reflect.critiques c ON ((c.request_id = r.id)))
  WHERE (r.submitted_by = SESSION_USER);
ALTER TABLE reflect.app_requests OWNER TO reflect_owner;
CREATE VIEW reflect.labels AS
 SELECT DISTINCT ON (f.request_id) f.request_id,
    f.is_correct,
    f.source,
    f.created_at
   FROM reflect.feedback f
  WHERE (f.is_correct IS NOT NULL)
  ORDER BY f.request_id, f.id DESC;
ALTER TABLE reflect.labels OWNER TO reflect_owner;
CREATE VIEW reflect.labelled_answers AS
 SELECT a.request_id,
    mv.name AS model_version,
    date_trunc('day'::text, a.created_at) AS day,
    l.is_correct,
    l.source AS label_source,
    a.confidence,
    (a.calibrator_id IS NOT NULL) AS calibrated,
    a.action,
    a.memory_used,
    COALESCE(((r.params ->> 'memory'::text))::boolean, true) AS memory_enabled,
    a.logprob_mean,
    a.logprob_min,
    a.logprob_norm,
    a.completion_tokens,
    ( SELECT s.value
           FROM reflect.answer_signals s
          WHERE ((s.request_id = a.request_id) AND (s.name = 'p_true'::text))) AS p_true,
    ( SELECT s.value
           FROM reflect.answer_signals s
          WHERE ((s.request_id = a.request_id) AND (s.name = 'p_answer'::text))) AS p_answer,
    ( SELECT max(s.value) AS max
           FROM reflect.answer_signals s
          WHERE ((s.request_id = a.request_id) AND (s.name ~~ 'rule\_%'::text))) AS rule_failed,
    ( SELECT s.value
           FROM reflect.answer_signals s
          WHERE ((s.request_id = a.request_id) AND (s.name = 'agreement'::text))) AS agreement,
    ( SELECT s.value
           FROM reflect.answer_signals s
          WHERE ((s.request_id = a.request_id) AND (s.name = 'critique_verdict'::text))) AS critique_verdict,
    ( SELECT s.value
           FROM reflect.answer_signals s
          WHERE ((s.request_id = a.request_id) AND (s.name = 'option_max_prob'::text))) AS option_max_prob,
    ( SELECT s.value
           FROM reflect.answer_signals s
          WHERE ((s.request_id = a.request_id) AND (s.name = 'option_margin'::text))) AS option_margin,
    ( SELECT s.value
           FROM reflect.answer_signals s
          WHERE ((s.request_id = a.request_id) AND (s.name = 'option_entropy'::text))) AS option_entropy,
    ( SELECT s.value
           FROM reflect.answer_signals s
          WHERE ((s.request_id = a.request_id) AND (s.name = 'probe'::text))) AS probe
   FROM (((reflect.answers a
     JOIN reflect.labels l ON ((l.request_id = a.request_id)))
     JOIN reflect.requests r ON ((r.id = a.request_id)))
     JOIN reflect.model_versions mv ON ((mv.id = a.model_version_id)));
ALTER TABLE reflect.labelled_answers OWNER TO reflect_owner;
CREATE VIEW reflect.calibration_daily AS
 SELECT labelled_answers.model_version,
    labelled_answers.day,
    count(*) AS labelled,
    avg((labelled_answers.is_correct)::integer) AS accuracy,
    avg(labelled_answers.confidence) AS mean_confidence,
    reflect.ece_v1(array_agg(labelled_answers.confidence), array_agg(labelled_answers.is_correct)) AS ece,
    reflect.brier_v1(array_agg(labelled_answers.confidence), array_agg(labelled_answers.is_correct)) AS brier,
    reflect.auroc_v1(array_agg(((1)::double precision - labelled_answers.confidence)), array_agg((NOT labelled_answers.is_correct))) AS auroc_confidence,
    reflect.auroc_v1(array_agg((- labelled_answers.logprob_mean)), array_agg((NOT labelled_answers.is_correct))) AS auroc_logprob_mean,
    reflect.auroc_v1(array_agg((- labelled_answers.logprob_min)), array_agg((NOT labelled_answers.is_correct))) AS auroc_logprob_min,
    reflect.auroc_v1(array_agg((- labelled_answers.p_true)), array_agg((NOT labelled_answers.is_correct))) AS auroc_p_true,
    reflect.auroc_v1(array_agg((- labelled_answers.p_answer)), array_agg((NOT labelled_answers.is_correct))) AS auroc_p_answer,
    reflect.auroc_v1(array_agg(labelled_answers.rule_failed), array_agg((NOT labelled_answers.is_correct))) AS auroc_rules,
    reflect.auroc_v1(array_agg((- labelled_answers.agreement)), array_agg((NOT labelled_answers.is_correct))) AS auroc_agreement,
    reflect.auroc_v1(array_agg((- labelled_answers.critique_verdict)), array_agg((NOT labelled_answers.is_correct))) AS auroc_critique,
    reflect.accuracy_at_coverage_v1(array_agg(labelled_answers.confidence), array_agg(labelled_answers.is_correct), (0.8)::double precision) AS accuracy_at_80,
    avg(((labelled_answers.action = 'abstain'::text))::integer) AS abstention_rate,
    avg(((labelled_answers.action = 'flag'::text))::integer) AS review_rate,
    avg((labelled_answers.is_correct)::integer) FILTER (WHERE labelled_answers.memory_enabled) AS accuracy_memory_on,
    avg((labelled_answers.is_correct)::integer) FILTER (WHERE (NOT labelled_answers.memory_enabled)) AS accuracy_memory_off,
    avg((labelled_answers.calibrated)::integer) AS calibrated_share
   FROM reflect.labelled_answers
  GROUP BY labelled_answers.model_version, labelled_answers.day;
ALTER TABLE reflect.calibration_daily OWNER TO reflect_owner;
CREATE TABLE reflect.calibrators (
    id integer NOT NULL,
    model_version_id integer NOT NULL,
    method text NOT NULL,
    features text[] NOT NULL,
    feature_means double precision[] NOT NULL,
    feature_stds double precision[] NOT NULL,
    weights double precision[] NOT NULL,
    n_train integer NOT NULL,
    n_heldout integer NOT NULL,
    heldout_metrics jsonb NOT NULL,
    labels_seen integer NOT NULL,
    is_active boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT calibrators_method_check CHECK ((method = 'logistic_l2'::text)),
    CONSTRAINT weights_match_features CHECK (((cardinality(weights) = (cardinality(features) + 1)) AND (cardinality(feature_means) = cardinality(features)) AND (cardinality(feature_stds) = cardinality(features))))
);
ALTER TABLE reflect.calibrators OWNER TO reflect_owner;
CREATE VIEW reflect.calibrator_history AS
 SELECT c.id,
    mv.name AS model_version,
    c.method,
    c.features,
    c.weights,
    c.n_train,
    c.n_heldout,
    c.heldout_metrics,
    c.labels_seen,
    c.is_active,
    c.created_at
   FROM (reflect.calibrators c
     JOIN reflect.model_versions mv ON ((mv.id = c.model_version_id)));
ALTER TABLE reflect.calibrator_history OWNER TO reflect_owner;
ALTER TABLE reflect.calibrators ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.calibrators_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE reflect.canaries (
    id integer NOT NULL,
    candidate_id integer NOT NULL,
    parent_id integer NOT NULL,
    share double precision NOT NULL,
    state text DEFAULT 'running'::text NOT NULL,
    started_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    ended_at timestamp with time zone,
    started_by name NOT NULL,
    CONSTRAINT canaries_share_check CHECK (((share > (0)::double precision) AND (share < (1)::double precision))),
    CONSTRAINT canaries_state_check CHECK ((state = ANY (ARRAY['running'::text, 'promoted'::text, 'rolled_back'::text, 'stopped'::text]))),
    CONSTRAINT canary_ended_iff_final CHECK (((state = 'running'::text) = (ended_at IS NULL)))
);
ALTER TABLE reflect.canaries OWNER TO reflect_owner;
ALTER TABLE reflect.canaries ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.canaries_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE reflect.eval_requests (
    request_id bigint NOT NULL,
    dataset text NOT NULL,
    item_id text NOT NULL,
    run_label text NOT NULL
);
ALTER TABLE reflect.eval_requests OWNER TO reflect_owner;
CREATE TABLE reflect.settings (
    key text NOT NULL,
    value jsonb NOT NULL,
    description text NOT NULL
);
ALTER TABLE reflect.settings OWNER TO reflect_owner;
CREATE VIEW reflect.canary_status AS
 WITH arms AS (
         SELECT c_1.id,
            count(l.ok) FILTER (WHERE (l.version = c_1.candidate_id)) AS n_c,
            COALESCE(sum(l.ok) FILTER (WHERE (l.version = c_1.candidate_id)), (0)::bigint) AS s_c,
            count(l.ok) FILTER (WHERE (l.version = c_1.parent_id)) AS n_p,
            COALESCE(sum(l.ok) FILTER (WHERE (l.version = c_1.parent_id)), (0)::bigint) AS s_p
           FROM (reflect.canaries c_1
             LEFT JOIN LATERAL ( SELECT DISTINCT ON (f.request_id) r.model_version_id AS version,
                    (((f.is_correct IS TRUE) AND (f.correction_enc IS NULL)))::integer AS ok
                   FROM (reflect.requests r
                     JOIN reflect.feedback f ON (((f.request_id = r.id) AND ((f.is_correct IS NOT NULL) OR (f.correction_enc IS NOT NULL)))))
                  WHERE ((r.model_version_id = ANY (ARRAY[c_1.candidate_id, c_1.parent_id])) AND (r.created_at >= c_1.started_at) AND (NOT (EXISTS ( SELECT
                           FROM reflect.eval_requests e
                          WHERE (e.request_id = r.id)))))
                  ORDER BY f.request_id, f.id DESC) l ON (true))
          GROUP BY c_1.id
        ), rates AS (
         SELECT a.id,
            a.n_c,
            a.s_c,
            a.n_p,
            a.s_p,
            ((a.s_c)::double precision / (NULLIF(a.n_c, 0))::double precision) AS p_c,
            ((a.s_p)::double precision / (NULLIF(a.n_p, 0))::double precision) AS p_p,
            (((a.s_c + a.s_p))::double precision / (NULLIF((a.n_c + a.n_p), 0))::double precision) AS q
           FROM arms a
        ), glr AS (
         SELECT r.id,
            r.n_c,
            r.s_c,
            r.n_p,
            r.s_p,
            r.p_c,
            r.p_p,
            r.q,
                CASE
                    WHEN ((r.q IS NULL) OR (r.q <= (0)::double precision) OR (r.q >= (1)::double precision)) THEN (0)::double precision
                    ELSE (((r.n_c)::double precision * (
                    CASE
                        WHEN (r.p_c > (0)::double precision) THEN (r.p_c * ln((r.p_c / r.q)))
                        ELSE (0)::double precision
                    END +
                    CASE
                        WHEN (r.p_c < (1)::double precision) THEN (((1)::double precision - r.p_c) * ln((((1)::double precision - r.p_c) / ((1)::double precision - r.q))))
                        ELSE (0)::double precision
                    END)) + ((r.n_p)::double precision * (
                    CASE
                        WHEN (r.p_p > (0)::double precision) THEN (r.p_p * ln((r.p_p / r.q)))
                        ELSE (0)::double precision
                    END +
                    CASE
                        WHEN (r.p_p < (1)::double precision) THEN (((1)::double precision - r.p_p) * ln((((1)::double precision - r.p_p) / ((1)::double precision - r.q))))
                        ELSE (0)::double precision
                    END)))
                END AS stat
           FROM rates r
        )
 SELECT c.id,
    cand.name AS candidate,
    parent.name AS parent,
    c.share,
    c.state,
    c.started_at,
    c.ended_at,
    c.started_by,
    g.n_c AS candidate_labels,
    g.s_c AS candidate_right,
    g.p_c AS candidate_accuracy,
    g.n_p AS parent_labels,
    g.s_p AS parent_right,
    g.p_p AS parent_accuracy,
    COALESCE(g.stat, (0)::double precision) AS glr,
    ln((((1)::double precision + ln((GREATEST((g.n_c + g.n_p), (1)::bigint))::double precision)) / ( SELECT ((settings.value #>> '{}'::text[]))::double precision AS float8
           FROM reflect.settings
          WHERE (settings.key = 'canary_delta'::text)))) AS threshold,
    ( SELECT ((settings.value #>> '{}'::text[]))::integer AS int4
           FROM reflect.settings
          WHERE (settings.key = 'canary_min_labels'::text)) AS min_labels
   FROM (((reflect.canaries c
     JOIN glr g ON ((g.id = c.id)))
     JOIN reflect.model_versions cand ON ((cand.id = c.candidate_id)))
     JOIN reflect.model_versions parent ON ((parent.id = c.parent_id)));
ALTER TABLE reflect.canary_status OWNER TO reflect_owner;
CREATE TABLE reflect.decryption_audit (
    id bigint NOT NULL,
    at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    by_login name NOT NULL,
    request_id bigint NOT NULL,
    what text[] NOT NULL,
    purpose text NOT NULL,
    redacted boolean NOT NULL,
    CONSTRAINT decryption_audit_purpose_check CHECK (((length(purpose) >= 3) AND (length(purpose) <= 500)))
);
ALTER TABLE reflect.decryption_audit OWNER TO reflect_owner;
ALTER TABLE reflect.decryption_audit ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.decryption_audit_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE VIEW reflect.decryption_log AS
 SELECT d.id,
    d.at,
    d.by_login,
    d.request_id,
    d.what,
    d.purpose,
    d.redacted
   FROM reflect.decryption_audit d;
ALTER TABLE reflect.decryption_log OWNER TO reflect_owner;
CREATE TABLE reflect.eval_items (
    dataset text NOT NULL,
    item_id text NOT NULL,
    split text NOT NULL,
    CONSTRAINT eval_items_dataset_check CHECK ((dataset ~ '^[a-z0-9_]{1,40}$'::text)),
    CONSTRAINT eval_items_split_check CHECK ((split = ANY (ARRAY['train'::text, 'heldout'::text])))
);
ALTER TABLE reflect.eval_items OWNER TO reflect_owner;
CREATE VIEW reflect.eval_results AS
 SELECT er.run_label,
    er.dataset,
    COALESCE(ei.split, 'unsplit'::text) AS split,
    la.model_version,
    count(*) AS n,
    avg((la.is_correct)::integer) AS accuracy,
    avg(la.confidence) AS mean_confidence,
    reflect.auroc_v1(array_agg(((1)::double precision - la.confidence)), array_agg((NOT la.is_correct))) AS auroc_confidence,
    reflect.ece_v1(array_agg(la.confidence), array_agg(la.is_correct)) AS ece,
    reflect.brier_v1(array_agg(la.confidence), array_agg(la.is_correct)) AS brier,
    reflect.accuracy_at_coverage_v1(array_agg(la.confidence), array_agg(la.is_correct), (0.8)::double precision) AS accuracy_at_80,
    avg((la.calibrated)::integer) AS calibrated_share,
    reflect.eval_metrics_v1(array_agg(la.confidence), array_agg(la.is_correct)) AS metrics
   FROM ((reflect.eval_requests er
     JOIN reflect.labelled_answers la ON ((la.request_id = er.request_id)))
     LEFT JOIN reflect.eval_items ei ON (((ei.dataset = er.dataset) AND (ei.item_id = er.item_id))))
  GROUP BY er.run_label, er.dataset, COALESCE(ei.split, 'unsplit'::text), la.model_version;
ALTER TABLE reflect.eval_results OWNER TO reflect_owner;
ALTER TABLE reflect.feedback ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.feedback_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE VIEW reflect.followups AS
 SELECT j.id,
    j.request_id,
    j.kind,
    j.state,
    j.attempts,
    j.max_attempts,
    j.lease_token,
    j.lease_expires_at,
    j.worker_id,
    j.last_error,
    j.created_at,
    j.finished_at
   FROM reflect.jobs j
  WHERE (j.kind = ANY (ARRAY['critique'::text, 'agreement'::text]));
ALTER TABLE reflect.followups OWNER TO reflect_owner;
CREATE TABLE reflect.gate_items (
    job_id bigint NOT NULL,
    part text NOT NULL,
    example_request_id bigint,
    retention_item_id integer,
    candidate_request_id bigint NOT NULL,
    parent_request_id bigint NOT NULL,
    candidate_correct boolean,
    parent_correct boolean,
    CONSTRAINT gate_item_source CHECK ((((part = 'c'::text) = (retention_item_id IS NOT NULL)) AND ((part = 'c'::text) = (example_request_id IS NULL)))),
    CONSTRAINT gate_items_part_check CHECK ((part = ANY (ARRAY['a'::text, 'r'::text, 'b'::text, 'c'::text])))
);
ALTER TABLE reflect.gate_items OWNER TO reflect_owner;
ALTER TABLE reflect.jobs ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.jobs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE reflect.key_verifiers (
    key_id text NOT NULL,
    verifier text NOT NULL,
    registered_by name NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT key_id_format CHECK ((key_id ~ '^[a-z0-9_]{1,32}$'::text)),
    CONSTRAINT key_verifiers_verifier_check CHECK ((verifier ~ '^[0-9a-f]{64}$'::text))
);
ALTER TABLE reflect.key_verifiers OWNER TO reflect_owner;
CREATE TABLE reflect.memories (
    request_id bigint NOT NULL,
    kind text NOT NULL,
    feedback_id bigint NOT NULL,
    embedding public.vector(384) NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    owner name NOT NULL,
    CONSTRAINT memories_kind_check CHECK ((kind = ANY (ARRAY['correction'::text, 'confirmed'::text])))
);
ALTER TABLE reflect.memories OWNER TO reflect_owner;
CREATE TABLE reflect.memory_lookups (
    request_id bigint NOT NULL,
    nearest_distance double precision,
    max_distance double precision NOT NULL,
    k integer NOT NULL,
    explored boolean NOT NULL,
    used integer NOT NULL,
    looked_up_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL
);
ALTER TABLE reflect.memory_lookups OWNER TO reflect_owner;
CREATE TABLE reflect.memory_shares (
    owner name NOT NULL,
    reader name NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT share_with_another CHECK ((owner <> reader))
);
ALTER TABLE reflect.memory_shares OWNER TO reflect_owner;
CREATE TABLE reflect.promotion_decisions (
    id bigint NOT NULL,
    candidate_id integer NOT NULL,
    parent_id integer,
    job_id bigint,
    decision text NOT NULL,
    decided_by name NOT NULL,
    reason text NOT NULL,
    numbers jsonb DEFAULT '{}'::jsonb NOT NULL,
    rule jsonb DEFAULT '{}'::jsonb NOT NULL,
    decided_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT promotion_decisions_decision_check CHECK ((decision = ANY (ARRAY['promote'::text, 'reject'::text, 'rollback'::text, 'canary'::text])))
);
ALTER TABLE reflect.promotion_decisions OWNER TO reflect_owner;
CREATE VIEW reflect.model_states AS
 SELECT mv.id,
    mv.name,
    parent.name AS parent,
    base.name AS base,
        CASE
            WHEN mv.is_active THEN 'active'::text
            WHEN (mv.stage = 'promoted'::text) THEN 'retired'::text
            ELSE mv.stage
        END AS state,
    mv.backend,
    mv.adapter_sha256,
    mv.training_set_id,
    mv.finetune_job_id,
    mv.hyperparameters,
    mv.training_metrics,
    d.decision AS last_decision,
    d.decided_by,
    d.reason,
    d.numbers,
    d.decided_at,
    mv.created_at
   FROM (((reflect.model_versions mv
     LEFT JOIN reflect.model_versions parent ON ((parent.id = mv.parent_id)))
     LEFT JOIN reflect.model_versions base ON ((base.id = mv.base_model_version_id)))
     LEFT JOIN LATERAL ( SELECT pd.id,
            pd.candidate_id,
            pd.parent_id,
            pd.job_id,
            pd.decision,
            pd.decided_by,
            pd.reason,
            pd.numbers,
            pd.rule,
            pd.decided_at
           FROM reflect.promotion_decisions pd
          WHERE (pd.candidate_id = mv.id)
          ORDER BY pd.id DESC
         LIMIT 1) d ON (true));
ALTER TABLE reflect.model_states OWNER TO reflect_owner;
CREATE VIEW reflect.model_version_daily AS
 SELECT mv.name AS model_version,
    date_trunc('day'::text, r.created_at) AS day,
    count(*) AS requests,
    count(*) FILTER (WHERE (r.state = 'succeeded'::reflect.request_state)) AS succeeded,
    count(*) FILTER (WHERE (r.state = 'failed'::reflect.request_state)) AS failed,
    count(*) FILTER (WHERE (r.state = ANY (ARRAY['queued'::reflect.request_state, 'running'::reflect.request_state]))) AS pending,
    avg(a.tokens_per_s) AS mean_tokens_per_s,
    percentile_cont((0.5)::double precision) WITHIN GROUP (ORDER BY a.queue_wait_ms) AS p50_queue_wait_ms,
    percentile_cont((0.95)::double precision) WITHIN GROUP (ORDER BY a.queue_wait_ms) AS p95_queue_wait_ms,
    avg(a.logprob_norm) AS mean_confidence,
    sum(a.completion_tokens) AS completion_tokens
   FROM ((reflect.requests r
     JOIN reflect.model_versions mv ON ((mv.id = r.model_version_id)))
     LEFT JOIN reflect.answers a ON ((a.request_id = r.id)))
  GROUP BY mv.name, (date_trunc('day'::text, r.created_at));
ALTER TABLE reflect.model_version_daily OWNER TO reflect_owner;
CREATE VIEW reflect.model_version_registry AS
 SELECT mv.id,
    mv.name,
    mv.source,
    mv.sha256,
    p.name AS parent,
    mv.n_ctx,
    mv.is_active,
    mv.created_at,
    mv.backend,
    mv.base_url,
    mv.remote_model
   FROM (reflect.model_versions mv
     LEFT JOIN reflect.model_versions p ON ((p.id = mv.parent_id)));
ALTER TABLE reflect.model_version_registry OWNER TO reflect_owner;
ALTER TABLE reflect.model_versions ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.model_versions_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE reflect.people (
    name text NOT NULL,
    login name NOT NULL,
    role text NOT NULL,
    password_hash text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone,
    CONSTRAINT people_role_check CHECK ((role = ANY (ARRAY['reviewer'::text, 'analyst'::text]))),
    CONSTRAINT person_name_format CHECK ((name ~ '^[a-z][a-z0-9_]{0,40}$'::text))
);
ALTER TABLE reflect.people OWNER TO reflect_owner;
ALTER TABLE reflect.promotion_decisions ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.promotion_decisions_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE reflect.prompt_embeddings (
    request_id bigint NOT NULL,
    model text NOT NULL,
    embedding public.vector(384) NOT NULL
);
ALTER TABLE reflect.prompt_embeddings OWNER TO reflect_owner;
CREATE VIEW reflect.queue_status AS
 SELECT mv.name AS model_version,
    mv.is_active,
    count(r.id) FILTER (WHERE (r.state = 'queued'::reflect.request_state)) AS queued,
    count(r.id) FILTER (WHERE ((r.state = 'queued'::reflect.request_state) AND (r.run_after > now()))) AS waiting_retry,
    count(r.id) FILTER (WHERE (r.state = 'running'::reflect.request_state)) AS running,
    count(r.id) FILTER (WHERE ((r.state = 'running'::reflect.request_state) AND (r.lease_expires_at < now()))) AS lease_expired,
    count(r.id) FILTER (WHERE (r.state = 'succeeded'::reflect.request_state)) AS succeeded,
    count(r.id) FILTER (WHERE (r.state = 'failed'::reflect.request_state)) AS failed,
    min(r.created_at) FILTER (WHERE (r.state = 'queued'::reflect.request_state)) AS oldest_queued_at,
    ( SELECT ((s.value #>> '{}'::text[]))::integer AS int4
           FROM reflect.settings s
          WHERE (s.key = 'max_queued_per_version'::text)) AS queue_limit,
    ( SELECT percentile_cont((0.5)::double precision) WITHIN GROUP (ORDER BY a.queue_wait_ms) AS percentile_cont
           FROM reflect.answers a
          WHERE ((a.model_version_id = mv.id) AND (a.created_at > (now() - '01:00:00'::interval)))) AS p50_wait_ms_last_hour,
    ( SELECT percentile_cont((0.95)::double precision) WITHIN GROUP (ORDER BY a.queue_wait_ms) AS percentile_cont
           FROM reflect.answers a
          WHERE ((a.model_version_id = mv.id) AND (a.created_at > (now() - '01:00:00'::interval)))) AS p95_wait_ms_last_hour
   FROM (reflect.model_versions mv
     LEFT JOIN reflect.requests r ON ((r.model_version_id = mv.id)))
  GROUP BY mv.id, mv.name, mv.is_active;
ALTER TABLE reflect.queue_status OWNER TO reflect_owner;
CREATE VIEW reflect.reliability AS
 SELECT labelled_answers.model_version,
    LEAST((floor((labelled_answers.confidence * (10)::double precision)))::integer, 9) AS bin,
    ((LEAST((floor((labelled_answers.confidence * (10)::double precision)))::integer, 9))::numeric / 10.0) AS bin_low,
    (((LEAST((floor((labelled_answers.confidence * (10)::double precision)))::integer, 9) + 1))::numeric / 10.0) AS bin_high,
    count(*) AS n,
    avg(labelled_answers.confidence) AS mean_confidence,
    avg((labelled_answers.is_correct)::integer) AS accuracy
   FROM reflect.labelled_answers
  WHERE (labelled_answers.confidence IS NOT NULL)
  GROUP BY labelled_answers.model_version, LEAST((floor((labelled_answers.confidence * (10)::double precision)))::integer, 9), ((LEAST((floor((labelled_answers.confidence * (10)::double precision)))::integer, 9))::numeric / 10.0), (((LEAST((floor((labelled_answers.confidence * (10)::double precision)))::integer, 9) + 1))::numeric / 10.0);
ALTER TABLE reflect.reliability OWNER TO reflect_owner;
CREATE TABLE reflect.request_events (
    id bigint NOT NULL,
    request_id bigint NOT NULL,
    at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    event text NOT NULL,
    attempt integer NOT NULL,
    worker_id text,
    detail text,
    CONSTRAINT request_events_event_check CHECK ((event = ANY (ARRAY['submitted'::text, 'claimed'::text, 'succeeded'::text, 'retry'::text, 'failed'::text, 'released'::text, 'lease_expired'::text, 'key_rotated'::text, 'undecryptable'::text])))
);
ALTER TABLE reflect.request_events OWNER TO reflect_owner;
CREATE VIEW reflect.request_audit AS
 SELECT e.request_id,
    e.at,
    e.event,
    e.attempt,
    e.worker_id,
    e.detail
   FROM reflect.request_events e;
ALTER TABLE reflect.request_audit OWNER TO reflect_owner;
ALTER TABLE reflect.request_events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.request_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE VIEW reflect.request_metrics AS
 SELECT r.id AS request_id,
    r.caller,
    r.submitted_by,
    mv.name AS model_version,
    (r.state)::text AS state,
    r.attempts,
    r.last_error,
    r.created_at,
    r.claimed_at,
    r.finished_at,
    a.worker_id,
    a.finish_reason,
    a.prompt_tokens,
    a.completion_tokens,
    a.logprob_mean,
    a.logprob_min,
    a.logprob_norm AS confidence,
    a.queue_wait_ms,
    a.prompt_eval_ms,
    a.generation_ms,
    a.tokens_per_s,
    (EXTRACT(epoch FROM (r.finished_at - r.created_at)) * (1000)::numeric) AS total_ms
   FROM ((reflect.requests r
     JOIN reflect.model_versions mv ON ((mv.id = r.model_version_id)))
     LEFT JOIN reflect.answers a ON ((a.request_id = r.id)));
ALTER TABLE reflect.request_metrics OWNER TO reflect_owner;
ALTER TABLE reflect.requests ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.requests_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE reflect.retention_items (
    id integer NOT NULL,
    dataset text NOT NULL,
    item_id text NOT NULL,
    prompt text NOT NULL,
    system_prompt text,
    reference text NOT NULL,
    max_tokens integer DEFAULT 64 NOT NULL,
    embedding_model text,
    embedding public.vector(384),
    added_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT retention_items_dataset_check CHECK ((dataset ~ '^[a-z0-9_]{1,40}$'::text)),
    CONSTRAINT retention_items_item_id_check CHECK (((length(item_id) >= 1) AND (length(item_id) <= 200))),
    CONSTRAINT retention_items_max_tokens_check CHECK (((max_tokens >= 1) AND (max_tokens <= 4096))),
    CONSTRAINT retention_items_prompt_check CHECK ((prompt <> ''::text)),
    CONSTRAINT retention_items_reference_check CHECK ((reference <> ''::text))
);
ALTER TABLE reflect.retention_items OWNER TO reflect_owner;
ALTER TABLE reflect.retention_items ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.retention_items_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE VIEW reflect.review_memories AS
 SELECT am.request_id,
    am.memory_request_id,
    am.rank,
    am.distance,
    m.kind
   FROM (reflect.answer_memories am
     LEFT JOIN reflect.memories m ON ((m.request_id = am.memory_request_id)));
ALTER TABLE reflect.review_memories OWNER TO reflect_owner;
CREATE VIEW reflect.review_queue AS
 SELECT q.request_id,
    q.model_version,
    q.app_login,
    q.caller,
    q.answered_at,
    q.confidence,
    q.calibrated,
    q.threshold,
    q.action,
        CASE
            WHEN (q.action = 'abstain'::text) THEN 'abstained'::text
            WHEN (q.action = 'flag'::text) THEN 'flagged'::text
            WHEN (q.confidence < q.threshold) THEN 'low_confidence'::text
            ELSE 'sampled'::text
        END AS reason,
    q.signals,
    q.critique_verdict,
    q.critique_rating,
    q.memory_used,
    l.is_correct AS label,
    l.source AS label_source
   FROM (( SELECT r.id AS request_id,
            mv.name AS model_version,
            r.submitted_by AS app_login,
            r.caller,
            a.created_at AS answered_at,
            a.confidence,
            (a.calibrator_id IS NOT NULL) AS calibrated,
            ((r.params ->> 'confidence_threshold'::text))::double precision AS threshold,
            a.action,
            a.memory_used,
            ( SELECT jsonb_object_agg(s.name, s.value) AS jsonb_object_agg
                   FROM reflect.answer_signals s
                  WHERE (s.request_id = r.id)) AS signals,
            c.verdict AS critique_verdict,
            c.rating AS critique_rating
           FROM (((reflect.requests r
             JOIN reflect.answers a ON ((a.request_id = r.id)))
             JOIN reflect.model_versions mv ON ((mv.id = r.model_version_id)))
             LEFT JOIN reflect.critiques c ON ((c.request_id = r.id)))
          WHERE ((r.state = 'succeeded'::reflect.request_state) AND (NOT (EXISTS ( SELECT
                   FROM reflect.eval_requests e
                  WHERE (e.request_id = r.id)))))) q
     LEFT JOIN reflect.labels l ON ((l.request_id = q.request_id)))
  WHERE ((q.action = ANY (ARRAY['flag'::text, 'abstain'::text])) OR (q.confidence < q.threshold) OR reflect._sampled_for_review(q.request_id));
ALTER TABLE reflect.review_queue OWNER TO reflect_owner;
CREATE VIEW reflect.signal_auroc AS
 SELECT la.model_version,
    s.signal,
    count(s.score) AS n,
    reflect.auroc_v1(array_agg(s.score), array_agg((NOT la.is_correct))) AS auroc_wrong
   FROM (reflect.labelled_answers la
     CROSS JOIN LATERAL ( SELECT 'confidence'::text AS signal,
            ((1)::double precision - la.confidence) AS score
        UNION ALL
         SELECT v.signal,
                CASE
                    WHEN o.higher_is_right THEN (- v.value)
                    ELSE v.value
                END AS value
           FROM (( VALUES ('logprob_mean'::text,la.logprob_mean), ('logprob_min'::text,la.logprob_min), ('logprob_norm'::text,la.logprob_norm), ('p_true'::text,la.p_true), ('p_answer'::text,la.p_answer), ('rule_failed'::text,la.rule_failed), ('agreement'::text,la.agreement), ('critique_verdict'::text,la.critique_verdict), ('option_max_prob'::text,la.option_max_prob), ('option_margin'::text,la.option_margin), ('option_entropy'::text,la.option_entropy), ('probe'::text,la.probe)) v(signal, value)
             JOIN reflect.signal_orientations_v1() o(signal, higher_is_right) USING (signal))) s)
  WHERE (s.score IS NOT NULL)
  GROUP BY la.model_version, s.signal;
ALTER TABLE reflect.signal_auroc OWNER TO reflect_owner;
CREATE TABLE reflect.state_probes (
    id integer NOT NULL,
    model_version_id integer NOT NULL,
    method text NOT NULL,
    weights public.vector NOT NULL,
    bias double precision NOT NULL,
    n_train integer NOT NULL,
    metrics jsonb DEFAULT '{}'::jsonb NOT NULL,
    is_active boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT state_probes_method_check CHECK ((method = 'logistic_l2'::text)),
    CONSTRAINT state_probes_n_train_check CHECK ((n_train > 0))
);
ALTER TABLE reflect.state_probes OWNER TO reflect_owner;
ALTER TABLE reflect.state_probes ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.state_probes_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE reflect.training_examples (
    training_set_id integer NOT NULL,
    request_id bigint NOT NULL,
    feedback_id bigint NOT NULL,
    source text NOT NULL,
    split text NOT NULL,
    key_id text NOT NULL,
    prompt_enc bytea NOT NULL,
    system_prompt_enc bytea,
    completion_enc bytea NOT NULL,
    CONSTRAINT training_examples_source_check CHECK ((source = ANY (ARRAY['correction'::text, 'confirmed'::text]))),
    CONSTRAINT training_examples_split_check CHECK ((split = ANY (ARRAY['train'::text, 'heldout'::text])))
);
ALTER TABLE reflect.training_examples OWNER TO reflect_owner;
CREATE TABLE reflect.training_memory (
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    estimate_mb double precision NOT NULL,
    available_mb double precision NOT NULL,
    reserve_mb double precision NOT NULL,
    gradient_checkpointing boolean NOT NULL,
    serving_paused boolean NOT NULL,
    decision text NOT NULL,
    detail text NOT NULL,
    peak_rss_mb double precision,
    decided_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    CONSTRAINT training_memory_attempt_check CHECK ((attempt >= 1)),
    CONSTRAINT training_memory_available_mb_check CHECK ((available_mb >= (0)::double precision)),
    CONSTRAINT training_memory_decision_check CHECK ((decision = ANY (ARRAY['alongside'::text, 'checkpointing'::text, 'paused_serving'::text, 'refused'::text]))),
    CONSTRAINT training_memory_detail_check CHECK ((length(detail) <= 2000)),
    CONSTRAINT training_memory_estimate_mb_check CHECK ((estimate_mb >= (0)::double precision)),
    CONSTRAINT training_memory_peak_rss_mb_check CHECK ((peak_rss_mb >= (0)::double precision)),
    CONSTRAINT training_memory_reserve_mb_check CHECK ((reserve_mb >= (0)::double precision))
);
ALTER TABLE reflect.training_memory OWNER TO reflect_owner;
CREATE TABLE reflect.training_progress (
    job_id bigint NOT NULL,
    step integer NOT NULL,
    total_steps integer NOT NULL,
    epoch double precision,
    loss double precision,
    tokens_per_s double precision,
    eta_s double precision,
    rss_mb double precision,
    recorded_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    CONSTRAINT training_progress_step_check CHECK ((step >= 0)),
    CONSTRAINT training_progress_total_steps_check CHECK ((total_steps >= 0))
);
ALTER TABLE reflect.training_progress OWNER TO reflect_owner;
CREATE TABLE reflect.training_sets (
    id integer NOT NULL,
    owner name NOT NULL,
    base_model_version_id integer NOT NULL,
    created_by name NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    n_candidates integer NOT NULL,
    n_corrections integer NOT NULL,
    n_confirmed integer NOT NULL,
    n_duplicates_merged integer NOT NULL,
    n_excluded_leakage integer NOT NULL,
    n_excluded_no_embedding integer NOT NULL,
    n_train integer NOT NULL,
    n_heldout integer NOT NULL,
    content_hash text NOT NULL,
    settings jsonb NOT NULL,
    CONSTRAINT training_set_not_empty CHECK (((n_train + n_heldout) > 0)),
    CONSTRAINT training_sets_content_hash_check CHECK ((content_hash ~ '^[0-9a-f]{64}$'::text))
);
ALTER TABLE reflect.training_sets OWNER TO reflect_owner;
CREATE VIEW reflect.training_set_summary AS
 SELECT t.id,
    t.owner,
    mv.name AS base_model_version,
    t.created_by,
    t.created_at,
    t.n_candidates,
    t.n_corrections,
    t.n_confirmed,
    t.n_duplicates_merged,
    t.n_excluded_leakage,
    t.n_excluded_no_embedding,
    t.n_train,
    t.n_heldout,
    t.content_hash,
    t.settings
   FROM (reflect.training_sets t
     JOIN reflect.model_versions mv ON ((mv.id = t.base_model_version_id)));
ALTER TABLE reflect.training_set_summary OWNER TO reflect_owner;
ALTER TABLE reflect.training_sets ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.training_sets_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE VIEW reflect.training_status AS
 SELECT j.id AS job_id,
    (j.state)::text AS state,
    j.attempts,
    ((j.payload ->> 'training_set_id'::text))::integer AS training_set_id,
    p.step,
    p.total_steps,
    p.epoch,
    p.loss,
    p.tokens_per_s,
    p.eta_s,
    p.rss_mb,
    p.recorded_at,
    j.last_error,
    m.decision AS memory_decision,
    m.estimate_mb AS memory_estimate_mb,
    m.available_mb AS memory_available_mb,
    m.gradient_checkpointing,
    m.serving_paused,
    m.detail AS memory_detail
   FROM ((reflect.jobs j
     LEFT JOIN LATERAL ( SELECT tp.job_id,
            tp.step,
            tp.total_steps,
            tp.epoch,
            tp.loss,
            tp.tokens_per_s,
            tp.eta_s,
            tp.rss_mb,
            tp.recorded_at
           FROM reflect.training_progress tp
          WHERE (tp.job_id = j.id)
          ORDER BY tp.step DESC
         LIMIT 1) p ON (true))
     LEFT JOIN LATERAL ( SELECT tm.job_id,
            tm.attempt,
            tm.estimate_mb,
            tm.available_mb,
            tm.reserve_mb,
            tm.gradient_checkpointing,
            tm.serving_paused,
            tm.decision,
            tm.detail,
            tm.peak_rss_mb,
            tm.decided_at
           FROM reflect.training_memory tm
          WHERE (tm.job_id = j.id)
          ORDER BY tm.attempt DESC
         LIMIT 1) m ON (true))
  WHERE (j.kind = 'finetune'::text);
ALTER TABLE reflect.training_status OWNER TO reflect_owner;
CREATE TABLE reflect.tuning_changes (
    id bigint NOT NULL,
    model_version_id integer NOT NULL,
    knob text NOT NULL,
    old_value double precision,
    new_value double precision NOT NULL,
    reason text NOT NULL,
    evidence jsonb NOT NULL,
    decided_by name NOT NULL,
    decided_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    reverted_at timestamp with time zone,
    reverted_by name,
    CONSTRAINT reverted_together CHECK (((reverted_at IS NULL) = (reverted_by IS NULL))),
    CONSTRAINT tuning_changes_knob_check CHECK ((knob = ANY (ARRAY['confidence_threshold'::text, 'memory_max_distance'::text, 'memory_k'::text])))
);
ALTER TABLE reflect.tuning_changes OWNER TO reflect_owner;
ALTER TABLE reflect.tuning_changes ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME reflect.tuning_changes_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE VIEW reflect.tuning_history AS
 SELECT t.id,
    mv.name AS model_version,
    t.knob,
    t.old_value,
    t.new_value,
    t.reason,
    t.evidence,
    t.decided_by,
    t.decided_at,
    t.reverted_at,
    t.reverted_by,
    ((t.reverted_at IS NULL) AND (t.id = ( SELECT max(t2.id) AS max
           FROM reflect.tuning_changes t2
          WHERE ((t2.model_version_id = t.model_version_id) AND (t2.knob = t.knob) AND (t2.reverted_at IS NULL))))) AS in_force
   FROM (reflect.tuning_changes t
     JOIN reflect.model_versions mv ON ((mv.id = t.model_version_id)));
ALTER TABLE reflect.tuning_history OWNER TO reflect_owner;
CREATE TABLE reflect.workers (
    worker_id text NOT NULL,
    hostname text NOT NULL,
    pid integer NOT NULL,
    model_version_ids integer[] NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    last_seen_at timestamp with time zone DEFAULT now() NOT NULL,
    stopped_at timestamp with time zone,
    CONSTRAINT workers_worker_id_check CHECK (((length(worker_id) >= 1) AND (length(worker_id) <= 200)))
);
ALTER TABLE reflect.workers OWNER TO reflect_owner;
CREATE VIEW reflect.worker_status AS
 SELECT w.worker_id,
    w.hostname,
    w.pid,
    ARRAY( SELECT mv.name
           FROM reflect.model_versions mv
          WHERE (mv.id = ANY (w.model_version_ids))
          ORDER BY mv.id) AS model_versions,
    w.started_at,
    w.last_seen_at,
    w.stopped_at,
    ((w.stopped_at IS NULL) AND (w.last_seen_at > (now() - make_interval(secs => (s.live_s)::double precision)))) AS live
   FROM (reflect.workers w
     CROSS JOIN ( SELECT ((settings.value #>> '{}'::text[]))::integer AS live_s
           FROM reflect.settings
          WHERE (settings.key = 'worker_live_s'::text)) s);
ALTER TABLE reflect.worker_status OWNER TO reflect_owner;
CREATE TABLE reflect_meta.schema_migrations (
    name text NOT NULL,
    sha256 text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL,
    applied_by name DEFAULT SESSION_USER NOT NULL
);
ALTER TABLE reflect_meta.schema_migrations OWNER TO postgres;
ALTER TABLE ONLY reflect.answer_candidates
    ADD CONSTRAINT answer_candidates_pkey PRIMARY KEY (request_id, n);
ALTER TABLE ONLY reflect.answer_memories
    ADD CONSTRAINT answer_memories_pkey PRIMARY KEY (request_id, memory_request_id);
ALTER TABLE ONLY reflect.answer_signals
    ADD CONSTRAINT answer_signals_pkey PRIMARY KEY (request_id, name);
ALTER TABLE ONLY reflect.answer_states
    ADD CONSTRAINT answer_states_pkey PRIMARY KEY (request_id);
ALTER TABLE ONLY reflect.answer_tokens
    ADD CONSTRAINT answer_tokens_pkey PRIMARY KEY (request_id);
ALTER TABLE ONLY reflect.answers
    ADD CONSTRAINT answers_pkey PRIMARY KEY (request_id);
ALTER TABLE ONLY reflect.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.apps
    ADD CONSTRAINT apps_login_key UNIQUE (login);
ALTER TABLE ONLY reflect.apps
    ADD CONSTRAINT apps_pkey PRIMARY KEY (name);
ALTER TABLE ONLY reflect.calibrators
    ADD CONSTRAINT calibrators_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.canaries
    ADD CONSTRAINT canaries_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.critiques
    ADD CONSTRAINT critiques_pkey PRIMARY KEY (request_id);
ALTER TABLE ONLY reflect.decryption_audit
    ADD CONSTRAINT decryption_audit_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.eval_items
    ADD CONSTRAINT eval_items_pkey PRIMARY KEY (dataset, item_id);
ALTER TABLE ONLY reflect.eval_requests
    ADD CONSTRAINT eval_requests_pkey PRIMARY KEY (request_id);
ALTER TABLE ONLY reflect.feedback
    ADD CONSTRAINT feedback_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.gate_items
    ADD CONSTRAINT gate_items_job_id_candidate_request_id_key UNIQUE (job_id, candidate_request_id);
ALTER TABLE ONLY reflect.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.key_verifiers
    ADD CONSTRAINT key_verifiers_pkey PRIMARY KEY (key_id);
ALTER TABLE ONLY reflect.memories
    ADD CONSTRAINT memories_pkey PRIMARY KEY (request_id);
ALTER TABLE ONLY reflect.memory_lookups
    ADD CONSTRAINT memory_lookups_pkey PRIMARY KEY (request_id);
ALTER TABLE ONLY reflect.memory_shares
    ADD CONSTRAINT memory_shares_pkey PRIMARY KEY (owner, reader);
ALTER TABLE ONLY reflect.model_versions
    ADD CONSTRAINT model_versions_name_key UNIQUE (name);
ALTER TABLE ONLY reflect.model_versions
    ADD CONSTRAINT model_versions_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.partial_answers
    ADD CONSTRAINT partial_answers_pkey PRIMARY KEY (request_id);
ALTER TABLE ONLY reflect.people
    ADD CONSTRAINT people_login_key UNIQUE (login);
ALTER TABLE ONLY reflect.people
    ADD CONSTRAINT people_pkey PRIMARY KEY (name);
ALTER TABLE ONLY reflect.promotion_decisions
    ADD CONSTRAINT promotion_decisions_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.prompt_embeddings
    ADD CONSTRAINT prompt_embeddings_pkey PRIMARY KEY (request_id);
ALTER TABLE ONLY reflect.request_events
    ADD CONSTRAINT request_events_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.requests
    ADD CONSTRAINT requests_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.retention_items
    ADD CONSTRAINT retention_items_dataset_item_id_key UNIQUE (dataset, item_id);
ALTER TABLE ONLY reflect.retention_items
    ADD CONSTRAINT retention_items_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.settings
    ADD CONSTRAINT settings_pkey PRIMARY KEY (key);
ALTER TABLE ONLY reflect.state_probes
    ADD CONSTRAINT state_probes_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.training_examples
    ADD CONSTRAINT training_examples_pkey PRIMARY KEY (training_set_id, request_id);
ALTER TABLE ONLY reflect.training_memory
    ADD CONSTRAINT training_memory_pkey PRIMARY KEY (job_id, attempt);
ALTER TABLE ONLY reflect.training_progress
    ADD CONSTRAINT training_progress_pkey PRIMARY KEY (job_id, step);
ALTER TABLE ONLY reflect.training_sets
    ADD CONSTRAINT training_sets_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.tuning_changes
    ADD CONSTRAINT tuning_changes_pkey PRIMARY KEY (id);
ALTER TABLE ONLY reflect.workers
    ADD CONSTRAINT workers_pkey PRIMARY KEY (worker_id);
ALTER TABLE ONLY reflect_meta.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (name);
CREATE UNIQUE INDEX api_keys_live_name ON reflect.api_keys USING btree (name) WHERE (revoked_at IS NULL);
CREATE UNIQUE INDEX calibrators_one_active ON reflect.calibrators USING btree (model_version_id) WHERE is_active;
CREATE UNIQUE INDEX canaries_one_running ON reflect.canaries USING btree ((true)) WHERE (state = 'running'::text);
CREATE INDEX decryption_audit_request ON reflect.decryption_audit USING btree (request_id);
CREATE INDEX feedback_request ON reflect.feedback USING btree (request_id, id DESC);
CREATE INDEX jobs_leases ON reflect.jobs USING btree (lease_expires_at) WHERE (state = 'running'::reflect.request_state);
CREATE UNIQUE INDEX jobs_one_per_request_kind ON reflect.jobs USING btree (request_id, kind) WHERE (request_id IS NOT NULL);
CREATE INDEX jobs_queued ON reflect.jobs USING btree (priority DESC, id) WHERE (state = 'queued'::reflect.request_state);
CREATE INDEX memories_embedding ON reflect.memories USING hnsw (embedding public.vector_cosine_ops);
CREATE INDEX memories_owner ON reflect.memories USING btree (owner);
CREATE UNIQUE INDEX model_versions_one_active ON reflect.model_versions USING btree (is_active) WHERE is_active;
CREATE UNIQUE INDEX model_versions_one_per_finetune ON reflect.model_versions USING btree (finetune_job_id) WHERE (finetune_job_id IS NOT NULL);
CREATE INDEX request_events_request ON reflect.request_events USING btree (request_id);
CREATE UNIQUE INDEX requests_idempotency_key ON reflect.requests USING btree (submitted_by, idempotency_key) WHERE (idempotency_key IS NOT NULL);
CREATE INDEX requests_leases ON reflect.requests USING btree (lease_expires_at) WHERE (state = 'running'::reflect.request_state);
CREATE INDEX requests_queued ON reflect.requests USING btree (id) WHERE (state = 'queued'::reflect.request_state);
CREATE UNIQUE INDEX state_probes_one_active ON reflect.state_probes USING btree (model_version_id) WHERE is_active;
CREATE INDEX tuning_changes_in_force ON reflect.tuning_changes USING btree (model_version_id, knob, id DESC) WHERE (reverted_at IS NULL);
CREATE TRIGGER _100_append_only BEFORE DELETE OR UPDATE ON reflect.decryption_audit FOR EACH ROW EXECUTE FUNCTION reflect._append_only();
CREATE TRIGGER _100_append_only_truncate BEFORE TRUNCATE ON reflect.decryption_audit FOR EACH STATEMENT EXECUTE FUNCTION reflect._append_only();
CREATE TRIGGER _100_submit INSTEAD OF INSERT ON reflect.app_requests FOR EACH ROW EXECUTE FUNCTION reflect._app_requests_insert();
CREATE TRIGGER _900_forget_api_keys AFTER UPDATE OF revoked_at ON reflect.apps FOR EACH ROW WHEN (((new.revoked_at IS NOT NULL) AND (old.revoked_at IS NULL))) EXECUTE FUNCTION reflect._apps_after_revoke();
CREATE TRIGGER _900_notify_needs_inference AFTER INSERT ON reflect.requests FOR EACH ROW EXECUTE FUNCTION reflect._requests_after_insert();
ALTER TABLE ONLY reflect.answer_candidates
    ADD CONSTRAINT answer_candidates_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.answer_memories
    ADD CONSTRAINT answer_memories_memory_request_id_fkey FOREIGN KEY (memory_request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.answer_memories
    ADD CONSTRAINT answer_memories_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.answer_signals
    ADD CONSTRAINT answer_signals_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.answers(request_id);
ALTER TABLE ONLY reflect.answer_states
    ADD CONSTRAINT answer_states_model_version_id_fkey FOREIGN KEY (model_version_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.answer_states
    ADD CONSTRAINT answer_states_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.answer_tokens
    ADD CONSTRAINT answer_tokens_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.answers
    ADD CONSTRAINT answers_calibrator_id_fkey FOREIGN KEY (calibrator_id) REFERENCES reflect.calibrators(id);
ALTER TABLE ONLY reflect.answers
    ADD CONSTRAINT answers_model_version_id_fkey FOREIGN KEY (model_version_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.answers
    ADD CONSTRAINT answers_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.api_keys
    ADD CONSTRAINT api_keys_app_fkey FOREIGN KEY (app) REFERENCES reflect.apps(name);
ALTER TABLE ONLY reflect.calibrators
    ADD CONSTRAINT calibrators_model_version_id_fkey FOREIGN KEY (model_version_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.canaries
    ADD CONSTRAINT canaries_candidate_id_fkey FOREIGN KEY (candidate_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.canaries
    ADD CONSTRAINT canaries_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.critiques
    ADD CONSTRAINT critiques_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.answers(request_id);
ALTER TABLE ONLY reflect.decryption_audit
    ADD CONSTRAINT decryption_audit_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.eval_requests
    ADD CONSTRAINT eval_requests_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.feedback
    ADD CONSTRAINT feedback_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.gate_items
    ADD CONSTRAINT gate_items_candidate_request_id_fkey FOREIGN KEY (candidate_request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.gate_items
    ADD CONSTRAINT gate_items_example_request_id_fkey FOREIGN KEY (example_request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.gate_items
    ADD CONSTRAINT gate_items_job_id_fkey FOREIGN KEY (job_id) REFERENCES reflect.jobs(id);
ALTER TABLE ONLY reflect.gate_items
    ADD CONSTRAINT gate_items_parent_request_id_fkey FOREIGN KEY (parent_request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.gate_items
    ADD CONSTRAINT gate_items_retention_item_id_fkey FOREIGN KEY (retention_item_id) REFERENCES reflect.retention_items(id);
ALTER TABLE ONLY reflect.jobs
    ADD CONSTRAINT jobs_model_version_id_fkey FOREIGN KEY (model_version_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.jobs
    ADD CONSTRAINT jobs_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.memories
    ADD CONSTRAINT memories_feedback_id_fkey FOREIGN KEY (feedback_id) REFERENCES reflect.feedback(id);
ALTER TABLE ONLY reflect.memories
    ADD CONSTRAINT memories_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.memory_lookups
    ADD CONSTRAINT memory_lookups_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.model_versions
    ADD CONSTRAINT model_versions_base_model_version_id_fkey FOREIGN KEY (base_model_version_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.model_versions
    ADD CONSTRAINT model_versions_finetune_job_id_fkey FOREIGN KEY (finetune_job_id) REFERENCES reflect.jobs(id);
ALTER TABLE ONLY reflect.model_versions
    ADD CONSTRAINT model_versions_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.model_versions
    ADD CONSTRAINT model_versions_training_set_id_fkey FOREIGN KEY (training_set_id) REFERENCES reflect.training_sets(id);
ALTER TABLE ONLY reflect.partial_answers
    ADD CONSTRAINT partial_answers_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.promotion_decisions
    ADD CONSTRAINT promotion_decisions_candidate_id_fkey FOREIGN KEY (candidate_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.promotion_decisions
    ADD CONSTRAINT promotion_decisions_job_id_fkey FOREIGN KEY (job_id) REFERENCES reflect.jobs(id);
ALTER TABLE ONLY reflect.promotion_decisions
    ADD CONSTRAINT promotion_decisions_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.prompt_embeddings
    ADD CONSTRAINT prompt_embeddings_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.request_events
    ADD CONSTRAINT request_events_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.requests
    ADD CONSTRAINT requests_model_version_id_fkey FOREIGN KEY (model_version_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.state_probes
    ADD CONSTRAINT state_probes_model_version_id_fkey FOREIGN KEY (model_version_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.training_examples
    ADD CONSTRAINT training_examples_feedback_id_fkey FOREIGN KEY (feedback_id) REFERENCES reflect.feedback(id);
ALTER TABLE ONLY reflect.training_examples
    ADD CONSTRAINT training_examples_request_id_fkey FOREIGN KEY (request_id) REFERENCES reflect.requests(id);
ALTER TABLE ONLY reflect.training_examples
    ADD CONSTRAINT training_examples_training_set_id_fkey FOREIGN KEY (training_set_id) REFERENCES reflect.training_sets(id);
ALTER TABLE ONLY reflect.training_memory
    ADD CONSTRAINT training_memory_job_id_fkey FOREIGN KEY (job_id) REFERENCES reflect.jobs(id);
ALTER TABLE ONLY reflect.training_progress
    ADD CONSTRAINT training_progress_job_id_fkey FOREIGN KEY (job_id) REFERENCES reflect.jobs(id);
ALTER TABLE ONLY reflect.training_sets
    ADD CONSTRAINT training_sets_base_model_version_id_fkey FOREIGN KEY (base_model_version_id) REFERENCES reflect.model_versions(id);
ALTER TABLE ONLY reflect.tuning_changes
    ADD CONSTRAINT tuning_changes_model_version_id_fkey FOREIGN KEY (model_version_id) REFERENCES reflect.model_versions(id);
ALTER TABLE reflect.answer_candidates ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.answer_memories ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.answer_signals ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.answer_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.answer_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.answers ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.apps ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.calibrators ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.canaries ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.critiques ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.decryption_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.eval_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.eval_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.feedback ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.gate_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.key_verifiers ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.memories ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.memory_lookups ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.memory_shares ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.model_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.partial_answers ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.people ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.promotion_decisions ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.prompt_embeddings ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.request_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.retention_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.state_probes ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.training_examples ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.training_memory ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.training_progress ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.training_sets ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.tuning_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.workers ENABLE ROW LEVEL SECURITY;
GRANT USAGE ON SCHEMA reflect TO reflect_app;
GRANT USAGE ON SCHEMA reflect TO reflect_worker;
GRANT USAGE ON SCHEMA reflect TO reflect_analyst;
GRANT USAGE ON SCHEMA reflect TO reflect_reviewer;
GRANT USAGE ON SCHEMA reflect TO reflect_api;
REVOKE ALL ON FUNCTION reflect._app_requests_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._append_only() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._apply_confidence(p_request_id bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._apps_after_revoke() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._calibration_metrics(p_conf double precision[], p_y boolean[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._check_history(p_history jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._check_key_id(p_key_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._check_lease_seconds(p_lease_seconds integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._checked_parent(p_name text, p_parent text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._confidence(p_model_version_id integer, p_values jsonb, p_signals jsonb, p_logprob_norm double precision, OUT confidence double precision, OUT calibrator_id integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._cross_fitted(p_request_ids bigint[], p_correct boolean[], p_folds integer[], OUT confidence double precision[], OUT correct boolean[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._current_key_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._decide(p_candidate integer, p_decision text, p_reason text, p_numbers jsonb, p_rule jsonb, p_job_id bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._decrypt(p_cipher bytea, p_key_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._decrypt_or_null(p_cipher bytea, p_key_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect._decrypt_or_null(p_cipher bytea, p_key_id text) TO reflect_app;
REVOKE ALL ON FUNCTION reflect._decrypt_safe(p_cipher bytea, p_key_id text, OUT plain text, OUT ok boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._decrypts(p_cipher bytea, p_key text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._default_version() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._encrypt(p_plain text, p_key_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._encrypted_columns() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._enqueue_job(p_kind text, p_payload jsonb, p_request_id bigint, p_model_version_id integer, p_priority smallint, p_max_attempts integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._fail_undecryptable(p_request_id bigint, p_lease_token uuid, p_key_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._feature_values(p_logprob_mean double precision, p_logprob_min double precision, p_completion_tokens integer, p_signals jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._feature_values_of(p_request_id bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._feature_vector(p_request_id bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._features(p_logprob_mean double precision, p_logprob_min double precision, p_completion_tokens integer, p_signals jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._finetune_hyperparameters() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._finish_finetune(j reflect.jobs, p_result jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._finish_followup(j reflect.jobs, p_result jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._finish_gate(j reflect.jobs, p_result jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._finish_job(j reflect.jobs, p_result jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._fit_gate_calibrator(p_job_id bigint, p_version integer, p_metrics jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._fit_logistic(x double precision[], y boolean[], p_l2 double precision, OUT means double precision[], OUT stds double precision[], OUT weights double precision[], OUT iterations integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._fit_logistic_around(x double precision[], y boolean[], p_means double precision[], p_stds double precision[], p_anchor double precision[], p_penalty double precision[], OUT weights double precision[], OUT iterations integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._fit_logistic_around(x double precision[], y boolean[], p_means double precision[], p_stds double precision[], p_anchor double precision[], p_l2 double precision, p_l2_intercept double precision, OUT weights double precision[], OUT iterations integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._fit_logistic_around_kinds(x double precision[], y boolean[], p_names text[], p_means double precision[], p_stds double precision[], p_anchor double precision[], p_l2 double precision, p_l2_kind double precision, OUT weights double precision[], OUT iterations integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._gate_calibration(p_job_id bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._heldout(p_request_id bigint, p_share double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._is_blank(p_text text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._is_low_confidence(p_request_id bigint, p_params jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._job_channel(p_kind text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._key(p_key_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._key_verifier(p_key_id text, p_key text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._knob_default(p_knob text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._labels_by_kind(p_values jsonb[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._loaded_key_ids() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._logistic(x double precision[], p_means double precision[], p_stds double precision[], p_weights double precision[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._logistic_rows(x double precision[], p_means double precision[], p_stds double precision[], p_weights double precision[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._low_confidence_action(p_params jsonb, p_confidence double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._matrix(p_values jsonb[], p_names text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._memory_max_distance(p_params jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._memory_owners(p_reader name) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._normalize_params(p jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._paired(p_job_id bigint, p_part text, p_z double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._paired_parts(p_job_id bigint, p_parts text[], p_z double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._param_number(p jsonb, p_name text, p_min numeric, p_max numeric, p_integer boolean, p_default numeric) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._penalised_log_loss(zx double precision[], y boolean[], w double precision[], p_anchor double precision[], pen double precision[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._probe_signal(p_request_id bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._queue_followups(p_request_id bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._reap_expired_jobs() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._record_answer(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._record_feedback(r reflect.requests, p_is_correct boolean, p_rating integer, p_correction text, p_source text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._requests_after_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._root_version(p_id integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._sampled_for_review(p_request_id bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect._sampled_for_review(p_request_id bigint) TO reflect_reviewer;
GRANT ALL ON FUNCTION reflect._sampled_for_review(p_request_id bigint) TO reflect_analyst;
REVOKE ALL ON FUNCTION reflect._setting_float(p_key text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._setting_int(p_key text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._setting_text(p_key text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._sigmoid(z double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._signals_of(p_request_id bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._solve(a double precision[], b double precision[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._store_signals(p_request_id bigint, p_signals jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._take_job_lease(p_job_id bigint, p_lease_token uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._take_lease(p_request_id bigint, p_lease_token uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._training_memory_policy(p_job_id bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._tuned(p_model_version_id integer, p_knob text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect._uniform(p_a bigint, p_b bigint, p_stream bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect._uniform(p_a bigint, p_b bigint, p_stream bigint) TO reflect_analyst;
GRANT ALL ON FUNCTION reflect._uniform(p_a bigint, p_b bigint, p_stream bigint) TO reflect_app;
REVOKE ALL ON FUNCTION reflect._vector(p_values jsonb, p_names text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.accuracy_at_coverage_v1(p_confidence double precision[], p_correct boolean[], p_coverage double precision) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.accuracy_at_coverage_v1(p_confidence double precision[], p_correct boolean[], p_coverage double precision) TO reflect_analyst;
GRANT ALL ON FUNCTION reflect.accuracy_at_coverage_v1(p_confidence double precision[], p_correct boolean[], p_coverage double precision) TO reflect_app;
GRANT ALL ON FUNCTION reflect.accuracy_at_coverage_v1(p_confidence double precision[], p_correct boolean[], p_coverage double precision) TO reflect_reviewer;
REVOKE ALL ON FUNCTION reflect.activate_model_version_v1(p_name text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.active_probe_v1(p_model_version text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.add_retention_items_v1(p_items jsonb, p_embedding_model text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.add_signals_v1(p_request_id bigint, p_signals jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.add_signals_v1(p_request_id bigint, p_signals jsonb) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.auroc_v1(p_scores double precision[], p_positives boolean[]) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.auroc_v1(p_scores double precision[], p_positives boolean[]) TO reflect_analyst;
GRANT ALL ON FUNCTION reflect.auroc_v1(p_scores double precision[], p_positives boolean[]) TO reflect_app;
GRANT ALL ON FUNCTION reflect.auroc_v1(p_scores double precision[], p_positives boolean[]) TO reflect_reviewer;
REVOKE ALL ON FUNCTION reflect.bootstrap_v1(p_confidence double precision[], p_correct boolean[], p_resamples integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.bootstrap_v1(p_confidence double precision[], p_correct boolean[], p_resamples integer) TO reflect_analyst;
GRANT ALL ON FUNCTION reflect.bootstrap_v1(p_confidence double precision[], p_correct boolean[], p_resamples integer) TO reflect_app;
REVOKE ALL ON FUNCTION reflect.brier_v1(p_confidence double precision[], p_correct boolean[]) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.brier_v1(p_confidence double precision[], p_correct boolean[]) TO reflect_analyst;
GRANT ALL ON FUNCTION reflect.brier_v1(p_confidence double precision[], p_correct boolean[]) TO reflect_app;
GRANT ALL ON FUNCTION reflect.brier_v1(p_confidence double precision[], p_correct boolean[]) TO reflect_reviewer;
REVOKE ALL ON FUNCTION reflect.calibration_features_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.calibration_features_v2() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.canary_step_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.checkpoint_job_v1(p_job_id bigint, p_lease_token uuid, p_checkpoint jsonb, p_lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.checkpoint_job_v1(p_job_id bigint, p_lease_token uuid, p_checkpoint jsonb, p_lease_seconds integer) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.claim_followups_v1(p_worker_id text, p_limit integer, p_lease_seconds integer, p_model_version_ids integer[]) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.claim_followups_v1(p_worker_id text, p_limit integer, p_lease_seconds integer, p_model_version_ids integer[]) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.claim_jobs_v1(p_worker_id text, p_kinds text[], p_limit integer, p_lease_seconds integer, p_model_version_ids integer[]) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.claim_jobs_v1(p_worker_id text, p_kinds text[], p_limit integer, p_lease_seconds integer, p_model_version_ids integer[]) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.claim_v1(p_worker_id text, p_limit integer, p_lease_seconds integer, p_model_version_ids integer[]) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.claim_v1(p_worker_id text, p_limit integer, p_lease_seconds integer, p_model_version_ids integer[]) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.complete_followup_v1(p_followup_id bigint, p_lease_token uuid, p_signals jsonb, p_critique text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.complete_followup_v1(p_followup_id bigint, p_lease_token uuid, p_signals jsonb, p_critique text) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.complete_job_v1(p_job_id bigint, p_lease_token uuid, p_result jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.complete_job_v1(p_job_id bigint, p_lease_token uuid, p_result jsonb) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.complete_v1(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.complete_v1(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.complete_v2(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision, p_signals jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.complete_v2(p_request_id bigint, p_lease_token uuid, p_answer text, p_finish_reason text, p_prompt_tokens integer, p_token_logprobs real[], p_prompt_eval_ms double precision, p_generation_ms double precision, p_signals jsonb) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.create_api_key_v1(p_name text, p_app text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.curate_training_set_v1(p_owner name, p_model_version text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.decide_model_version_v1(p_name text, p_decision text, p_reason text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.ece_floor_v1(p_confidence double precision[], p_sims integer, p_bins integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.ece_floor_v1(p_confidence double precision[], p_sims integer, p_bins integer) TO reflect_analyst;
GRANT ALL ON FUNCTION reflect.ece_floor_v1(p_confidence double precision[], p_sims integer, p_bins integer) TO reflect_app;
REVOKE ALL ON FUNCTION reflect.ece_v1(p_confidence double precision[], p_correct boolean[], p_bins integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.ece_v1(p_confidence double precision[], p_correct boolean[], p_bins integer) TO reflect_analyst;
GRANT ALL ON FUNCTION reflect.ece_v1(p_confidence double precision[], p_correct boolean[], p_bins integer) TO reflect_app;
GRANT ALL ON FUNCTION reflect.ece_v1(p_confidence double precision[], p_correct boolean[], p_bins integer) TO reflect_reviewer;
REVOKE ALL ON FUNCTION reflect.ensure_login_role_v1(p_login text, p_group text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.eval_metrics_v1(p_confidence double precision[], p_correct boolean[], p_resamples integer, p_coverage double precision) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.eval_metrics_v1(p_confidence double precision[], p_correct boolean[], p_resamples integer, p_coverage double precision) TO reflect_analyst;
GRANT ALL ON FUNCTION reflect.eval_metrics_v1(p_confidence double precision[], p_correct boolean[], p_resamples integer, p_coverage double precision) TO reflect_app;
REVOKE ALL ON FUNCTION reflect.evidence_v1(p_request_id bigint, p_lease_token uuid, p_k integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.evidence_v1(p_request_id bigint, p_lease_token uuid, p_k integer) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.export_calibrator_v1(p_model_version text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.fail_followup_v1(p_followup_id bigint, p_lease_token uuid, p_error text, p_release boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.fail_followup_v1(p_followup_id bigint, p_lease_token uuid, p_error text, p_release boolean) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.fail_job_v1(p_job_id bigint, p_lease_token uuid, p_error text, p_retryable boolean, p_release boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.fail_job_v1(p_job_id bigint, p_lease_token uuid, p_error text, p_retryable boolean, p_release boolean) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.fail_v1(p_request_id bigint, p_lease_token uuid, p_error text, p_retryable boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.fail_v1(p_request_id bigint, p_lease_token uuid, p_error text, p_retryable boolean) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.feedback_v1(p_request_id bigint, p_is_correct boolean, p_rating integer, p_correction text, p_source text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.feedback_v1(p_request_id bigint, p_is_correct boolean, p_rating integer, p_correction text, p_source text) TO reflect_app;
REVOKE ALL ON FUNCTION reflect.finetune_examples_v1(p_job_id bigint, p_lease_token uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.finetune_examples_v1(p_job_id bigint, p_lease_token uuid) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.finetune_plan_v1(p_job_id bigint, p_lease_token uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.finetune_plan_v1(p_job_id bigint, p_lease_token uuid) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.finetune_when_ready_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.fit_calibrator_v1(p_model_version text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.gate_answers_v1(p_job_id bigint, p_lease_token uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.gate_answers_v1(p_job_id bigint, p_lease_token uuid) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.gate_rephrase_v1(p_job_id bigint, p_lease_token uuid, p_instruction text, p_max_tokens integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.gate_rephrase_v1(p_job_id bigint, p_lease_token uuid, p_instruction text, p_max_tokens integer) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.gate_submit_v1(p_job_id bigint, p_lease_token uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.gate_submit_v1(p_job_id bigint, p_lease_token uuid) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.gate_submit_v2(p_job_id bigint, p_lease_token uuid, p_rephrasings jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.gate_submit_v2(p_job_id bigint, p_lease_token uuid, p_rephrasings jsonb) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.heartbeat_followups_v1(p_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.heartbeat_followups_v1(p_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.heartbeat_jobs_v1(p_job_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.heartbeat_jobs_v1(p_job_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.heartbeat_v1(p_request_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.heartbeat_v1(p_request_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.install_calibrator_v1(p_model_version text, p_doc jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.install_probe_v1(p_model_version text, p_weights public.vector, p_bias double precision, p_n_train integer, p_metrics jsonb, p_activate boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.job_history_v1(p_job_id bigint, p_lease_token uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.job_history_v1(p_job_id bigint, p_lease_token uuid) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.job_input_v1(p_job_id bigint, p_lease_token uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.job_input_v1(p_job_id bigint, p_lease_token uuid) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.key_usage_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.live_worker_count_v1(p_model_version text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.live_worker_count_v1(p_model_version text) TO reflect_app;
GRANT ALL ON FUNCTION reflect.live_worker_count_v1(p_model_version text) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.model_versions_to_serve_v1(p_names text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.model_versions_to_serve_v1(p_names text[]) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.model_versions_to_serve_v2(p_backend text, p_names text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.model_versions_to_serve_v2(p_backend text, p_names text[]) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.model_versions_to_serve_v3(p_backend text, p_names text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.model_versions_to_serve_v3(p_backend text, p_names text[]) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.model_versions_to_serve_v4(p_backend text, p_names text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.model_versions_to_serve_v4(p_backend text, p_names text[]) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.optional_features_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.probe_training_set_v1(p_model_version text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.purge_answer_states_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.rate_critique_v1(p_request_id bigint, p_rating integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.rate_critique_v1(p_request_id bigint, p_rating integer) TO reflect_app;
GRANT ALL ON FUNCTION reflect.rate_critique_v1(p_request_id bigint, p_rating integer) TO reflect_reviewer;
REVOKE ALL ON FUNCTION reflect.reap_expired_v1() FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.reap_expired_v1() TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.recall_v1(p_request_id bigint, p_lease_token uuid, p_model text, p_embedding public.vector, p_k integer) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.recall_v1(p_request_id bigint, p_lease_token uuid, p_model text, p_embedding public.vector, p_k integer) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.record_candidate_v1(p_request_id bigint, p_lease_token uuid, p_answer text, p_token_logprobs real[], p_signals jsonb, p_evidence_request_ids bigint[]) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.record_candidate_v1(p_request_id bigint, p_lease_token uuid, p_answer text, p_token_logprobs real[], p_signals jsonb, p_evidence_request_ids bigint[]) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.record_training_memory_v1(p_job_id bigint, p_lease_token uuid, p_estimate_mb double precision, p_available_mb double precision, p_reserve_mb double precision, p_gradient_checkpointing boolean, p_serving_paused boolean, p_decision text, p_detail text, p_peak_rss_mb double precision) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.record_training_memory_v1(p_job_id bigint, p_lease_token uuid, p_estimate_mb double precision, p_available_mb double precision, p_reserve_mb double precision, p_gradient_checkpointing boolean, p_serving_paused boolean, p_decision text, p_detail text, p_peak_rss_mb double precision) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.record_training_progress_v1(p_job_id bigint, p_lease_token uuid, p_step integer, p_total_steps integer, p_epoch double precision, p_loss double precision, p_tokens_per_s double precision, p_eta_s double precision, p_rss_mb double precision) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.record_training_progress_v1(p_job_id bigint, p_lease_token uuid, p_step integer, p_total_steps integer, p_epoch double precision, p_loss double precision, p_tokens_per_s double precision, p_eta_s double precision, p_rss_mb double precision) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.refit_calibrators_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.register_eval_items_v1(p_dataset text, p_item_ids text[], p_splits text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.register_model_version_v1(p_name text, p_gguf_path text, p_sha256 text, p_source text, p_n_ctx integer, p_parent text, p_activate boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.register_model_version_v2(p_name text, p_gguf_path text, p_sha256 text, p_source text, p_n_ctx integer, p_parent text, p_activate boolean, p_backend text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.register_remote_model_version_v1(p_name text, p_base_url text, p_remote_model text, p_n_ctx integer, p_parent text, p_activate boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.release_v1(p_request_id bigint, p_lease_token uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.release_v1(p_request_id bigint, p_lease_token uuid) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.report_partial_v1(p_request_id bigint, p_lease_token uuid, p_text text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.report_partial_v1(p_request_id bigint, p_lease_token uuid, p_text text) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.request_finetune_v1(p_owner name, p_model_version text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.request_history_v1(p_request_id bigint, p_lease_token uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.request_history_v1(p_request_id bigint, p_lease_token uuid) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.reveal_request_v1(p_request_id bigint, p_purpose text, p_redacted boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.reveal_request_v1(p_request_id bigint, p_purpose text, p_redacted boolean) TO reflect_reviewer;
REVOKE ALL ON FUNCTION reflect.revert_tuning_v1(p_change_id bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.review_v1(p_request_id bigint, p_is_correct boolean, p_correction text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.review_v1(p_request_id bigint, p_is_correct boolean, p_correction text) TO reflect_reviewer;
REVOKE ALL ON FUNCTION reflect.revoke_api_key_v1(p_name_or_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.revoke_person_v1(p_name text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.rollback_model_version_v1(p_reason text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.rotate_key_v1(p_from_key_id text, p_batch integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.set_person_v1(p_name text, p_role text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.set_probe_signals_v1(p_model_version text, p_request_ids bigint[], p_values double precision[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.share_memories_v1(p_reader name, p_share boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.share_memories_v1(p_reader name, p_share boolean) TO reflect_app;
REVOKE ALL ON FUNCTION reflect.signal_orientations_v1() FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.signal_orientations_v1() TO reflect_analyst;
GRANT ALL ON FUNCTION reflect.signal_orientations_v1() TO reflect_app;
GRANT ALL ON FUNCTION reflect.signal_orientations_v1() TO reflect_reviewer;
REVOKE ALL ON FUNCTION reflect.snooze_job_v1(p_job_id bigint, p_lease_token uuid, p_seconds double precision, p_checkpoint jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.snooze_job_v1(p_job_id bigint, p_lease_token uuid, p_seconds double precision, p_checkpoint jsonb) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.store_answer_state_v1(p_request_id bigint, p_lease_token uuid, p_state public.vector) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.store_answer_state_v1(p_request_id bigint, p_lease_token uuid, p_state public.vector) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.store_answer_tokens_v1(p_request_id bigint, p_lease_token uuid, p_tokens jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.store_answer_tokens_v1(p_request_id bigint, p_lease_token uuid, p_tokens jsonb) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.submit_v1(p_prompt text, p_system_prompt text, p_params jsonb, p_idempotency_key text, p_caller text, p_model_version text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.submit_v1(p_prompt text, p_system_prompt text, p_params jsonb, p_idempotency_key text, p_caller text, p_model_version text) TO reflect_app;
REVOKE ALL ON FUNCTION reflect.submit_v2(p_prompt text, p_system_prompt text, p_params jsonb, p_idempotency_key text, p_caller text, p_model_version text, p_history jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.submit_v2(p_prompt text, p_system_prompt text, p_params jsonb, p_idempotency_key text, p_caller text, p_model_version text, p_history jsonb) TO reflect_app;
REVOKE ALL ON FUNCTION reflect.tag_eval_request_v1(p_request_id bigint, p_dataset text, p_item_id text, p_run_label text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.tag_eval_request_v1(p_request_id bigint, p_dataset text, p_item_id text, p_run_label text) TO reflect_app;
REVOKE ALL ON FUNCTION reflect.tune_confidence_threshold_v1(p_model_version text, p_target_accuracy double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.tune_memory_v1(p_model_version text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.tune_when_ready_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION reflect.use_key_v1(p_key_id text, p_key text, p_current boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.use_key_v1(p_key_id text, p_key text, p_current boolean) TO reflect_app;
GRANT ALL ON FUNCTION reflect.use_key_v1(p_key_id text, p_key text, p_current boolean) TO reflect_worker;
GRANT ALL ON FUNCTION reflect.use_key_v1(p_key_id text, p_key text, p_current boolean) TO reflect_reviewer;
REVOKE ALL ON FUNCTION reflect.verify_api_key_v1(p_key text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.verify_api_key_v1(p_key text) TO reflect_api;
REVOKE ALL ON FUNCTION reflect.verify_person_v1(p_name text, p_password text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.verify_person_v1(p_name text, p_password text) TO reflect_api;
REVOKE ALL ON FUNCTION reflect.worker_seen_v1(p_worker_id text, p_model_version_ids integer[], p_pid integer, p_hostname text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.worker_seen_v1(p_worker_id text, p_model_version_ids integer[], p_pid integer, p_hostname text) TO reflect_worker;
REVOKE ALL ON FUNCTION reflect.worker_stopped_v1(p_worker_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION reflect.worker_stopped_v1(p_worker_id text) TO reflect_worker;
GRANT SELECT ON TABLE reflect.api_key_list TO reflect_analyst;
GRANT SELECT,INSERT ON TABLE reflect.app_requests TO reflect_app;
GRANT SELECT ON TABLE reflect.labelled_answers TO reflect_analyst;
GRANT SELECT ON TABLE reflect.calibration_daily TO reflect_analyst;
GRANT SELECT ON TABLE reflect.calibration_daily TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.calibrator_history TO reflect_analyst;
GRANT SELECT ON TABLE reflect.canary_status TO reflect_analyst;
GRANT SELECT ON TABLE reflect.canary_status TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.decryption_log TO reflect_analyst;
GRANT SELECT ON TABLE reflect.eval_results TO reflect_analyst;
GRANT SELECT ON TABLE reflect.promotion_decisions TO reflect_analyst;
GRANT SELECT ON TABLE reflect.model_states TO reflect_analyst;
GRANT SELECT ON TABLE reflect.model_states TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.model_version_daily TO reflect_analyst;
GRANT SELECT ON TABLE reflect.model_version_daily TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.model_version_registry TO reflect_analyst;
GRANT SELECT ON TABLE reflect.model_version_registry TO reflect_app;
GRANT SELECT ON TABLE reflect.model_version_registry TO reflect_worker;
GRANT SELECT ON TABLE reflect.queue_status TO reflect_analyst;
GRANT SELECT ON TABLE reflect.queue_status TO reflect_app;
GRANT SELECT ON TABLE reflect.queue_status TO reflect_worker;
GRANT SELECT ON TABLE reflect.queue_status TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.reliability TO reflect_analyst;
GRANT SELECT ON TABLE reflect.reliability TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.request_audit TO reflect_analyst;
GRANT SELECT ON TABLE reflect.request_audit TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.request_metrics TO reflect_analyst;
GRANT SELECT ON TABLE reflect.request_metrics TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.review_memories TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.review_memories TO reflect_analyst;
GRANT SELECT ON TABLE reflect.review_queue TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.review_queue TO reflect_analyst;
GRANT SELECT ON TABLE reflect.signal_auroc TO reflect_analyst;
GRANT SELECT ON TABLE reflect.signal_auroc TO reflect_reviewer;
GRANT SELECT ON TABLE reflect.training_set_summary TO reflect_analyst;
GRANT SELECT ON TABLE reflect.training_status TO reflect_analyst;
GRANT SELECT ON TABLE reflect.tuning_history TO reflect_analyst;
GRANT SELECT ON TABLE reflect.worker_status TO reflect_analyst;
GRANT SELECT ON TABLE reflect.worker_status TO reflect_reviewer;
