SET LOCAL ROLE reflect_owner;

-- Called by the worker right after a claim, with the prompt's embedding: stores the embedding, and when
-- the request has memory on, returns the k nearest memories (past requests with a correction or a
-- confirmed-correct answer), decrypted for use as few-shot examples, and records which were used.
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

  RETURN QUERY
  WITH nearest AS (
    SELECT m.request_id, m.kind, m.feedback_id, (m.embedding OPERATOR(public.<=>) p_embedding) AS dist
    FROM reflect.memories m
    WHERE m.request_id <> r.id
    ORDER BY m.embedding OPERATOR(public.<=>) p_embedding
    LIMIT v_k
  ), used AS (
    INSERT INTO reflect.answer_memories (request_id, memory_request_id, rank, distance)
    SELECT r.id, n.request_id, row_number() OVER (ORDER BY n.dist), n.dist FROM nearest n
    JOIN reflect.requests mr ON mr.id = n.request_id
    WHERE reflect._key(mr.key_id) IS NOT NULL
    RETURNING memory_request_id
  )
  SELECT n.request_id, n.kind, n.dist, reflect._decrypt(mr.prompt_enc, mr.key_id),
         reflect._decrypt(a.answer_enc, a.key_id), reflect._decrypt(f.correction_enc, f.key_id)
  FROM nearest n
  JOIN used u ON u.memory_request_id = n.request_id
  JOIN reflect.requests mr ON mr.id = n.request_id
  LEFT JOIN reflect.answers a ON a.request_id = n.request_id
  LEFT JOIN reflect.feedback f ON f.id = n.feedback_id
  ORDER BY n.dist;
END
$$;
