SET LOCAL ROLE reflect_owner;

-- How far a memory may be from a prompt and still be retrieved: the request's memory_max_distance (its own,
-- the version's tuned one, or the setting: _normalize_params and submit_v1 fill it in).
CREATE OR REPLACE FUNCTION reflect._memory_max_distance(p_params jsonb)
RETURNS double precision
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce((p_params ->> 'memory_max_distance')::double precision, reflect._setting_float('memory_max_distance'))
$$;

-- Memories a request may use: the submitter's own, and those of owners who shared theirs with it
-- (reflect.share_memories_v1). One app's questions, answers and corrections never reach another app's
-- prompt otherwise.
CREATE OR REPLACE FUNCTION reflect._memory_owners(p_reader name)
RETURNS name[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT array_append(coalesce(array_agg(s.owner), '{}'), p_reader)
  FROM reflect.memory_shares s WHERE s.reader = p_reader
$$;

-- Called by the worker right after a claim, with the prompt's embedding: stores the embedding, and when
-- the request has memory on, returns the k nearest memories the request may use (the submitter's own and
-- shared ones: past requests with a correction or a confirmed-correct answer) within its cutoff, decrypted
-- for use as few-shot examples, and records which were used (answer_memories) and how far the nearest
-- memory was, used or not (memory_lookups: the evidence reflect.tune_memory_v1 tunes the cutoff and k on).
-- The HNSW scan runs with pgvector's iterative scan so the owner filter still finds k rows when other
-- owners' memories are nearer. A memory whose text does not decrypt is skipped.
CREATE OR REPLACE FUNCTION reflect.recall_v1(
  p_request_id bigint,
  p_lease_token uuid,
  p_model text,
  p_embedding public.vector,
  p_k integer DEFAULT NULL
)
RETURNS TABLE (memory_request_id bigint, kind text, distance double precision, prompt text, answer text,
               correction text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
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

-- An app shares its memories with another app login (or stops sharing): the reader's requests may then
-- recall the owner's corrections and confirmed answers. The owner is always the calling login.
CREATE OR REPLACE FUNCTION reflect.share_memories_v1(p_reader name, p_share boolean DEFAULT true)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
