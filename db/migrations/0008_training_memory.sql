-- pgreflect 0008: training must fit in memory beside PostgreSQL and a serving worker, and say what it did.
-- Measured on the default model (Qwen2.5-1.5B twin, fp32, batch 4 x 256 tokens, 2 cores, bench/results/
-- improve-memory.md): 16.6 GB peak with full-vocabulary logits at every position, 14.9 GB with logits only
-- at the answer tokens, lower again with gradient checkpointing at ~1.6x the time per step. So before each
-- training attempt the worker estimates the trainer's peak, compares it with the memory available, and
-- decides: train beside serving; turn gradient checkpointing on; stop serving on this worker while it
-- trains (restarted after); or refuse with the numbers. Every decision is stored here, with the numbers.
SET LOCAL ROLE reflect_owner;

CREATE TABLE reflect.training_memory (
  job_id bigint NOT NULL REFERENCES reflect.jobs (id),
  attempt integer NOT NULL CHECK (attempt >= 1),
  estimate_mb double precision NOT NULL CHECK (estimate_mb >= 0),
  available_mb double precision NOT NULL CHECK (available_mb >= 0),
  reserve_mb double precision NOT NULL CHECK (reserve_mb >= 0),
  gradient_checkpointing boolean NOT NULL,
  serving_paused boolean NOT NULL,
  decision text NOT NULL CHECK (decision IN ('alongside', 'checkpointing', 'paused_serving', 'refused')),
  detail text NOT NULL CHECK (length(detail) <= 2000),
  peak_rss_mb double precision CHECK (peak_rss_mb >= 0),
  decided_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (job_id, attempt)
);
ALTER TABLE reflect.training_memory ENABLE ROW LEVEL SECURITY;

INSERT INTO reflect.settings (key, value, description) VALUES
  ('finetune_memory_reserve_mb', '1536',
   'Memory (MB) a training run leaves free for PostgreSQL, the operating system and page cache'),
  ('finetune_gradient_checkpointing', '"auto"',
   'Gradient checkpointing while training: auto (only when the estimated peak does not fit otherwise), on, off'),
  ('finetune_pause_serving', '"auto"',
   'auto: a worker that cannot fit training beside its loaded models stops serving while it trains and '
   'starts again after; always: it does so for every training run; never: it refuses the attempt instead');
