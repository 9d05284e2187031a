-- pgreflect 0006: the improvement loop. A fine-tune job trains a LoRA adapter on a training set, the adapter
-- becomes a candidate model version (the parent's GGUF plus the adapter), a gate job has the candidate and
-- its parent answer the same evaluation items through the request path, and a promotion decision with every
-- number is stored before the candidate is served by default (or rejected, or later rolled back).
SET LOCAL ROLE reflect_owner;

-- Lifecycle of a version (docs/state-machine.md, "Model versions"): registered (by hand), candidate (trained,
-- waiting for its gate), canary (serving a share of traffic), rejected (the gate or a person said no),
-- promoted (made active by a decision; retired once replaced). 'active' is is_active (one at a time); the
-- model_states view shows the combined state.
ALTER TABLE reflect.model_versions
  ADD COLUMN stage text NOT NULL DEFAULT 'registered'
    CHECK (stage IN ('registered', 'candidate', 'canary', 'rejected', 'retired', 'promoted')),
  ADD COLUMN base_model_version_id integer REFERENCES reflect.model_versions (id),  -- the GGUF an adapter applies to
  ADD COLUMN adapter_path text,
  ADD COLUMN adapter_sha256 text CHECK (adapter_sha256 ~ '^[0-9a-f]{64}$'),
  ADD COLUMN training_set_id integer REFERENCES reflect.training_sets (id),
  ADD COLUMN finetune_job_id bigint REFERENCES reflect.jobs (id),
  ADD COLUMN hyperparameters jsonb,
  ADD COLUMN training_metrics jsonb,
  ADD CONSTRAINT adapter_complete CHECK (
    (adapter_path IS NULL) = (adapter_sha256 IS NULL) AND (adapter_path IS NULL) = (base_model_version_id IS NULL));
CREATE UNIQUE INDEX model_versions_one_per_finetune ON reflect.model_versions (finetune_job_id)
  WHERE finetune_job_id IS NOT NULL;

-- Training progress, one row per reported step, readable by analysts (no text).
CREATE TABLE reflect.training_progress (
  job_id bigint NOT NULL REFERENCES reflect.jobs (id),
  step integer NOT NULL CHECK (step >= 0),
  total_steps integer NOT NULL CHECK (total_steps >= 0),
  epoch double precision,
  loss double precision,
  tokens_per_s double precision,
  eta_s double precision,
  rss_mb double precision,
  recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (job_id, step)
);

-- A fixed retention set from packaged datasets (public questions, so stored as text): never trained on (the
-- curation's leakage check keeps them and their near-duplicates out), asked of every candidate and its parent.
CREATE TABLE reflect.retention_items (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  dataset text NOT NULL CHECK (dataset ~ '^[a-z0-9_]{1,40}$'),
  item_id text NOT NULL CHECK (length(item_id) BETWEEN 1 AND 200),
  prompt text NOT NULL CHECK (prompt <> ''),
  system_prompt text,
  reference text NOT NULL CHECK (reference <> ''),
  max_tokens integer NOT NULL DEFAULT 64 CHECK (max_tokens BETWEEN 1 AND 4096),
  embedding_model text,
  embedding public.vector(384),
  added_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (dataset, item_id)
);

-- One gate run: the candidate and its parent answer the same items (memory off, greedy).
--   part a: the training set's corrected prompts (did it learn what it was told)
--   part b: the training set's held-out examples (did the skill generalise)
--   part c: the retention items (did it forget)
CREATE TABLE reflect.gate_items (
  job_id bigint NOT NULL REFERENCES reflect.jobs (id),
  part text NOT NULL CHECK (part IN ('a', 'b', 'c')),
  example_request_id bigint REFERENCES reflect.requests (id),    -- parts a and b: the training example
  retention_item_id integer REFERENCES reflect.retention_items (id),  -- part c
  candidate_request_id bigint NOT NULL REFERENCES reflect.requests (id),
  parent_request_id bigint NOT NULL REFERENCES reflect.requests (id),
  candidate_correct boolean,
  parent_correct boolean,
  CONSTRAINT gate_item_source CHECK ((part = 'c') = (retention_item_id IS NOT NULL)
                                     AND (part = 'c') = (example_request_id IS NULL)),
  UNIQUE (job_id, candidate_request_id)
);

-- Every decision on a candidate, by the gate, the canary or a person, with the numbers and the rule.
CREATE TABLE reflect.promotion_decisions (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  candidate_id integer NOT NULL REFERENCES reflect.model_versions (id),
  parent_id integer REFERENCES reflect.model_versions (id),
  job_id bigint REFERENCES reflect.jobs (id),
  decision text NOT NULL CHECK (decision IN ('promote', 'reject', 'rollback', 'canary')),
  decided_by name NOT NULL,
  reason text NOT NULL,
  numbers jsonb NOT NULL DEFAULT '{}'::jsonb,
  rule jsonb NOT NULL DEFAULT '{}'::jsonb,
  decided_at timestamptz NOT NULL DEFAULT now()
);

-- A canary: a share of the requests that name no version goes to the candidate instead of the active version
-- (its parent) until a sequential test on the answers' feedback decides (reflect.canary_step_v1, pg_cron).
CREATE TABLE reflect.canaries (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  candidate_id integer NOT NULL REFERENCES reflect.model_versions (id),
  parent_id integer NOT NULL REFERENCES reflect.model_versions (id),
  share double precision NOT NULL CHECK (share > 0 AND share < 1),
  state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'promoted', 'rolled_back', 'stopped')),
  started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  ended_at timestamptz,
  started_by name NOT NULL,
  CONSTRAINT canary_ended_iff_final CHECK ((state = 'running') = (ended_at IS NULL))
);
CREATE UNIQUE INDEX canaries_one_running ON reflect.canaries ((true)) WHERE state = 'running';

