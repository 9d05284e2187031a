SET LOCAL ROLE reflect_owner;

-- The job runtime's lease protocol, written once for every kind (docs/state-machine.md, "Jobs"):
--   queued --claim_jobs_v1--> running --complete_job_v1--> succeeded
--   running --fail_job_v1 (retryable, attempts left)--> queued (after a backoff)
--   running --fail_job_v1 (final, or no attempts left)--> failed
--   running --fail_job_v1 (release: shutdown)--> queued at once, the attempt given back
--   running --reap (lease expired)--> queued (attempts left) or failed
-- Every transition out of running is compare-and-set on (state, lease token) and raises PR002 otherwise.
-- checkpoint_job_v1 saves a long job's progress under its lease; the next claim hands it back, so a job
-- killed with SIGKILL resumes where it was instead of from zero. What a kind does with its result is in
-- reflect._finish_job (one branch per kind).

-- The channel that wakes the workers able to run a kind: training waits on needs_finetune, the rest on
-- needs_inference. Payloads are ids only.
CREATE OR REPLACE FUNCTION reflect._job_channel(p_kind text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN p_kind IN ('finetune') THEN 'needs_finetune' ELSE 'needs_inference' END
$$;

CREATE OR REPLACE FUNCTION reflect._enqueue_job(
  p_kind text,
  p_payload jsonb DEFAULT '{}'::jsonb,
  p_request_id bigint DEFAULT NULL,
  p_model_version_id integer DEFAULT NULL,
  p_priority smallint DEFAULT 0,
  p_max_attempts integer DEFAULT 2
)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- Claims up to p_limit queued jobs of the given kinds, highest priority then oldest first, for the model
-- versions this worker serves (jobs bound to none are anyone's). Jobs on an answer whose key this session
-- has not loaded are left for a worker that has it.
CREATE OR REPLACE FUNCTION reflect.claim_jobs_v1(
  p_worker_id text,
  p_kinds text[],
  p_limit integer,
  p_lease_seconds integer,
  p_model_version_ids integer[] DEFAULT NULL
)
RETURNS TABLE (job_id bigint, lease_token uuid, kind text, attempt integer, request_id bigint,
               model_version_id integer, payload jsonb, checkpoint jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION reflect._take_job_lease(p_job_id bigint, p_lease_token uuid)
RETURNS reflect.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- The text a job on an answer works from: the request's prompt and system prompt, the answer, and the
-- generation parameters, decrypted under the job's lease. When the text does not decrypt, the job is
-- failed with the reason and no row comes back.
CREATE OR REPLACE FUNCTION reflect.job_input_v1(p_job_id bigint, p_lease_token uuid)
RETURNS TABLE (prompt text, system_prompt text, answer text, params jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION reflect.heartbeat_jobs_v1(p_job_ids bigint[], p_lease_tokens uuid[], p_lease_seconds integer)
RETURNS SETOF bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Saves a long job's progress (and extends its lease): a job whose worker dies resumes from here.
CREATE OR REPLACE FUNCTION reflect.checkpoint_job_v1(p_job_id bigint, p_lease_token uuid, p_checkpoint jsonb,
                                                     p_lease_seconds integer)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Finishes a job with its result; what the result means is the kind's business (reflect._finish_job).
CREATE OR REPLACE FUNCTION reflect.complete_job_v1(p_job_id bigint, p_lease_token uuid, p_result jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- A failed attempt: retried after a backoff while attempts are left (or at once and without using up the
-- attempt with p_release, on shutdown), else failed with the reason.
CREATE OR REPLACE FUNCTION reflect.fail_job_v1(p_job_id bigint, p_lease_token uuid, p_error text,
                                               p_retryable boolean DEFAULT true, p_release boolean DEFAULT false)
RETURNS reflect.request_state
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION reflect._reap_expired_jobs()
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
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
