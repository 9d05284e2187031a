-- pgreflect 0005: curation. Training sets built in the database from what it already knows (corrections,
-- answers confirmed correct), stored as snapshots, and the fine-tune jobs they feed.
SET LOCAL ROLE reflect_owner;

-- One snapshot of one owner's history, frozen when it was made: the examples' text is copied as ciphertext
-- (same key ids), so later feedback or rotation of the sources cannot change what a model was trained on.
CREATE TABLE reflect.training_sets (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  owner name NOT NULL,          -- whose requests; a model trained on it serves that owner and its share readers
  base_model_version_id integer NOT NULL REFERENCES reflect.model_versions (id),
  created_by name NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  n_candidates integer NOT NULL,
  n_corrections integer NOT NULL,
  n_confirmed integer NOT NULL,
  n_duplicates_merged integer NOT NULL,
  n_excluded_leakage integer NOT NULL,
  n_excluded_no_embedding integer NOT NULL,
  n_train integer NOT NULL,
  n_heldout integer NOT NULL,
  content_hash text NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),  -- sha256 of the examples' ciphertexts
  settings jsonb NOT NULL,
  CONSTRAINT training_set_not_empty CHECK (n_train + n_heldout > 0)
);

CREATE TABLE reflect.training_examples (
  training_set_id integer NOT NULL REFERENCES reflect.training_sets (id),
  request_id bigint NOT NULL REFERENCES reflect.requests (id),
  feedback_id bigint NOT NULL REFERENCES reflect.feedback (id),
  source text NOT NULL CHECK (source IN ('correction', 'confirmed')),
  split text NOT NULL CHECK (split IN ('train', 'heldout')),
  key_id text NOT NULL,
  prompt_enc bytea NOT NULL,
  system_prompt_enc bytea,
  completion_enc bytea NOT NULL,  -- the correction, or the answer that was confirmed
  PRIMARY KEY (training_set_id, request_id)
);

ALTER TABLE reflect.training_sets ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.training_examples ENABLE ROW LEVEL SECURITY;

INSERT INTO reflect.settings (key, value, description) VALUES
  ('curation_duplicate_similarity', '0.95',
   'Prompts at least this similar (embedding cosine) are near-duplicates: merged in a training set, and kept out of it when they match an evaluation item'),
  ('curation_heldout_share', '0.2', 'Share of a training set held out from training (by a stable hash of the request id)'),
  ('finetune_min_new_corrections', '50',
   'New corrections of one owner since its last training set that make the scheduled job curate a set and queue a fine-tune'),
  ('memory_max_distance', '0.38',
   'Memories farther than this (cosine distance of the prompt embeddings) are not retrieved: bench/results/memory-distance.md');
