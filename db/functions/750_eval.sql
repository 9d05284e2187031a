SET LOCAL ROLE reflect_owner;

-- Stores the fixed train / held-out split of evaluation items (first writer wins: a split never changes).
CREATE OR REPLACE FUNCTION reflect.register_eval_items_v1(p_dataset text, p_item_ids text[], p_splits text[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_n integer;
  v_conflict text;
BEGIN
  IF p_dataset IS NULL OR p_dataset !~ '^[a-z0-9_]{1,40}$' THEN
    RAISE EXCEPTION 'dataset name must match ^[a-z0-9_]{1,40}$' USING ERRCODE = 'PR001';
  END IF;
  IF cardinality(p_item_ids) IS DISTINCT FROM cardinality(p_splits)
     OR EXISTS (SELECT FROM unnest(p_splits) s WHERE s IS NULL OR s NOT IN ('train', 'heldout')) THEN
    RAISE EXCEPTION 'one split (train or heldout) per item id' USING ERRCODE = 'PR001';
  END IF;
  SELECT i.id INTO v_conflict FROM unnest(p_item_ids, p_splits) AS i(id, split)
  JOIN reflect.eval_items e ON e.dataset = p_dataset AND e.item_id = i.id AND e.split <> i.split LIMIT 1;
  IF v_conflict IS NOT NULL THEN
    RAISE EXCEPTION 'item % of % is already stored in the other split', v_conflict, p_dataset USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.eval_items (dataset, item_id, split)
  SELECT p_dataset, id, split FROM unnest(p_item_ids, p_splits) AS i(id, split)
  ON CONFLICT DO NOTHING;
  GET DIAGNOSTICS v_n = ROW_COUNT;
  RETURN v_n;
END
$$;

-- Links one of the caller's requests to the evaluation item it asks (for per-split analysis in SQL).
CREATE OR REPLACE FUNCTION reflect.tag_eval_request_v1(p_request_id bigint, p_dataset text, p_item_id text,
                                                       p_run_label text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF NOT EXISTS (SELECT FROM reflect.requests WHERE id = p_request_id AND submitted_by = session_user) THEN
    RAISE EXCEPTION 'no request % (or it is not yours)', p_request_id USING ERRCODE = 'PR005';
  END IF;
  IF p_run_label IS NULL OR length(p_run_label) NOT BETWEEN 1 AND 100 THEN
    RAISE EXCEPTION 'run label must be 1 to 100 characters' USING ERRCODE = 'PR001';
  END IF;
  INSERT INTO reflect.eval_requests (request_id, dataset, item_id, run_label)
  VALUES (p_request_id, p_dataset, p_item_id, p_run_label)
  ON CONFLICT (request_id) DO UPDATE SET dataset = excluded.dataset, item_id = excluded.item_id,
                                         run_label = excluded.run_label;
END
$$;
