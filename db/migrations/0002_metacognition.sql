-- pgreflect 0002: signals, labels, calibrators, and memory of past mistakes (pgvector).
SET LOCAL ROLE reflect_owner;

-- One row per signal measured on an answer (log-prob statistics, P(True), rule checks, agreement...).
CREATE TABLE reflect.answer_signals (
  request_id bigint NOT NULL REFERENCES reflect.answers (request_id),
  name text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,40}$'),
  value double precision NOT NULL CHECK (value = value),  -- no NaN
  computed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (request_id, name)
);

-- Labels and corrections, from people or from ground truth (evaluation runs use the same path).
CREATE TABLE reflect.feedback (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  request_id bigint NOT NULL REFERENCES reflect.requests (id),
  is_correct boolean,
  rating smallint CHECK (rating BETWEEN 1 AND 5),
  key_id text,
  correction_enc bytea,
  source text NOT NULL CHECK (source ~ '^[a-z][a-z0-9_]{0,30}$'),
  given_by name NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  CONSTRAINT feedback_says_something CHECK (is_correct IS NOT NULL OR rating IS NOT NULL OR correction_enc IS NOT NULL),
  CONSTRAINT correction_has_key CHECK ((correction_enc IS NULL) = (key_id IS NULL))
);
CREATE INDEX feedback_request ON reflect.feedback (request_id, id DESC);

-- Logistic-regression calibrators, one active per model version. Features are standardised with the
-- training means and standard deviations stored beside the weights.
CREATE TABLE reflect.calibrators (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  model_version_id integer NOT NULL REFERENCES reflect.model_versions (id),
  method text NOT NULL CHECK (method = 'logistic_l2'),
  features text[] NOT NULL,
  feature_means double precision[] NOT NULL,
  feature_stds double precision[] NOT NULL,
  weights double precision[] NOT NULL,  -- intercept first, then one per feature
  n_train integer NOT NULL,
  n_heldout integer NOT NULL,
  heldout_metrics jsonb NOT NULL,
  labels_seen integer NOT NULL,          -- labelled answers of this version when it was fitted
  is_active boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT weights_match_features CHECK (cardinality(weights) = cardinality(features) + 1
    AND cardinality(feature_means) = cardinality(features) AND cardinality(feature_stds) = cardinality(features))
);
CREATE UNIQUE INDEX calibrators_one_active ON reflect.calibrators (model_version_id) WHERE is_active;

ALTER TABLE reflect.answers
  ADD COLUMN confidence double precision CHECK (confidence BETWEEN 0 AND 1),
  ADD COLUMN calibrator_id integer REFERENCES reflect.calibrators (id),  -- NULL: uncalibrated default
  ADD COLUMN action text NOT NULL DEFAULT 'answer'
    CHECK (action IN ('answer', 'flag', 'abstain', 'reanswer')),  -- what the low-confidence policy did
  ADD COLUMN memory_used boolean NOT NULL DEFAULT false;

-- Every prompt's embedding (sentence-transformers all-MiniLM-L6-v2, 384 dimensions).
CREATE TABLE reflect.prompt_embeddings (
  request_id bigint PRIMARY KEY REFERENCES reflect.requests (id),
  model text NOT NULL,
  embedding public.vector(384) NOT NULL
);

