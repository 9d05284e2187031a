SET LOCAL ROLE reflect_owner;

-- Features of the calibrators, in order. A calibrator stores the list it was fitted with and is applied to
-- the same named features (reflect._vector), so a calibrator fitted on an older list keeps working.
CREATE OR REPLACE FUNCTION reflect.calibration_features_v1()
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT ARRAY['logprob_mean', 'logprob_min', 'p_true', 'rule_failed', 'log_tokens', 'p_answer', 'agreement',
               'critique_verdict']
$$;

-- v2 (what new fits use): v1, the distribution over a multiple-choice prompt's options at the answer's letter,
-- and the kind of question as one-hot features (choice / number / long; short is the baseline), so that one
-- calibrator fits mixed traffic.
CREATE OR REPLACE FUNCTION reflect.calibration_features_v2()
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT reflect.calibration_features_v1()
         || ARRAY['option_max_prob', 'option_margin', 'option_entropy', 'kind_choice', 'kind_number', 'kind_long']
$$;

-- The per-answer signals reported on their own (reflect.signal_auroc, the evaluation harness's per-signal AUROC),
-- each named as its reflect.labelled_answers column, with the direction that means a right answer.
CREATE OR REPLACE FUNCTION reflect.signal_orientations_v1()
RETURNS TABLE (signal text, higher_is_right boolean)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  VALUES ('logprob_mean', true), ('logprob_min', true), ('logprob_norm', true), ('p_true', true),
         ('p_answer', true), ('rule_failed', false), ('agreement', true), ('critique_verdict', true),
         ('option_max_prob', true), ('option_margin', true), ('option_entropy', false), ('probe', true)
$$;

-- The features an answer may lack (NULL in reflect._feature_values when missing).
CREATE OR REPLACE FUNCTION reflect.optional_features_v1()
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT ARRAY['p_answer', 'agreement', 'critique_verdict', 'option_max_prob', 'option_margin', 'option_entropy',
               'kind_choice', 'kind_number', 'kind_long', 'probe']
$$;

-- Every feature of an answer by name, from its log-prob statistics and signals. Missing log-probs get fixed
-- stand-ins: an empty answer has none (-10 / -20: as unlikely as it gets). P(True) is missing when the worker
-- does not measure it (--p-true off). p_answer exists only for answers with a short answer span, the
-- option features only for letter answers to prompts that list options, the kind only for answers recorded
-- since the worker reports it; agreement and critique_verdict arrive later, for a share of the traffic. Those
-- are NULL when missing, and a calibrator replaces NULL with its training mean, so a missing signal moves the
-- confidence nowhere.
CREATE OR REPLACE FUNCTION reflect._feature_values(p_logprob_mean double precision, p_logprob_min double precision,
                                                   p_completion_tokens integer, p_signals jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
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

-- The named features as a vector in the order of p_names (a calibrator's list).
CREATE OR REPLACE FUNCTION reflect._vector(p_values jsonb, p_names text[])
RETURNS double precision[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT array_agg((p_values ->> n)::double precision ORDER BY i) FROM unnest(p_names) WITH ORDINALITY AS t(n, i)
$$;

-- The feature vector new fits use (calibration_features_v2).
CREATE OR REPLACE FUNCTION reflect._features(p_logprob_mean double precision, p_logprob_min double precision,
                                             p_completion_tokens integer, p_signals jsonb)
RETURNS double precision[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT reflect._vector(reflect._feature_values(p_logprob_mean, p_logprob_min, p_completion_tokens, p_signals),
                         reflect.calibration_features_v2())
$$;

CREATE OR REPLACE FUNCTION reflect._signals_of(p_request_id bigint)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(jsonb_object_agg(name, value), '{}'::jsonb) FROM reflect.answer_signals WHERE request_id = p_request_id
$$;

CREATE OR REPLACE FUNCTION reflect._feature_values_of(p_request_id bigint)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT reflect._feature_values(a.logprob_mean, a.logprob_min, a.completion_tokens, reflect._signals_of(a.request_id))
  FROM reflect.answers a WHERE a.request_id = p_request_id
$$;

CREATE OR REPLACE FUNCTION reflect._feature_vector(p_request_id bigint)
RETURNS double precision[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT reflect._vector(reflect._feature_values_of(p_request_id), reflect.calibration_features_v2())
$$;

-- Confidence of an answer's features under a model version's active calibrator, applied to the features it
-- was fitted with; calibrator id NULL when the version has none yet (then the documented default applies:
-- P(True) when measured, else the geometric-mean token probability).
DROP FUNCTION IF EXISTS reflect._confidence(integer, double precision[], jsonb, double precision);
CREATE OR REPLACE FUNCTION reflect._confidence(p_model_version_id integer, p_values jsonb,
                                               p_signals jsonb, p_logprob_norm double precision,
                                               OUT confidence double precision, OUT calibrator_id integer)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION reflect._low_confidence_action(p_params jsonb, p_confidence double precision)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN p_confidence < coalesce((p_params ->> 'confidence_threshold')::double precision,
                                          reflect._setting_float('confidence_threshold_default'))
              THEN coalesce(p_params ->> 'low_confidence', reflect._setting_text('low_confidence_action_default'))
              ELSE 'answer' END
$$;

CREATE OR REPLACE FUNCTION reflect._sigmoid(z double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT 1 / (1 + exp(-greatest(-30, least(30, z))))
$$;

-- Calibrated confidence of one answer and the request's low-confidence action. Re-run whenever a signal
-- arrives.
CREATE OR REPLACE FUNCTION reflect._apply_confidence(p_request_id bigint)
RETURNS double precision
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- The worker's question when a request's low-confidence action is 'reanswer': records this attempt (encrypted)
-- and says whether to try again with evidence: only when the calibrated confidence is under the threshold,
-- no re-answer was made yet, and evidence exists. Returns the attempt's number and confidence.
CREATE OR REPLACE FUNCTION reflect.record_candidate_v1(
  p_request_id bigint, p_lease_token uuid, p_answer text, p_token_logprobs real[], p_signals jsonb,
  p_evidence_request_ids bigint[] DEFAULT '{}'
)
RETURNS TABLE (n integer, confidence double precision, reanswer boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Evidence for a re-answer: the k past requests nearest to this prompt that carry a correction or a
-- confirmed-correct answer (whatever the request's memory setting), decrypted.
CREATE OR REPLACE FUNCTION reflect.evidence_v1(p_request_id bigint, p_lease_token uuid, p_k integer DEFAULT 3)
RETURNS TABLE (memory_request_id bigint, prompt text, answer text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
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
BEGIN
  SELECT * INTO r FROM reflect.requests WHERE id = p_request_id;
  IF r.id IS NULL OR NOT (r.submitted_by = session_user OR pg_has_role(session_user, 'reflect_owner', 'MEMBER')) THEN
    RAISE EXCEPTION 'no request % (or it is not yours)', p_request_id USING ERRCODE = 'PR005';
  END IF;
  RETURN reflect._record_feedback(r, p_is_correct, p_rating, p_correction, p_source);
END
$$;

-- A reviewer's verdict on any app's answer (the review queue): recorded exactly as the app's own feedback would
-- be (a correction becomes that app's memory and training data), with source 'review' and the reviewer's login.
CREATE OR REPLACE FUNCTION reflect.review_v1(p_request_id bigint, p_is_correct boolean, p_correction text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- The record both share: checks the values, stores the feedback (a correction encrypted with the request's key),
-- and keeps the request's memory in step with its latest verdict.
CREATE OR REPLACE FUNCTION reflect._record_feedback(
  r reflect.requests, p_is_correct boolean, p_rating integer, p_correction text, p_source text
)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- The answer's final-layer hidden state (reflect.answer_states), stored while the lease is held; a retried
-- attempt replaces the earlier attempt's state.
CREATE OR REPLACE FUNCTION reflect.store_answer_state_v1(p_request_id bigint, p_lease_token uuid,
                                                         p_state public.vector)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
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

-- A conversation's earlier turns for the worker that holds the request's lease (claim_v1 returns the prompt; only
-- requests with params.history_turns have turns to fetch), and for a follow-up job on such a request.
CREATE OR REPLACE FUNCTION reflect.request_history_v1(p_request_id bigint, p_lease_token uuid)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r reflect.requests := reflect._take_lease(p_request_id, p_lease_token);
BEGIN
  RETURN reflect._decrypt(r.history_enc, r.key_id)::jsonb;
END;
$$;

CREATE OR REPLACE FUNCTION reflect.job_history_v1(p_job_id bigint, p_lease_token uuid)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  j reflect.jobs := reflect._take_job_lease(p_job_id, p_lease_token);
  r reflect.requests;
BEGIN
  SELECT * INTO r FROM reflect.requests WHERE id = j.request_id;
  RETURN reflect._decrypt(r.history_enc, r.key_id)::jsonb;
END;
$$;

-- The tokens of the answer and their top alternatives, for a request whose params ask for logprobs (stored
-- under the lease, before complete, as the hidden state is). Encrypted with the request's key.
CREATE OR REPLACE FUNCTION reflect.store_answer_tokens_v1(p_request_id bigint, p_lease_token uuid, p_tokens jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- The active probe's probability that the answer is right, from its stored hidden state: {"probe": p}, or {}
-- when the version has no active probe, the answer no state, or the two differ in size.
CREATE OR REPLACE FUNCTION reflect._probe_signal(p_request_id bigint)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, public, pg_temp
AS $$
  SELECT coalesce((
    SELECT jsonb_build_object('probe', reflect._sigmoid(p.bias - (s.state OPERATOR(public.<#>) p.weights)))
    FROM reflect.answer_states s
    JOIN reflect.state_probes p ON p.model_version_id = s.model_version_id AND p.is_active
    WHERE s.request_id = p_request_id AND public.vector_dims(s.state) = public.vector_dims(p.weights)), '{}')
$$;

-- Labelled answers' hidden states of a model version, each marked held out by the calibrator fit's rule, for fitting its probe (pgreflect.meta.probe), with the
-- evaluation dataset when the answer came from one (the fit holds whole datasets out to choose its strength).
CREATE OR REPLACE FUNCTION reflect.probe_training_set_v1(p_model_version text)
RETURNS TABLE (request_id bigint, state real[], is_correct boolean, dataset text, heldout boolean)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
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

-- Stores a fitted probe; p_activate makes it the version's active probe (the caller compared it with the
-- active one on the same held-out answers). Returns its id.
CREATE OR REPLACE FUNCTION reflect.install_probe_v1(p_model_version text, p_weights public.vector,
                                                    p_bias double precision, p_n_train integer, p_metrics jsonb,
                                                    p_activate boolean)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
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

-- The `probe` signal of labelled answers, as pgreflect.meta.probe computed it (out of fold on the probe's
-- training answers), for calibrators to learn from.
CREATE OR REPLACE FUNCTION reflect.set_probe_signals_v1(p_model_version text, p_request_ids bigint[],
                                                        p_values double precision[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION reflect.active_probe_v1(p_model_version text)
RETURNS TABLE (id integer, weights real[], bias double precision)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
  SELECT p.id, p.weights::real[], p.bias
  FROM reflect.state_probes p JOIN reflect.model_versions mv ON mv.id = p.model_version_id
  WHERE mv.name = p_model_version AND p.is_active
$$;

-- Run by pg_cron daily: deletes the hidden states of answers that are still unlabelled after
-- answer_state_retention_days. Returns how many were deleted.
CREATE OR REPLACE FUNCTION reflect.purge_answer_states_v1()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
