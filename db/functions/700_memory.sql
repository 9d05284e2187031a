SET LOCAL ROLE reflect_owner;

-- How far a memory may be from a prompt and still be retrieved: the request's memory_max_distance, set by
-- _normalize_params from the setting (requests queued before the setting existed fall back to it).
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
-- shared ones: past requests with a correction or a confirmed-correct answer), decrypted for use as
-- few-shot examples, and records which were used. The HNSW scan runs with pgvector's iterative scan so the
-- owner filter still finds k rows when other owners' memories are nearer. A memory whose text does not
-- decrypt is skipped.
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
  v_keys text[] := reflect._loaded_key_ids();
BEGIN
  r := reflect._take_lease(p_request_id, p_lease_token);
  IF p_embedding IS NULL OR public.vector_dims(p_embedding) <> 384 THEN
    RAISE EXCEPTION 'embedding must have 384 dimensions' USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.prompt_embeddings (request_id, model, embedding)
  VALUES (r.id, p_model, p_embedding)
  ON CONFLICT (request_id) DO UPDATE SET model = excluded.model, embedding = excluded.embedding;

  DELETE FROM reflect.answer_memories WHERE request_id = r.id;  -- a re-claim starts over
  v_k := coalesce(p_k, (r.params ->> 'memory_k')::integer, reflect._setting_int('memory_k_default'));
  IF coalesce((r.params ->> 'memory')::boolean, true) IS FALSE OR v_k <= 0 THEN
    RETURN;
  END IF;

  -- transaction-local; a SET clause on the function would need the setting known when it is created
  PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
  RETURN QUERY
  WITH nearest AS (
    SELECT m.request_id, m.kind, m.feedback_id, (m.embedding OPERATOR(public.<=>) p_embedding) AS dist
    FROM reflect.memories m
    WHERE m.request_id <> r.id AND m.owner = ANY (reflect._memory_owners(r.submitted_by))
    ORDER BY m.embedding OPERATOR(public.<=>) p_embedding
    LIMIT v_k
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
    -- the k nearest, then only those close enough to be about the same kind of question
    -- (memory_max_distance; why 0.38: bench/results/memory-distance.md)
    WHERE n.dist <= reflect._memory_max_distance(r.params)
  ), used AS (
    INSERT INTO reflect.answer_memories (request_id, memory_request_id, rank, distance)
    SELECT r.id, t.request_id, row_number() OVER (ORDER BY t.dist), t.dist FROM texts t WHERE t.ok
    RETURNING memory_request_id
  )
  SELECT t.request_id, t.kind, t.dist, t.prompt, t.answer, t.correction
  FROM texts t
  JOIN used u ON u.memory_request_id = t.request_id
  ORDER BY t.dist;
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
