SET LOCAL ROLE reflect_owner;

-- Builds a training set from one owner's history, in the database:
--   candidates  requests of p_owner whose latest right/wrong feedback is a correction (target: the
--               correction) or says the answer was correct (target: the answer; replay against forgetting)
--   leakage     evaluation requests (reflect.eval_requests), and any candidate whose prompt is a near-duplicate
--               (cosine >= curation_leakage_similarity) of an evaluation request's or a retention item's
--               prompt (reflect.retention_items, the gate's forgetting check), never enter
--   duplicates  near-duplicate prompts (cosine >= curation_duplicate_similarity, stricter: templated prompts
--               that differ in a number are not duplicates) are merged: a correction wins over a
--               confirmation, then the newest
--   split       train / heldout by a stable hash of the request id (curation_heldout_share held out)
-- Candidates without a prompt embedding (memory was off) cannot be checked for leakage or duplicates and are
-- left out and counted. Refuses (PR001) when nothing is left to train on.
CREATE OR REPLACE FUNCTION reflect.curate_training_set_v1(p_owner name, p_model_version text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
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

-- Stable train / held-out assignment by request id (the same request always lands on the same side).
CREATE OR REPLACE FUNCTION reflect._heldout(p_request_id bigint, p_share double precision)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT (('x' || substr(md5('training-split:' || p_request_id), 1, 8))::bit(32)::bigint / 4294967296.0) < p_share
$$;

-- Curates a set for p_owner and queues a fine-tune job for it (NOTIFY needs_finetune, payload: the job id).
-- Returns the job id. `pgreflect improve run` calls this whatever the threshold.
CREATE OR REPLACE FUNCTION reflect.request_finetune_v1(p_owner name, p_model_version text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- The scheduled decision (pg_cron, pgreflect-finetune-when-ready): for each owner with at least
-- finetune_min_new_corrections corrections newer than its last training set and no fine-tune queued or
-- running, curate a set for the active version and queue a fine-tune. Returns the number queued.
CREATE OR REPLACE FUNCTION reflect.finetune_when_ready_v1()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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

-- For analysts: training sets without text.
CREATE OR REPLACE VIEW reflect.training_set_summary AS
SELECT t.id, t.owner, mv.name AS base_model_version, t.created_by, t.created_at, t.n_candidates, t.n_corrections,
       t.n_confirmed, t.n_duplicates_merged, t.n_excluded_leakage, t.n_excluded_no_embedding, t.n_train,
       t.n_heldout, t.content_hash, t.settings
FROM reflect.training_sets t
JOIN reflect.model_versions mv ON mv.id = t.base_model_version_id;
