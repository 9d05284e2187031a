SET LOCAL ROLE reflect_owner;

-- Follow-ups (critique, agreement) are queued when an answer is recorded: for all evaluation traffic, and
-- for critique_fraction / agreement_fraction of the rest; a fraction of 0 turns that follow-up off for all
-- traffic. Workers take them when no request is waiting.
CREATE OR REPLACE FUNCTION reflect._queue_followups(p_request_id bigint)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_eval boolean;
  v_n integer;
BEGIN
  SELECT r.caller = 'pgreflect-eval' INTO v_eval FROM reflect.requests r WHERE r.id = p_request_id;
  INSERT INTO reflect.followups (request_id, kind)
  SELECT p_request_id, k FROM (VALUES ('critique', reflect._setting_float('critique_fraction')),
                                      ('agreement', reflect._setting_float('agreement_fraction'))) f(k, fraction)
  WHERE fraction > 0 AND (coalesce(v_eval, false) OR random() < fraction)
  ON CONFLICT (request_id, kind) DO NOTHING;
  GET DIAGNOSTICS v_n = ROW_COUNT;
  IF v_n > 0 THEN
    PERFORM pg_notify('needs_inference', p_request_id::text);
  END IF;
  RETURN v_n;
END
$$;

CREATE OR REPLACE FUNCTION reflect.claim_followups_v1(
  p_worker_id text,
  p_limit integer,
  p_lease_seconds integer,
  p_model_version_ids integer[] DEFAULT NULL
)
RETURNS TABLE (followup_id bigint, lease_token uuid, kind text, request_id bigint, model_version_id integer,
               prompt text, system_prompt text, answer text, params jsonb, samples integer,
               temperature double precision)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
  v_lease interval := reflect._check_lease_seconds(p_lease_seconds);
  v_keys text[] := reflect._loaded_key_ids();
  c record;
  v_prompt record;
  v_system record;
  v_answer record;
  v_want integer := p_limit;
  v_seen integer;
  v_bad integer;
BEGIN
  IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
    RAISE EXCEPTION 'claim limit must be between 1 and 1000' USING ERRCODE = 'PR001';
  END IF;
  -- Each undecryptable follow-up is failed and replaced by the next queued one.
  LOOP
    v_seen := 0;
    v_bad := 0;
    FOR c IN
      WITH picked AS (
        SELECT f.id FROM reflect.followups f
        JOIN reflect.requests r ON r.id = f.request_id
        WHERE f.state = 'queued'
          AND (p_model_version_ids IS NULL OR r.model_version_id = ANY (p_model_version_ids))
          AND r.key_id = ANY (v_keys)
        ORDER BY f.id
        LIMIT v_want
        FOR UPDATE OF f SKIP LOCKED
      ), claimed AS (
        UPDATE reflect.followups f
        SET state = 'running', attempts = f.attempts + 1, lease_token = gen_random_uuid(),
            lease_expires_at = clock_timestamp() + v_lease, worker_id = p_worker_id
        FROM picked WHERE f.id = picked.id
        RETURNING f.*
      )
      SELECT cl.id, cl.lease_token, cl.kind, cl.request_id, r.model_version_id, r.key_id, r.prompt_enc,
             r.system_prompt_enc, a.answer_enc, a.key_id AS answer_key_id, r.params
      FROM claimed cl
      JOIN reflect.requests r ON r.id = cl.request_id
      JOIN reflect.answers a ON a.request_id = cl.request_id
      ORDER BY cl.id
    LOOP
      v_seen := v_seen + 1;
      SELECT * INTO v_prompt FROM reflect._decrypt_safe(c.prompt_enc, c.key_id);
      SELECT * INTO v_system FROM reflect._decrypt_safe(c.system_prompt_enc, c.key_id);
      SELECT * INTO v_answer FROM reflect._decrypt_safe(c.answer_enc, c.answer_key_id);
      IF NOT (v_prompt.ok AND v_system.ok AND v_answer.ok) THEN
        UPDATE reflect.followups f
        SET state = 'failed', lease_token = NULL, lease_expires_at = NULL, finished_at = clock_timestamp(),
            last_error = format('cannot decrypt request %s with the key registered for key id %s', c.request_id,
                                c.key_id)
        WHERE f.id = c.id;
        v_bad := v_bad + 1;
        CONTINUE;
      END IF;
      followup_id := c.id;
      lease_token := c.lease_token;
      kind := c.kind;
      request_id := c.request_id;
      model_version_id := c.model_version_id;
      prompt := v_prompt.plain;
      system_prompt := v_system.plain;
      answer := v_answer.plain;
      params := c.params;
      samples := reflect._setting_int('agreement_samples');
      temperature := reflect._setting_float('agreement_temperature');
      RETURN NEXT;
    END LOOP;
    EXIT WHEN v_bad = 0 OR v_seen = 0;
    v_want := v_bad;
  END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION reflect._take_followup_lease(p_followup_id bigint, p_lease_token uuid)
RETURNS reflect.followups
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  f reflect.followups;
BEGIN
  SELECT * INTO f FROM reflect.followups
  WHERE id = p_followup_id AND state = 'running' AND lease_token = p_lease_token FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'stale lease: follow-up % is not running under this lease token', p_followup_id
      USING ERRCODE = 'PR002';
  END IF;
  RETURN f;
END
$$;

-- Records a follow-up's result: signals (agreement), and for a critique the JSON itself, validated here,
-- encrypted with the request's key, with its verdict as the critique_verdict signal. Then the answer's
-- calibrated confidence is recomputed.
CREATE OR REPLACE FUNCTION reflect.complete_followup_v1(
  p_followup_id bigint,
  p_lease_token uuid,
  p_signals jsonb,
  p_critique text DEFAULT NULL
)
RETURNS double precision
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  f reflect.followups;
  v_key text;
  c jsonb;
  v_verdict text;
  v_signals jsonb := coalesce(p_signals, '{}'::jsonb);
