SET LOCAL ROLE reflect_owner;

-- Follow-ups (critique, agreement) are queued when an answer is recorded: for all evaluation traffic, and for
-- critique_fraction / agreement_fraction of the answers in followups_scope (default: low-confidence ones); a
-- fraction of 0 turns that follow-up off for all traffic. Workers take them when no request is waiting.
CREATE OR REPLACE FUNCTION reflect._queue_followups(p_request_id bigint)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- An answer worth a second look: its calibrated confidence is under the request's threshold (what the
-- low-confidence action uses), or one of its rule checks failed.
CREATE OR REPLACE FUNCTION reflect._is_low_confidence(p_request_id bigint, p_params jsonb)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(a.confidence < coalesce((p_params ->> 'confidence_threshold')::double precision,
                                          reflect._setting_float('confidence_threshold_default')), false)
         OR EXISTS (SELECT FROM reflect.answer_signals s
                    WHERE s.request_id = p_request_id AND s.name LIKE 'rule\_%' AND s.value > 0)
  FROM reflect.answers a WHERE a.request_id = p_request_id
$$;

-- What a finished follow-up does (called by complete_job_v1 through reflect._finish_job): a critique
-- (JSON, validated here) is stored encrypted with the request's key and its verdict becomes the
-- critique_verdict signal; agreement arrives as a signal. Then the answer's confidence is recomputed.
CREATE OR REPLACE FUNCTION reflect._finish_followup(j reflect.jobs, p_result jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- The kinds the runtime knows, and what finishing each means. A new kind adds its branch here and a
-- handler in worker/pgreflect/jobs/.
CREATE OR REPLACE FUNCTION reflect._finish_job(j reflect.jobs, p_result jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- Follow-ups as they looked before the job runtime (the same columns), for queries and older tools.
CREATE OR REPLACE VIEW reflect.followups AS
SELECT j.id, j.request_id, j.kind, j.state, j.attempts, j.max_attempts, j.lease_token, j.lease_expires_at,
       j.worker_id, j.last_error, j.created_at, j.finished_at
FROM reflect.jobs j
WHERE j.kind IN ('critique', 'agreement');

-- _v1 follow-up functions, kept for workers of the previous release during a rolling deploy: thin
-- wrappers over the job runtime.
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
BEGIN
  RETURN (reflect.complete_job_v1(p_followup_id, p_lease_token,
            jsonb_build_object('signals', coalesce(p_signals, '{}'::jsonb), 'critique', p_critique))
          ->> 'confidence')::double precision;
END
$$;

CREATE OR REPLACE FUNCTION reflect.fail_followup_v1(p_followup_id bigint, p_lease_token uuid, p_error text,
                                                    p_release boolean DEFAULT false)
RETURNS reflect.request_state
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN reflect.fail_job_v1(p_followup_id, p_lease_token, p_error, true, p_release);
END
$$;

CREATE OR REPLACE FUNCTION reflect.heartbeat_followups_v1(p_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer)
RETURNS SETOF bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY SELECT * FROM reflect.heartbeat_jobs_v1(p_ids, p_lease_tokens, p_lease_seconds);
END
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
    AND (r.submitted_by = session_user OR pg_has_role(session_user, 'reflect_owner', 'MEMBER')
         OR pg_has_role(session_user, 'reflect_reviewer', 'MEMBER'));
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no critique for request % (or it is not yours)', p_request_id USING ERRCODE = 'PR005';
  END IF;
END
$$;
