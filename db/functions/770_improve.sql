SET LOCAL ROLE reflect_owner;

-- The improvement loop in the database (docs/improve.md). The worker only trains, converts and scores; every
-- state change below is compare-and-set on a job lease or on the versions' row locks.
--
--   finetune job --complete--> candidate version (parent's GGUF + adapter) + gate job
--   gate job: submit items (parts a, b, c) for candidate and parent -> snooze until answered -> complete with
--             per-item scores -> promotion decision (promote: candidate active; reject: stays for audit)
--   rollback: the active version's parent is active again; the decision is recorded
--
-- Adapters never stack: every candidate is trained on the root GGUF (the parent's base, or the parent itself
-- when it is a plain GGUF) from a training set curated over the owner's whole history.

-- The hyperparameters a fine-tune uses, from the settings at the time it is queued (stored in the job).
CREATE OR REPLACE FUNCTION reflect._finetune_hyperparameters()
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
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

-- The version a candidate's adapter is trained on: the parent's base GGUF, or the parent itself.
CREATE OR REPLACE FUNCTION reflect._root_version(p_id integer)
RETURNS reflect.model_versions
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT r.* FROM reflect.model_versions mv
  JOIN reflect.model_versions r ON r.id = coalesce(mv.base_model_version_id, mv.id)
  WHERE mv.id = p_id
$$;

-- What a claimed fine-tune job trains: the parent, the root GGUF the adapter applies to, the training set and
-- the hyperparameters stored in the job.
CREATE OR REPLACE FUNCTION reflect.finetune_plan_v1(p_job_id bigint, p_lease_token uuid)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- How a training attempt is fitted into memory (read at each attempt: a DBA's change applies to the next):
-- the settings, and the highest RSS an earlier attempt of this job reported, with or without checkpointing
-- (an estimate for the same mode never goes below what was seen).
CREATE OR REPLACE FUNCTION reflect._training_memory_policy(p_job_id bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
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

-- The worker's memory decision for this attempt of a fine-tune (before training), and then the peak it saw.
CREATE OR REPLACE FUNCTION reflect.record_training_memory_v1(
  p_job_id bigint, p_lease_token uuid, p_estimate_mb double precision, p_available_mb double precision,
  p_reserve_mb double precision, p_gradient_checkpointing boolean, p_serving_paused boolean, p_decision text,
  p_detail text, p_peak_rss_mb double precision DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- The training set's examples, decrypted under the job's lease: corrections and confirmed answers (replay).
-- An example that does not decrypt is left out and counted in the warning the worker logs.
CREATE OR REPLACE FUNCTION reflect.finetune_examples_v1(p_job_id bigint, p_lease_token uuid)
RETURNS TABLE (request_id bigint, source text, split text, system_prompt text, prompt text, completion text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION reflect.record_training_progress_v1(
  p_job_id bigint, p_lease_token uuid, p_step integer, p_total_steps integer, p_epoch double precision,
  p_loss double precision, p_tokens_per_s double precision, p_eta_s double precision, p_rss_mb double precision)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- A finished fine-tune: the adapter becomes a candidate version and a gate job is queued for it. The adapter
-- must have been trained on the root GGUF's exact bytes (base_sha256), or it is refused.
CREATE OR REPLACE FUNCTION reflect._finish_finetune(j reflect.jobs, p_result jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- Gives a running job back to the queue until p_seconds from now, with its attempt returned and a
-- checkpoint: a job that waits for other work (the gate waits for answers) holds no slot meanwhile.
CREATE OR REPLACE FUNCTION reflect.snooze_job_v1(p_job_id bigint, p_lease_token uuid, p_seconds double precision,
                                                 p_checkpoint jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Asks the parent to reword each corrected prompt of the gate's training set (part a, up to
-- gate_rephrase_max_chars long; once per gate job, before its items are submitted): one greedy request per
-- prompt, memory off, with the rewording instruction (pgreflect.prompts) as its system prompt, tagged as
-- evaluation traffic. Returns every rewording request of the job with the original prompt and its
-- correction, decrypted under the job's lease; the worker checks them (pgreflect.improve.rephrase) and passes
-- the good ones to gate_submit_v2.
CREATE OR REPLACE FUNCTION reflect.gate_rephrase_v1(p_job_id bigint, p_lease_token uuid, p_instruction text,
                                                    p_max_tokens integer)
RETURNS TABLE (example_request_id bigint, state text, prompt text, rephrasing text, reference text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Submits the gate's items for the candidate and its parent (once per gate job; a second call returns the
-- count). Parts a and b reuse the training examples' ciphertext (same key id); part r (p_rephrasings:
-- [{"example_request_id", "prompt"}], rewordings of part-a prompts) is encrypted with its example's key and
-- keeps the example's system prompt; part c is encrypted with the session's current key. Memory is off and
-- decoding greedy, so the two versions see the same prompts.
CREATE OR REPLACE FUNCTION reflect.gate_submit_v2(p_job_id bigint, p_lease_token uuid, p_rephrasings jsonb)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Version 1 (workers before rephrasings): no part r.
CREATE OR REPLACE FUNCTION reflect.gate_submit_v1(p_job_id bigint, p_lease_token uuid)
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT reflect.gate_submit_v2(p_job_id, p_lease_token, '[]'::jsonb)
$$;

-- The gate's answers and references, decrypted under its lease; `pending` counts items still unanswered.
CREATE OR REPLACE FUNCTION reflect.gate_answers_v1(p_job_id bigint, p_lease_token uuid)
RETURNS TABLE (candidate_request_id bigint, part text, reference text, candidate_state text, candidate_answer text,
               parent_state text, parent_answer text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Paired comparison of the candidate (c) and the parent (p) on one part: accuracies, mean difference, its
-- standard error and one-sided lower bound (normal approximation of the paired differences).
CREATE OR REPLACE FUNCTION reflect._paired_parts(p_job_id bigint, p_parts text[], p_z double precision)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION reflect._paired(p_job_id bigint, p_part text, p_z double precision)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT reflect._paired_parts(p_job_id, ARRAY[p_part], p_z)
$$;

-- Out-of-fold calibrated confidences of one version's answers: each fold's confidences come from a calibrator
-- (_fit_logistic) fitted on the other fold only. A training fold without two answers of each class cannot fit
-- a slope; its accuracy (the base rate) is then the prediction.
CREATE OR REPLACE FUNCTION reflect._cross_fitted(p_request_ids bigint[], p_correct boolean[], p_folds integer[],
                                                 OUT confidence double precision[], OUT correct boolean[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
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

-- Calibration of both versions on the gate's held-out and retention items (parts b and c: the candidate was
-- trained on part a). Each version is first calibrated on its own answers, cross-fitted in two folds by a hash
-- of the item: comparing the confidences as served compares the uncalibrated defaults' overconfidence, not
-- what each version's signals know (run 1 of bench/results/improve.md was rejected on Brier 0.395 -> 0.457
-- when neither version had a calibrator). Then the Brier skill score of each (1 - Brier / the Brier of always
-- saying the version's own accuracy), because the Brier score itself rises when a candidate's accuracy moves
-- towards 50% (run 2, bench/results/improve-skill.md: +29 points held out, Brier 0.198 -> 0.225 with ECE
-- 0.094 -> 0.060). `skill` holds the paired difference (candidate - parent, per item) with its standard error
-- and bounds; ECE, AUROC, Brier and the served confidences' numbers are reported beside.
CREATE OR REPLACE FUNCTION reflect._gate_calibration(p_job_id bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
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

-- A version that has no calibrator yet gets one fitted on its scored gate answers (parts b and c), so a
-- promoted candidate's confidence is calibrated from its first answer; its own labels replace it later
-- (refit_calibrators_v1). Returns the calibrator's id, or NULL (one exists, or too few of a class).
CREATE OR REPLACE FUNCTION reflect._fit_gate_calibrator(p_job_id bigint, p_version integer, p_metrics jsonb)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- A finished gate (result: {"scores": [{"candidate_request_id", "candidate_correct", "parent_correct"}, ...]}):
-- stores the scores, applies the decision rule, records the decision with every number, and promotes or
-- rejects the candidate. The rule (docs/improve.md):
--   promote only if  (a) the lower bound of the paired gain on the corrected prompts is > 0, and on their
--                        rewordings alone too once there are gate_rephrase_min of them
--                    (b) the held-out accuracy does not drop by more than gate_heldout_margin (if any held out)
--                    (c) the retention accuracy does not drop by more than gate_retention_margin (items needed)
--                    (d) calibration is not measurably worse: with each version calibrated on its own gate
--                        answers (_gate_calibration), the upper bound of the paired difference in Brier skill
--                        is not below -gate_calibration_margin
CREATE OR REPLACE FUNCTION reflect._finish_gate(j reflect.jobs, p_result jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- Applies and records a decision. promote: the candidate becomes active (the version it replaces is retired);
-- canary: the candidate gets canary_share of the default traffic until reflect.canary_step_v1 decides (a
-- running canary it replaces is stopped); reject: the candidate is rejected; rollback: the candidate's parent
-- is active again and the candidate is rejected. Row locks on both versions serialise concurrent decisions.
-- Any decision but 'canary' ends a running canary of this candidate.
CREATE OR REPLACE FUNCTION reflect._decide(p_candidate integer, p_decision text, p_reason text, p_numbers jsonb,
                                           p_rule jsonb, p_job_id bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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

-- A person's decision (`pgreflect improve promote|reject|canary VERSION`): overrides the gate, recorded as
-- theirs.
CREATE OR REPLACE FUNCTION reflect.decide_model_version_v1(p_name text, p_decision text, p_reason text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Makes the active version's parent active again at once (`pgreflect models rollback`). The rolled-back
-- version's files and rows stay for audit; apps that pin it by name still get it.
CREATE OR REPLACE FUNCTION reflect.rollback_model_version_v1(p_reason text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- Retention items (public dataset questions) with their prompt embeddings, for the gate and the leakage check.
CREATE OR REPLACE FUNCTION reflect.add_retention_items_v1(p_items jsonb, p_embedding_model text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- For analysts: every version with its lineage, state and the latest decision's numbers (no text).
CREATE OR REPLACE VIEW reflect.model_states AS
SELECT mv.id, mv.name, parent.name AS parent, base.name AS base,
       CASE WHEN mv.is_active THEN 'active' WHEN mv.stage = 'promoted' THEN 'retired' ELSE mv.stage END AS state,
       mv.backend, mv.adapter_sha256, mv.training_set_id, mv.finetune_job_id, mv.hyperparameters,
       mv.training_metrics, d.decision AS last_decision, d.decided_by, d.reason, d.numbers, d.decided_at,
       mv.created_at
FROM reflect.model_versions mv
LEFT JOIN reflect.model_versions parent ON parent.id = mv.parent_id
LEFT JOIN reflect.model_versions base ON base.id = mv.base_model_version_id
LEFT JOIN LATERAL (SELECT * FROM reflect.promotion_decisions pd WHERE pd.candidate_id = mv.id
                   ORDER BY pd.id DESC LIMIT 1) d ON true;

-- For analysts: the latest progress of each fine-tune job.
CREATE OR REPLACE VIEW reflect.training_status AS
SELECT j.id AS job_id, j.state::text AS state, j.attempts, (j.payload ->> 'training_set_id')::integer AS training_set_id,
       p.step, p.total_steps, p.epoch, p.loss, p.tokens_per_s, p.eta_s, p.rss_mb, p.recorded_at, j.last_error,
       m.decision AS memory_decision, m.estimate_mb AS memory_estimate_mb, m.available_mb AS memory_available_mb,
       m.gradient_checkpointing, m.serving_paused, m.detail AS memory_detail
FROM reflect.jobs j
LEFT JOIN LATERAL (SELECT * FROM reflect.training_progress tp WHERE tp.job_id = j.id
                   ORDER BY tp.step DESC LIMIT 1) p ON true
LEFT JOIN LATERAL (SELECT * FROM reflect.training_memory tm WHERE tm.job_id = j.id
                   ORDER BY tm.attempt DESC LIMIT 1) m ON true
WHERE j.kind = 'finetune';

-- The version a request that names none gets: the active one, or, while a canary of the active version runs,
-- its candidate for canary_share of the requests (each request records the version that served it).
CREATE OR REPLACE FUNCTION reflect._default_version()
RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN c.id IS NOT NULL AND random() < c.share THEN c.candidate_id ELSE a.id END
  FROM reflect.model_versions a
  LEFT JOIN reflect.canaries c ON c.state = 'running' AND c.parent_id = a.id
  WHERE a.is_active
$$;

-- Every canary with its evidence (analysts read it; reflect.canary_step_v1 decides from it): per arm (parent,
-- candidate) the labelled answers to requests made since it started (evaluation traffic excluded) and how many
-- were right (a correction counts as wrong), and the generalized likelihood ratio statistic of "both arms have
-- the same accuracy", sum over arms of n * KL(arm's accuracy || pooled accuracy), with its stopping threshold
-- ln((1 + ln N) / delta) (the track-and-stop rule TensorZero uses for its experiments, here with two arms).
CREATE OR REPLACE VIEW reflect.canary_status AS
WITH arms AS (
  SELECT c.id,
         count(l.ok) FILTER (WHERE l.version = c.candidate_id) AS n_c,
         coalesce(sum(l.ok) FILTER (WHERE l.version = c.candidate_id), 0) AS s_c,
         count(l.ok) FILTER (WHERE l.version = c.parent_id) AS n_p,
         coalesce(sum(l.ok) FILTER (WHERE l.version = c.parent_id), 0) AS s_p
  FROM reflect.canaries c
  LEFT JOIN LATERAL (
    SELECT DISTINCT ON (f.request_id) r.model_version_id AS version,
           (f.is_correct IS TRUE AND f.correction_enc IS NULL)::int AS ok
    FROM reflect.requests r
    JOIN reflect.feedback f ON f.request_id = r.id AND (f.is_correct IS NOT NULL OR f.correction_enc IS NOT NULL)
    WHERE r.model_version_id IN (c.candidate_id, c.parent_id) AND r.created_at >= c.started_at
      AND NOT EXISTS (SELECT FROM reflect.eval_requests e WHERE e.request_id = r.id)
    ORDER BY f.request_id, f.id DESC
  ) l ON true
  GROUP BY c.id
), rates AS (
  SELECT a.*, a.s_c::float8 / nullif(a.n_c, 0) AS p_c, a.s_p::float8 / nullif(a.n_p, 0) AS p_p,
         (a.s_c + a.s_p)::float8 / nullif(a.n_c + a.n_p, 0) AS q
  FROM arms a
), glr AS (
  SELECT r.*,
         CASE WHEN r.q IS NULL OR r.q <= 0 OR r.q >= 1 THEN 0 ELSE
           r.n_c * (CASE WHEN r.p_c > 0 THEN r.p_c * ln(r.p_c / r.q) ELSE 0 END
                    + CASE WHEN r.p_c < 1 THEN (1 - r.p_c) * ln((1 - r.p_c) / (1 - r.q)) ELSE 0 END)
           + r.n_p * (CASE WHEN r.p_p > 0 THEN r.p_p * ln(r.p_p / r.q) ELSE 0 END
                      + CASE WHEN r.p_p < 1 THEN (1 - r.p_p) * ln((1 - r.p_p) / (1 - r.q)) ELSE 0 END) END AS stat
  FROM rates r
)
SELECT c.id, cand.name AS candidate, parent.name AS parent, c.share, c.state, c.started_at, c.ended_at, c.started_by,
       g.n_c AS candidate_labels, g.s_c AS candidate_right, g.p_c AS candidate_accuracy,
       g.n_p AS parent_labels, g.s_p AS parent_right, g.p_p AS parent_accuracy,
       coalesce(g.stat, 0) AS glr,
       ln((1 + ln(greatest(g.n_c + g.n_p, 1))) / (SELECT (value #>> '{}')::float8 FROM reflect.settings WHERE key = 'canary_delta'))
         AS threshold,
       (SELECT (value #>> '{}')::integer FROM reflect.settings WHERE key = 'canary_min_labels') AS min_labels
FROM reflect.canaries c
JOIN glr g ON g.id = c.id
JOIN reflect.model_versions cand ON cand.id = c.candidate_id
JOIN reflect.model_versions parent ON parent.id = c.parent_id;

-- The canary's decision (pg_cron pgreflect-canary-step, every 5 minutes): once both arms have
-- canary_min_labels labelled answers and the GLR statistic passes its threshold, the better arm wins: the
-- candidate is promoted, or rolled back (rejected; the parent stays active). A canary whose parent is no
-- longer active is stopped. Returns the number of canaries decided or stopped.
CREATE OR REPLACE FUNCTION reflect.canary_step_v1()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
