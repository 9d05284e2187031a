SET LOCAL ROLE reflect_owner;

-- Validates generation parameters and fills in defaults, so the worker receives a complete, checked
-- object and never decides a default itself. Unknown keys are errors (a typo must not be ignored).
CREATE OR REPLACE FUNCTION reflect._normalize_params(p jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION reflect._param_number(
  p jsonb, p_name text, p_min numeric, p_max numeric, p_integer boolean, p_default numeric
)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
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

-- Blank: nothing but whitespace, Unicode spaces (NBSP, the U+2000 block, ideographic space), zero-width
-- characters and byte-order marks, or control characters.
CREATE OR REPLACE FUNCTION reflect._is_blank(p_text text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT p_text ~ '^[[:space:][:cntrl:]\u00a0\u00ad\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u3000\ufeff]*$'
$$;

-- A conversation's earlier turns, checked: user and assistant messages alternating from a user message to an
-- assistant message, each {"role", "content"} with text content; together no longer than max_prompt_chars.
CREATE OR REPLACE FUNCTION reflect._check_history(p_history jsonb)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
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

-- The app's way in: a question (prompt, with its system prompt and, for a conversation, its earlier turns).
-- Encrypts the text with the session's current key, resolves the model version (the active one when none is
-- named) and queues the request. With an idempotency key that this role already used, returns the original
-- request's id and writes nothing (whatever the prompt).
CREATE OR REPLACE FUNCTION reflect.submit_v2(
  p_prompt text,
  p_system_prompt text DEFAULT NULL,
  p_params jsonb DEFAULT NULL,
  p_idempotency_key text DEFAULT NULL,
  p_caller text DEFAULT NULL,
  p_model_version text DEFAULT NULL,
  p_history jsonb DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Version 1 (a single question), kept for the apps that call it.
CREATE OR REPLACE FUNCTION reflect.submit_v1(
  p_prompt text,
  p_system_prompt text DEFAULT NULL,
  p_params jsonb DEFAULT NULL,
  p_idempotency_key text DEFAULT NULL,
  p_caller text DEFAULT NULL,
  p_model_version text DEFAULT NULL
)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT reflect.submit_v2(p_prompt, p_system_prompt, p_params, p_idempotency_key, p_caller, p_model_version, NULL)
$$;

CREATE OR REPLACE FUNCTION reflect._requests_after_insert()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO reflect.request_events (request_id, event, attempt, detail)
  VALUES (NEW.id, 'submitted', 0, NEW.caller);
  -- The payload is the id only: NOTIFY payloads are visible to every LISTENer.
  PERFORM pg_notify('needs_inference', NEW.id::text);
  RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER _900_notify_needs_inference
  AFTER INSERT ON reflect.requests
  FOR EACH ROW EXECUTE FUNCTION reflect._requests_after_insert();

-- The app's window: plaintext in, plaintext out, only its own requests (by login role), decrypted with
-- the keys its session loaded. security_barrier: the row filter runs before any user-supplied function
-- in a WHERE clause, so no leaky function sees another role's decrypted rows.
CREATE OR REPLACE VIEW reflect.app_requests WITH (security_barrier) AS
SELECT
  r.id,
  reflect._decrypt_or_null(r.prompt_enc, r.key_id) AS prompt,
  reflect._decrypt_or_null(r.system_prompt_enc, r.key_id) AS system_prompt,
  r.params,
  r.idempotency_key,
  r.caller,
  mv.name AS model_version,
  r.state::text AS state,
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
  coalesce(a.confidence, a.logprob_norm) AS confidence,
  a.prompt_tokens,
  a.queue_wait_ms,
  a.prompt_eval_ms,
  a.generation_ms,
  a.calibrator_id IS NOT NULL AS calibrated,
  a.action,
  a.memory_used,
  (SELECT jsonb_object_agg(s.name, s.value) FROM reflect.answer_signals s WHERE s.request_id = r.id) AS signals,
  reflect._decrypt_or_null(c.critique_enc, c.key_id) AS critique,
  c.verdict AS critique_verdict,
  c.rating AS critique_rating,
  (SELECT count(*) FROM reflect.jobs f
   WHERE f.request_id = r.id AND f.kind IN ('critique', 'agreement') AND f.state IN ('queued', 'running'))
    AS followups_pending,
  (SELECT f.is_correct FROM reflect.feedback f WHERE f.request_id = r.id AND f.is_correct IS NOT NULL
   ORDER BY f.id DESC LIMIT 1) AS is_correct,  -- its label (reflect.labels: the latest verdict)
  a.token_logprobs,
  (SELECT reflect._decrypt_or_null(t.tokens_enc, t.key_id)::jsonb FROM reflect.answer_tokens t
   WHERE t.request_id = r.id) AS answer_tokens,  -- when params.logprobs: [{"token", "top": [[text, logprob], ...]}]
  reflect._decrypt_or_null(r.history_enc, r.key_id)::jsonb AS history,  -- a conversation's earlier turns
  (SELECT reflect._decrypt_or_null(p.text_enc, p.key_id) FROM reflect.partial_answers p
   WHERE p.request_id = r.id) AS partial_answer  -- params.stream: the text so far, while it is generated
FROM reflect.requests r
JOIN reflect.model_versions mv ON mv.id = r.model_version_id
LEFT JOIN reflect.answers a ON a.request_id = r.id
LEFT JOIN reflect.critiques c ON c.request_id = r.id
WHERE r.submitted_by = session_user;

CREATE OR REPLACE FUNCTION reflect._app_requests_insert()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE TRIGGER _100_submit
  INSTEAD OF INSERT ON reflect.app_requests
  FOR EACH ROW EXECUTE FUNCTION reflect._app_requests_insert();