-- Memory: past requests that carry a correction, a confirmed-correct answer or a critique, with their
-- prompt embedding. Kept apart from prompt_embeddings so the HNSW search needs no filter (a filtered
-- HNSW scan loses recall when few rows qualify).
CREATE TABLE reflect.memories (
  request_id bigint PRIMARY KEY REFERENCES reflect.requests (id),
  kind text NOT NULL CHECK (kind IN ('correction', 'confirmed')),
  feedback_id bigint NOT NULL REFERENCES reflect.feedback (id),
  embedding public.vector(384) NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memories_embedding ON reflect.memories USING hnsw (embedding public.vector_cosine_ops);

-- Which memories went into which answer's prompt.
CREATE TABLE reflect.answer_memories (
  request_id bigint NOT NULL REFERENCES reflect.requests (id),
  memory_request_id bigint NOT NULL REFERENCES reflect.requests (id),
  rank integer NOT NULL,
  distance double precision NOT NULL,
  PRIMARY KEY (request_id, memory_request_id)
);

-- Evaluation datasets: the fixed train / held-out split of each item.
CREATE TABLE reflect.eval_items (
  dataset text NOT NULL CHECK (dataset ~ '^[a-z0-9_]{1,40}$'),
  item_id text NOT NULL,
  split text NOT NULL CHECK (split IN ('train', 'heldout')),
  PRIMARY KEY (dataset, item_id)
);
CREATE TABLE reflect.eval_requests (
  request_id bigint PRIMARY KEY REFERENCES reflect.requests (id),
  dataset text NOT NULL,
  item_id text NOT NULL,
  run_label text NOT NULL
);

-- Follow-up jobs on an answer that cost extra generations and run after the answer is returned:
-- a structured critique, and agreement between k extra samples. Same lease protocol as requests.
CREATE TABLE reflect.followups (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  request_id bigint NOT NULL REFERENCES reflect.answers (request_id),
  kind text NOT NULL CHECK (kind IN ('critique', 'agreement')),
  state reflect.request_state NOT NULL DEFAULT 'queued',
  attempts integer NOT NULL DEFAULT 0,
  max_attempts integer NOT NULL DEFAULT 2,
  lease_token uuid,
  lease_expires_at timestamptz,
  worker_id text,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  finished_at timestamptz,
  UNIQUE (request_id, kind),
  CONSTRAINT followup_running_iff_leased
    CHECK ((state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
  CONSTRAINT followup_attempts_within_max CHECK (attempts <= max_attempts)
);
CREATE INDEX followups_queued ON reflect.followups (id) WHERE state = 'queued';

-- Structured critiques (JSON constrained by a grammar), encrypted like other text; the verdict and
-- issue counts are kept in clear for analysis. Reviewers rate them 1 to 5.
CREATE TABLE reflect.critiques (
  request_id bigint PRIMARY KEY REFERENCES reflect.answers (request_id),
  key_id text NOT NULL,
  critique_enc bytea NOT NULL,
  verdict text NOT NULL CHECK (verdict IN ('correct', 'partially_correct', 'incorrect', 'unsure')),
  n_issues integer NOT NULL CHECK (n_issues >= 0),
  max_severity text CHECK (max_severity IN ('low', 'medium', 'high')),
  rating smallint CHECK (rating BETWEEN 1 AND 5),
  rated_by name,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Every attempt at an answer when the low-confidence action is 'reanswer': the first answer, and the
-- re-answer written with retrieved corrections as evidence; the one with the higher calibrated
-- confidence becomes the answer (chosen).
CREATE TABLE reflect.answer_candidates (
  request_id bigint NOT NULL REFERENCES reflect.requests (id),
  n integer NOT NULL CHECK (n >= 1),
  key_id text NOT NULL,
  answer_enc bytea NOT NULL,
  completion_tokens integer NOT NULL,
  logprob_mean double precision,
  logprob_min double precision,
  signals jsonb NOT NULL,
  confidence double precision NOT NULL CHECK (confidence BETWEEN 0 AND 1),
  evidence_request_ids bigint[] NOT NULL DEFAULT '{}',
  chosen boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (request_id, n)
);

ALTER TABLE reflect.answer_candidates ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.followups ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.critiques ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.answer_signals ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.feedback ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.calibrators ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.prompt_embeddings ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.memories ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.answer_memories ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.eval_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE reflect.eval_requests ENABLE ROW LEVEL SECURITY;

INSERT INTO reflect.settings (key, value, description) VALUES
  ('calibration_min_labels', '50', 'Labelled answers a model version needs before a calibrator is fitted'),
  ('calibration_min_per_class', '10', 'Correct and wrong answers each needed before fitting'),
  ('calibration_refit_new_labels', '25', 'New labels since the last fit that trigger a refit'),
  ('calibration_l2', '1.0', 'L2 penalty of the logistic regression (on standardised features)'),
  ('confidence_threshold_default', '0.5', 'Below this calibrated confidence the low-confidence action applies'),
  ('low_confidence_action_default', '"answer"', 'answer | flag | abstain, when a request sets none'),
  ('memory_k_default', '3', 'Past corrections retrieved as few-shot examples'),
  ('critique_fraction', '1.0', 'Share of answers that get a structured critique (evaluation traffic: all)'),
  ('agreement_fraction', '0.1', 'Share of answers that get the agreement signal (evaluation traffic: all)'),
  ('agreement_samples', '3', 'Extra samples drawn for the agreement signal'),
  ('agreement_temperature', '0.7', 'Sampling temperature of the agreement samples');
