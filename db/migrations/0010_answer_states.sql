-- pgreflect 0010: the model's final-layer hidden state at each answer's last token (issue 8: a hidden-state
-- probe is trained on labelled answers). Read with llama.cpp's embeddings output during the answer's own
-- single-token decodes: no extra computation. Derived from the conversation's text, so it is internal like
-- the embeddings: RLS on, no role but the owner reads it.
SET LOCAL ROLE reflect_owner;

CREATE TABLE reflect.answer_states (
  request_id bigint PRIMARY KEY REFERENCES reflect.requests (id),
  model_version_id integer NOT NULL REFERENCES reflect.model_versions (id),
  state public.vector NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE reflect.answer_states ENABLE ROW LEVEL SECURITY;

-- A linear probe on those states per model version (pgreflect.meta.probe fits it on labelled answers):
-- logit = state . weights + bias, weights already divided by the training states' spread, so that applying
-- it is one pgvector inner product. One active probe per version.
CREATE TABLE reflect.state_probes (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  model_version_id integer NOT NULL REFERENCES reflect.model_versions (id),
  method text NOT NULL CHECK (method = 'logistic_l2'),
  weights public.vector NOT NULL,
  bias double precision NOT NULL,
  n_train integer NOT NULL CHECK (n_train > 0),
  metrics jsonb NOT NULL DEFAULT '{}',
  is_active boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX state_probes_one_active ON reflect.state_probes (model_version_id) WHERE is_active;
ALTER TABLE reflect.state_probes ENABLE ROW LEVEL SECURITY;

-- A state is ~6 KB (1,536 floats for the default model): kept for labelled answers (the probe's training data),
-- purged for answers still unlabelled after the retention below (a label usually comes within days, if at all).
INSERT INTO reflect.settings (key, value, description) VALUES
  ('answer_state_retention_days', '30',
   'Days an unlabelled answer''s hidden state is kept (labelled answers keep theirs: the probe trains on them); '
   'the pgreflect-purge-answer-states pg_cron job deletes older ones');