-- Knobs tuned from labels without training (self-tuning), recorded and reversible like a promotion: the
-- value in force for a version is its newest change not reverted, else the global setting.
CREATE TABLE reflect.tuning_changes (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  model_version_id integer NOT NULL REFERENCES reflect.model_versions (id),
  knob text NOT NULL CHECK (knob IN ('confidence_threshold')),
  old_value double precision,
  new_value double precision NOT NULL,
  reason text NOT NULL,
  evidence jsonb NOT NULL,       -- which labels chose it and what it is expected to do
  decided_by name NOT NULL,
  decided_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  reverted_at timestamptz,
  reverted_by name,
  CONSTRAINT reverted_together CHECK ((reverted_at IS NULL) = (reverted_by IS NULL))
);
CREATE INDEX tuning_changes_in_force ON reflect.tuning_changes (model_version_id, knob, id DESC)
  WHERE reverted_at IS NULL;

ALTER TABLE reflect.tuning_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.canaries ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.training_progress ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.retention_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.gate_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.promotion_decisions ENABLE ROW LEVEL SECURITY;

INSERT INTO reflect.settings (key, value, description) VALUES
  ('finetune_lora_rank', '8', 'LoRA rank r (plain LoRA: llama.cpp scales by alpha/r)'),
  ('finetune_lora_alpha', '16', 'LoRA alpha'),
  ('finetune_target_modules', '"q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"',
   'Modules that get an adapter (never embeddings or lm_head: Qwen ties them)'),
  ('finetune_learning_rate', '0.0002', 'AdamW learning rate'),
  ('finetune_epochs', '2', 'Passes over the training examples'),
  ('finetune_batch_size', '4', 'Examples per optimizer step'),
  ('finetune_max_seq_len', '256', 'Longer examples are cut to this many tokens (the answer part is kept)'),
  ('finetune_seed', '0', 'Seed for shuffling and the adapter''s initialisation'),
  ('finetune_checkpoint_every_s', '60', 'Seconds between training checkpoints (a killed job resumes from the last)'),
  ('finetune_replay_ratio', '1.0', 'Confirmed answers mixed in per correction, at most (replay against forgetting)'),
  ('gate_retention_size', '300', 'Retention items asked of a candidate and its parent'),
  ('gate_retention_margin', '0.01', 'Largest accepted drop in retention accuracy (paired, point estimate)'),
  ('gate_heldout_margin', '0.0', 'Largest accepted drop in held-out accuracy (paired, point estimate)'),
  ('gate_calibration_margin', '0.02', 'Largest accepted rise in Brier score on the gate''s items'),
  ('gate_z', '1.645', 'z of the one-sided lower confidence bound on the corrected prompts (1.645: 95%)'),
  ('gate_max_tokens', '64', 'max_tokens of the gate''s answers to corrected and held-out prompts'),
  ('gate_poll_s', '5', 'Seconds a gate job waits before it looks again at answers still being generated'),
  ('canary_share', '0.1', 'Share of default traffic a candidate the gate passed gets before full promotion (0: promote at once)'),
  ('canary_min_labels', '30', 'Labelled answers each arm of a canary needs before the test may stop'),
  ('tuning_target_accuracy', '0.9', 'Accuracy the tuned confidence threshold aims for on the answers it lets through'),
  ('tuning_min_labels', '100', 'Labelled answers a version needs before its confidence threshold is tuned'),
  ('canary_delta', '0.05', 'Error probability of the canary''s sequential test (stops when GLR > ln((1 + ln N) / delta))');
