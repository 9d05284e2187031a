SET LOCAL ROLE reflect_owner;

-- Request state machine (docs/state-machine.md):
--   queued --claim_v1--> running --complete_v1--> succeeded
--   running --fail_v1 (retryable, attempts left)--> queued (run_after = now + backoff)
--   running --fail_v1 (final or no attempts left)--> failed
--   running --release_v1 (worker shutting down)--> queued (the attempt is given back)
--   running --reap_expired_v1 (lease expired: crashed worker)--> queued, or failed with no attempts left
-- Every transition out of running is compare-and-set on (state = 'running', lease_token) and raises
-- PR002 otherwise, so a worker whose lease was taken away can never overwrite the new owner's work.

CREATE OR REPLACE FUNCTION reflect._check_lease_seconds(p_lease_seconds integer)
RETURNS interval
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_lease_seconds IS NULL OR p_lease_seconds NOT BETWEEN 1 AND 86400 THEN
    RAISE EXCEPTION 'lease must be between 1 and 86400 seconds' USING ERRCODE = 'PR001';
  END IF;
  RETURN make_interval(secs => p_lease_seconds);
END
$$;

-- Claims up to p_limit queued requests for the given model versions (all when NULL), oldest first.
-- Requests whose key this session has not loaded are left for a worker that has it. The prompt is
-- decrypted here and returned as a result column (results are never logged). A request that cannot be
-- decrypted with its key (corrupt data, or a wrong key from before key verifiers) is failed at once with
-- the reason, inside its own subtransaction, and the claim goes on: one bad row never stops the queue.
CREATE OR REPLACE FUNCTION reflect.claim_v1(
  p_worker_id text,
  p_limit integer,
  p_lease_seconds integer,
  p_model_version_ids integer[] DEFAULT NULL
)
RETURNS TABLE (
  request_id bigint,
  lease_token uuid,
  attempt integer,
  model_version_id integer,
  prompt text,
  system_prompt text,
  params jsonb,
  queue_wait_ms double precision
)
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

-- Fails a claimed request whose text cannot be decrypted: final (retrying cannot help), with a reason
-- the submitter can act on, and the app is told through request_done.
CREATE OR REPLACE FUNCTION reflect._fail_undecryptable(p_request_id bigint, p_lease_token uuid, p_key_id text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- Extends the leases still held; returns the ids whose lease was extended. An id missing from the result
-- was lost (reaped after expiry, or finished) and its work must be abandoned.
CREATE OR REPLACE FUNCTION reflect.heartbeat_v1(
  p_request_ids bigint[],
  p_lease_tokens uuid[],
  p_lease_seconds integer
)
RETURNS SETOF bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION reflect._take_lease(p_request_id bigint, p_lease_token uuid)
RETURNS reflect.requests
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- Records the answer and finishes the request. Log-probability summaries are computed here from the
-- per-token values so every consumer reads one definition.
CREATE OR REPLACE FUNCTION reflect._record_answer(
  p_request_id bigint,
  p_lease_token uuid,
  p_answer text,
  p_finish_reason text,
  p_prompt_tokens integer,
  p_token_logprobs real[],
  p_prompt_eval_ms double precision,
  p_generation_ms double precision
)
RETURNS reflect.requests
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION reflect.complete_v1(
  p_request_id bigint,
  p_lease_token uuid,
  p_answer text,
  p_finish_reason text,
  p_prompt_tokens integer,
  p_token_logprobs real[],
  p_prompt_eval_ms double precision,
  p_generation_ms double precision
)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM reflect.complete_v2(p_request_id, p_lease_token, p_answer, p_finish_reason, p_prompt_tokens,
                              p_token_logprobs, p_prompt_eval_ms, p_generation_ms, '{}'::jsonb);
END
$$;

-- v2: the worker also reports the signals it measured (P(True), rule checks, ...); the database turns
-- them into the calibrated confidence and the low-confidence action, then tells waiting apps.
CREATE OR REPLACE FUNCTION reflect.complete_v2(
  p_request_id bigint,
  p_lease_token uuid,
  p_answer text,
  p_finish_reason text,
  p_prompt_tokens integer,
  p_token_logprobs real[],
  p_prompt_eval_ms double precision,
  p_generation_ms double precision,
  p_signals jsonb
)
RETURNS double precision
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Records a failed attempt. Retryable failures go back to the queue after a backoff while attempts are
-- left; otherwise (or with p_retryable = false, for errors that will not go away, such as a prompt longer
-- than the context) the request is marked failed with the reason.
CREATE OR REPLACE FUNCTION reflect.fail_v1(
  p_request_id bigint,
  p_lease_token uuid,
  p_error text,
  p_retryable boolean DEFAULT true
)
RETURNS reflect.request_state
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- The text generated so far for a streamed request (params.stream; pgreflect serve sends it on as it grows),
-- overwritten in place, then NOTIFY request_progress (id only; the text is read back by the request's own app
-- through app_requests.partial_answer). Refused for a request whose low-confidence action could still withhold
-- or replace the text (abstain, reanswer): a reader must never see what it will not be given.
CREATE OR REPLACE FUNCTION reflect.report_partial_v1(p_request_id bigint, p_lease_token uuid, p_text text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Gives a claimed request back untouched (graceful shutdown): queued at once, and the attempt that was
-- interrupted does not count.
CREATE OR REPLACE FUNCTION reflect.release_v1(p_request_id bigint, p_lease_token uuid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Re-queues requests whose lease expired (their worker crashed or stalled past its heartbeat), or fails
-- them when no attempts are left. Run every minute by pg_cron and by each worker as a backstop.
CREATE OR REPLACE FUNCTION reflect.reap_expired_v1()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
