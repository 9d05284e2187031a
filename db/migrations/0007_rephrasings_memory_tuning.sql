-- pgreflect 0007: rephrasings in the gate, and self-tuning of memory retrieval.
-- Gate part r: part (a) asks the corrected prompts verbatim; part r asks the parent's own rewording of each
-- (did the candidate learn the fact, not the wording?). A part-r item points at the training example it
-- rephrases, and its reference is that example's correction.
-- Curation: merging near-duplicates and keeping evaluation items out get separate thresholds. One 0.95
-- for both merged 39 of 100 distinct templated prompts in run 2 of the improvement benchmark (BIG-bench
-- "plus one" prompts share a few-shot block: pairwise cosine p50 0.936, p95 0.96, max 0.98), while a
-- paraphrase of an evaluation item must stay out of training (paraphrase pairs measured 0.945-0.993).
-- Memory tuning: a small random share of the requests that leave memory to pgreflect is answered under a
-- randomly drawn memory policy (no memory, or 1..memory_k_max memories within a wider cutoff); every recall
-- records how far the nearest memory was. Labels on those answers tell which cutoff and k work best
-- (reflect.tune_memory_v1), recorded and reversible in reflect.tuning_changes like the confidence threshold.
SET LOCAL ROLE reflect_owner;

ALTER TABLE reflect.gate_items DROP CONSTRAINT gate_items_part_check;
ALTER TABLE reflect.gate_items ADD CONSTRAINT gate_items_part_check CHECK (part IN ('a', 'r', 'b', 'c'));

ALTER TABLE reflect.tuning_changes DROP CONSTRAINT tuning_changes_knob_check;
ALTER TABLE reflect.tuning_changes ADD CONSTRAINT tuning_changes_knob_check
  CHECK (knob IN ('confidence_threshold', 'memory_max_distance', 'memory_k'));

-- One row per recall (the worker's reflect.recall_v1 call): the distance of the nearest memory the request
-- could use, whether or not it was within the cutoff, and the policy it was answered under.
CREATE TABLE reflect.memory_lookups (
  request_id bigint PRIMARY KEY REFERENCES reflect.requests (id),
  nearest_distance double precision,          -- NULL: the owner had no memory yet
  max_distance double precision NOT NULL,     -- the cutoff in force for this request
  k integer NOT NULL,                         -- memories it could get
  explored boolean NOT NULL,                  -- its policy was drawn at random (memory_explore_share)
  used integer NOT NULL,                      -- memories it got
  looked_up_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE reflect.memory_lookups ENABLE ROW LEVEL SECURITY;

UPDATE reflect.settings
SET description = 'Largest accepted drop in the Brier skill of the calibrated confidence (paired upper bound) on the gate''s held-out and retention items'
WHERE key = 'gate_calibration_margin';

UPDATE reflect.settings SET value = '0.985',
  description = 'Prompts at least this similar (embedding cosine) are merged in a training set'
WHERE key = 'curation_duplicate_similarity' AND value = '0.95';

INSERT INTO reflect.settings (key, value, description) VALUES
  ('curation_leakage_similarity', '0.95',
   'A candidate at least this similar (embedding cosine) to an evaluation request or a retention item stays out of training'),
  ('gate_rephrase', 'true', 'Ask the parent to reword each corrected prompt and put the rewordings in the gate (part r)'),
  ('gate_rephrase_max_chars', '400', 'Corrected prompts longer than this are not reworded (few-shot blocks, documents)'),
  ('memory_explore_share', '0.05',
   'Share of the requests that leave memory to pgreflect answered under a random memory policy (0: never)'),
  ('memory_explore_max_distance', '0.6', 'Cutoff of the explored policies that use memories'),
  ('memory_k_max', '3', 'Largest k an explored policy draws (it draws 0..memory_k_max memories, uniformly)'),
  ('memory_tuning_min_labels', '100', 'Labelled explored answers a version needs before its memory cutoff and k are tuned');
