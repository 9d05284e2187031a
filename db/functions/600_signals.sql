SET LOCAL ROLE reflect_owner;

-- Features of the calibrators, in order. Changing this list changes what a fitted calibrator means, so a
-- calibrator stores the list it was fitted with and is only applied when the lists match.
CREATE OR REPLACE FUNCTION reflect.calibration_features_v1()
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT ARRAY['logprob_mean', 'logprob_min', 'p_true', 'rule_failed', 'log_tokens', 'agreement',
               'critique_verdict']
$$;

-- Feature vector of one answer. Missing values get fixed stand-ins: an empty answer has no log-probs
-- (-10 / -20: as unlikely as it gets), an answer without a P(True) measurement gets 0.5 (no opinion).
-- agreement and critique_verdict arrive later, for a share of the traffic: NULL until then, and a
-- calibrator replaces NULL with its training mean, so a missing follow-up moves the confidence nowhere.
CREATE OR REPLACE FUNCTION reflect._feature_vector(p_request_id bigint)
RETURNS double precision[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT ARRAY[
    greatest(coalesce(a.logprob_mean, -10), -10),
    greatest(coalesce(a.logprob_min, -20), -20),
    coalesce((SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'p_true'),
             0.5),
    coalesce((SELECT max(s.value) FROM reflect.answer_signals s
              WHERE s.request_id = a.request_id AND s.name LIKE 'rule\_%'), 0),
    ln(1 + a.completion_tokens),
    (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'agreement'),
    (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'critique_verdict')
  ]::double precision[]
  FROM reflect.answers a WHERE a.request_id = p_request_id
$$;

CREATE OR REPLACE FUNCTION reflect._sigmoid(z double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT 1 / (1 + exp(-greatest(-30, least(30, z))))
$$;

-- Calibrated confidence of one answer from its version's active calibrator, or the documented default
-- (P(True) when measured, else the geometric-mean token probability) marked uncalibrated; then the
-- request's low-confidence action. Re-run whenever a signal arrives.
CREATE OR REPLACE FUNCTION reflect._apply_confidence(p_request_id bigint)
RETURNS double precision
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  a reflect.answers;
  cal reflect.calibrators;
  x double precision[];
  z double precision;
  v_conf double precision;
  v_params jsonb;
  v_threshold double precision;
  v_action text;
BEGIN
  SELECT * INTO a FROM reflect.answers WHERE request_id = p_request_id;
  SELECT * INTO cal FROM reflect.calibrators
  WHERE model_version_id = a.model_version_id AND is_active AND features = reflect.calibration_features_v1();
  IF cal.id IS NOT NULL THEN
    x := reflect._feature_vector(p_request_id);
    z := cal.weights[1];
    FOR j IN 1..cardinality(x) LOOP
      z := z + cal.weights[j + 1] * (coalesce(x[j], cal.feature_means[j]) - cal.feature_means[j]) / cal.feature_stds[j];
    END LOOP;
    v_conf := reflect._sigmoid(z);
  ELSE
    v_conf := coalesce(
      (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = p_request_id AND s.name = 'p_true'),
      a.logprob_norm, 0);
  END IF;
  SELECT params INTO v_params FROM reflect.requests WHERE id = p_request_id;
  v_threshold := coalesce((v_params ->> 'confidence_threshold')::double precision,
                          reflect._setting_float('confidence_threshold_default'));
  v_action := CASE WHEN v_conf < v_threshold
                   THEN coalesce(v_params ->> 'low_confidence', reflect._setting_text('low_confidence_action_default'))
                   ELSE 'answer' END;
  UPDATE reflect.answers SET confidence = v_conf, calibrator_id = cal.id, action = v_action,
                             memory_used = EXISTS (SELECT FROM reflect.answer_memories m
                                                   WHERE m.request_id = p_request_id)
  WHERE request_id = p_request_id;
  RETURN v_conf;
END
$$;

CREATE OR REPLACE FUNCTION reflect._store_signals(p_request_id bigint, p_signals jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- Signals measured after the answer was recorded (for example agreement between extra samples).
CREATE OR REPLACE FUNCTION reflect.add_signals_v1(p_request_id bigint, p_signals jsonb)
RETURNS double precision
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF NOT EXISTS (SELECT FROM reflect.answers WHERE request_id = p_request_id) THEN
    RAISE EXCEPTION 'request % has no answer', p_request_id USING ERRCODE = 'PR005';
  END IF;
  PERFORM reflect._store_signals(p_request_id, p_signals);
  RETURN reflect._apply_confidence(p_request_id);
END
$$;

-- The labels used for calibration: the latest feedback of each request that says right or wrong.
CREATE OR REPLACE VIEW reflect.labels AS
SELECT DISTINCT ON (f.request_id) f.request_id, f.is_correct, f.source, f.created_at
FROM reflect.feedback f
WHERE f.is_correct IS NOT NULL
ORDER BY f.request_id, f.id DESC;

-- Records a label, rating or correction for a request (a person's, or ground truth from an evaluation).
-- Corrections are encrypted with the request's key; a correction or a confirmed-correct answer makes the
-- request a memory that later similar prompts retrieve.
CREATE OR REPLACE FUNCTION reflect.feedback_v1(
  p_request_id bigint,
  p_is_correct boolean DEFAULT NULL,
  p_rating integer DEFAULT NULL,
  p_correction text DEFAULT NULL,
  p_source text DEFAULT 'human'
)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r reflect.requests;
  v_id bigint;
  v_kind text;
  v_fid bigint;
BEGIN
  SELECT * INTO r FROM reflect.requests WHERE id = p_request_id;
  IF r.id IS NULL OR NOT (r.submitted_by = session_user OR pg_has_role(session_user, 'reflect_owner', 'MEMBER')) THEN
    RAISE EXCEPTION 'no request % (or it is not yours)', p_request_id USING ERRCODE = 'PR005';
  END IF;
  IF p_rating IS NOT NULL AND p_rating NOT BETWEEN 1 AND 5 THEN
    RAISE EXCEPTION 'rating must be between 1 and 5' USING ERRCODE = 'PR001';
  END IF;
  IF p_correction IS NOT NULL AND btrim(p_correction, E' \t\r\n') = '' THEN
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
    RAISE EXCEPTION 'request % has no answer to judge (it is %)', p_request_id, r.state USING ERRCODE = 'PR001';
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
  IF v_kind IS NULL THEN
    DELETE FROM reflect.memories WHERE request_id = r.id;
  ELSE
    INSERT INTO reflect.memories (request_id, kind, feedback_id, embedding)
    SELECT r.id, v_kind, v_fid, e.embedding FROM reflect.prompt_embeddings e WHERE e.request_id = r.id
    ON CONFLICT (request_id) DO UPDATE SET kind = excluded.kind, feedback_id = excluded.feedback_id;
  END IF;
  RETURN v_id;
END
$$;