BEGIN
  f := reflect._take_followup_lease(p_followup_id, p_lease_token);
  IF f.kind = 'critique' THEN
    BEGIN
      c := p_critique::jsonb;
    EXCEPTION WHEN others THEN
      RAISE EXCEPTION 'critique is not valid JSON' USING ERRCODE = 'PR001';
    END;
    v_verdict := c ->> 'verdict';
    IF jsonb_typeof(c) <> 'object' OR v_verdict IS NULL
       OR v_verdict NOT IN ('correct', 'partially_correct', 'incorrect', 'unsure')
       OR jsonb_typeof(c -> 'issues') <> 'array' THEN
      RAISE EXCEPTION 'critique must have a verdict (correct, partially_correct, incorrect, unsure) and issues'
        USING ERRCODE = 'PR001';
    END IF;
    SELECT key_id INTO v_key FROM reflect.requests WHERE id = f.request_id;
    INSERT INTO reflect.critiques (request_id, key_id, critique_enc, verdict, n_issues, max_severity)
    VALUES (f.request_id, v_key, reflect._encrypt(p_critique, v_key), v_verdict, jsonb_array_length(c -> 'issues'),
            (SELECT s FROM jsonb_array_elements(c -> 'issues') i, LATERAL (SELECT i ->> 'severity' AS s) x
             WHERE s IN ('low', 'medium', 'high')
             ORDER BY array_position(ARRAY['high', 'medium', 'low'], s) LIMIT 1))
    ON CONFLICT (request_id) DO UPDATE
      SET critique_enc = excluded.critique_enc, verdict = excluded.verdict, n_issues = excluded.n_issues,
          max_severity = excluded.max_severity, created_at = now(), rating = NULL, rated_by = NULL;
    v_signals := v_signals || jsonb_build_object('critique_verdict',
      CASE v_verdict WHEN 'correct' THEN 1.0 WHEN 'partially_correct' THEN 0.5 WHEN 'unsure' THEN 0.5 ELSE 0.0 END);
  END IF;
  PERFORM reflect._store_signals(f.request_id, v_signals);
  UPDATE reflect.followups SET state = 'succeeded', lease_token = NULL, lease_expires_at = NULL,
                               finished_at = clock_timestamp(), last_error = NULL
  WHERE id = f.id;
  RETURN reflect._apply_confidence(f.request_id);
END
$$;

-- A failed follow-up is retried once (or given back untouched with p_release, on shutdown).
CREATE OR REPLACE FUNCTION reflect.fail_followup_v1(p_followup_id bigint, p_lease_token uuid, p_error text,
                                                    p_release boolean DEFAULT false)
RETURNS reflect.request_state
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  f reflect.followups;
  v_state reflect.request_state;
BEGIN
  f := reflect._take_followup_lease(p_followup_id, p_lease_token);
  v_state := CASE WHEN p_release OR f.attempts < f.max_attempts THEN 'queued' ELSE 'failed' END;
  UPDATE reflect.followups
  SET state = v_state, lease_token = NULL, lease_expires_at = NULL,
      attempts = CASE WHEN p_release THEN greatest(f.attempts - 1, 0) ELSE f.attempts END,
      last_error = CASE WHEN p_release THEN f.last_error ELSE left(coalesce(p_error, 'unknown error'), 1000) END,
      finished_at = CASE WHEN v_state = 'failed' THEN clock_timestamp() END
  WHERE id = f.id;
  RETURN v_state;
END
$$;

CREATE OR REPLACE FUNCTION reflect.heartbeat_followups_v1(p_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer)
RETURNS SETOF bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE reflect.followups f
  SET lease_expires_at = clock_timestamp() + reflect._check_lease_seconds(p_lease_seconds)
  FROM unnest(p_ids, p_lease_tokens) AS h(id, token)
  WHERE f.id = h.id AND f.state = 'running' AND f.lease_token = h.token
  RETURNING f.id
$$;

CREATE OR REPLACE FUNCTION reflect._reap_expired_followups()
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
  WITH expired AS (
    SELECT id FROM reflect.followups WHERE state = 'running' AND lease_expires_at < clock_timestamp()
    FOR UPDATE SKIP LOCKED
  ), moved AS (
    UPDATE reflect.followups f
    SET state = CASE WHEN f.attempts < f.max_attempts THEN 'queued' ELSE 'failed' END::reflect.request_state,
        lease_token = NULL, lease_expires_at = NULL,
        finished_at = CASE WHEN f.attempts < f.max_attempts THEN NULL ELSE clock_timestamp() END,
        last_error = format('lease of worker %s expired', f.worker_id)
    FROM expired WHERE f.id = expired.id
    RETURNING f.id
  )
  SELECT count(*)::integer FROM moved
$$;

-- A reviewer's (or the app's) rating of a critique.
CREATE OR REPLACE FUNCTION reflect.rate_critique_v1(p_request_id bigint, p_rating integer)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_rating IS NULL OR p_rating NOT BETWEEN 1 AND 5 THEN
    RAISE EXCEPTION 'rating must be between 1 and 5' USING ERRCODE = 'PR001';
  END IF;
  UPDATE reflect.critiques c SET rating = p_rating, rated_by = session_user
  FROM reflect.requests r
  WHERE c.request_id = p_request_id AND r.id = c.request_id
    AND (r.submitted_by = session_user OR pg_has_role(session_user, 'reflect_owner', 'MEMBER'));
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no critique for request % (or it is not yours)', p_request_id USING ERRCODE = 'PR005';
  END IF;
END
$$;
