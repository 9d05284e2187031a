SET LOCAL ROLE reflect_owner;

-- Analyst views: measurements only, never plaintext or ciphertext.

CREATE OR REPLACE VIEW reflect.request_metrics AS
SELECT
  r.id AS request_id,
  r.caller,
  r.submitted_by,
  mv.name AS model_version,
  r.state::text AS state,
  r.attempts,
  r.last_error,
  r.created_at,
  r.claimed_at,
  r.finished_at,
  a.worker_id,
  a.finish_reason,
  a.prompt_tokens,
  a.completion_tokens,
  a.logprob_mean,
  a.logprob_min,
  a.logprob_norm AS confidence,
  a.queue_wait_ms,
  a.prompt_eval_ms,
  a.generation_ms,
  a.tokens_per_s,
  extract(epoch FROM (r.finished_at - r.created_at)) * 1000 AS total_ms
FROM reflect.requests r
JOIN reflect.model_versions mv ON mv.id = r.model_version_id
LEFT JOIN reflect.answers a ON a.request_id = r.id;

CREATE OR REPLACE VIEW reflect.model_version_daily AS
SELECT
  mv.name AS model_version,
  date_trunc('day', r.created_at) AS day,
  count(*) AS requests,
  count(*) FILTER (WHERE r.state = 'succeeded') AS succeeded,
  count(*) FILTER (WHERE r.state = 'failed') AS failed,
  count(*) FILTER (WHERE r.state IN ('queued', 'running')) AS pending,
  avg(a.tokens_per_s) AS mean_tokens_per_s,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY a.queue_wait_ms) AS p50_queue_wait_ms,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY a.queue_wait_ms) AS p95_queue_wait_ms,
  avg(a.logprob_norm) AS mean_confidence,
  sum(a.completion_tokens) AS completion_tokens
FROM reflect.requests r
JOIN reflect.model_versions mv ON mv.id = r.model_version_id
LEFT JOIN reflect.answers a ON a.request_id = r.id
GROUP BY 1, 2;

CREATE OR REPLACE VIEW reflect.queue_status AS
SELECT
  mv.name AS model_version,
  mv.is_active,
  count(r.id) FILTER (WHERE r.state = 'queued') AS queued,
  count(r.id) FILTER (WHERE r.state = 'queued' AND r.run_after > now()) AS waiting_retry,
  count(r.id) FILTER (WHERE r.state = 'running') AS running,
  count(r.id) FILTER (WHERE r.state = 'running' AND r.lease_expires_at < now()) AS lease_expired,
  count(r.id) FILTER (WHERE r.state = 'succeeded') AS succeeded,
  count(r.id) FILTER (WHERE r.state = 'failed') AS failed,
  min(r.created_at) FILTER (WHERE r.state = 'queued') AS oldest_queued_at
FROM reflect.model_versions mv
LEFT JOIN reflect.requests r ON r.model_version_id = mv.id
GROUP BY mv.id, mv.name, mv.is_active;

CREATE OR REPLACE VIEW reflect.model_version_registry AS
SELECT mv.id, mv.name, mv.source, mv.sha256, p.name AS parent, mv.n_ctx, mv.is_active, mv.created_at
FROM reflect.model_versions mv
LEFT JOIN reflect.model_versions p ON p.id = mv.parent_id;

CREATE OR REPLACE VIEW reflect.request_audit AS
SELECT e.request_id, e.at, e.event, e.attempt, e.worker_id, e.detail
FROM reflect.request_events e;
