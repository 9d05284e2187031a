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
  min(r.created_at) FILTER (WHERE r.state = 'queued') AS oldest_queued_at,
  -- submit refuses beyond it (0: none); read from the table: a view's function calls need the reader's rights
  (SELECT (s.value #>> '{}')::integer FROM reflect.settings s WHERE s.key = 'max_queued_per_version') AS queue_limit,
  -- time from submit to claim of the answers of the last hour
  (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY a.queue_wait_ms) FROM reflect.answers a
   WHERE a.model_version_id = mv.id AND a.created_at > now() - interval '1 hour') AS p50_wait_ms_last_hour,
  (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY a.queue_wait_ms) FROM reflect.answers a
   WHERE a.model_version_id = mv.id AND a.created_at > now() - interval '1 hour') AS p95_wait_ms_last_hour
FROM reflect.model_versions mv
LEFT JOIN reflect.requests r ON r.model_version_id = mv.id
GROUP BY mv.id, mv.name, mv.is_active;

CREATE OR REPLACE VIEW reflect.model_version_registry AS
SELECT mv.id, mv.name, mv.source, mv.sha256, p.name AS parent, mv.n_ctx, mv.is_active, mv.created_at, mv.backend,
       mv.base_url, mv.remote_model  -- backend openai: where it is served, and the server's name for it
FROM reflect.model_versions mv
LEFT JOIN reflect.model_versions p ON p.id = mv.parent_id;

CREATE OR REPLACE VIEW reflect.request_audit AS
SELECT e.request_id, e.at, e.event, e.attempt, e.worker_id, e.detail
FROM reflect.request_events e;

-- Labelled answers with their signals (no text): the base of the calibration views.
CREATE OR REPLACE VIEW reflect.labelled_answers AS
SELECT
  a.request_id,
  mv.name AS model_version,
  date_trunc('day', a.created_at) AS day,
  l.is_correct,
  l.source AS label_source,
  a.confidence,
  a.calibrator_id IS NOT NULL AS calibrated,
  a.action,
  a.memory_used,
  coalesce((r.params ->> 'memory')::boolean, true) AS memory_enabled,
  a.logprob_mean,
  a.logprob_min,
  a.logprob_norm,
  a.completion_tokens,
  (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'p_true') AS p_true,
  (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'p_answer')
    AS p_answer,
  (SELECT max(s.value) FROM reflect.answer_signals s
   WHERE s.request_id = a.request_id AND s.name LIKE 'rule\_%') AS rule_failed,
  (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'agreement')
    AS agreement,
  (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'critique_verdict')
    AS critique_verdict,
  (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'option_max_prob')
    AS option_max_prob,
  (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'option_margin')
    AS option_margin,
  (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'option_entropy')
    AS option_entropy,
  (SELECT s.value FROM reflect.answer_signals s WHERE s.request_id = a.request_id AND s.name = 'probe') AS probe
FROM reflect.answers a
JOIN reflect.labels l ON l.request_id = a.request_id
JOIN reflect.requests r ON r.id = a.request_id
JOIN reflect.model_versions mv ON mv.id = a.model_version_id;

-- Per model version and day. AUROCs score how well each signal ranks wrong answers above right ones
-- (0.5 = no information); accuracy_at_80 abstains on the least confident 20%.
CREATE OR REPLACE VIEW reflect.calibration_daily AS
SELECT
  model_version,
  day,
  count(*) AS labelled,
  avg(is_correct::int) AS accuracy,
  avg(confidence) AS mean_confidence,
  reflect.ece_v1(array_agg(confidence), array_agg(is_correct)) AS ece,
  reflect.brier_v1(array_agg(confidence), array_agg(is_correct)) AS brier,
  reflect.auroc_v1(array_agg(1 - confidence), array_agg(NOT is_correct)) AS auroc_confidence,
  reflect.auroc_v1(array_agg(-logprob_mean), array_agg(NOT is_correct)) AS auroc_logprob_mean,
  reflect.auroc_v1(array_agg(-logprob_min), array_agg(NOT is_correct)) AS auroc_logprob_min,
  reflect.auroc_v1(array_agg(-p_true), array_agg(NOT is_correct)) AS auroc_p_true,
  reflect.auroc_v1(array_agg(-p_answer), array_agg(NOT is_correct)) AS auroc_p_answer,
  reflect.auroc_v1(array_agg(rule_failed), array_agg(NOT is_correct)) AS auroc_rules,
  reflect.auroc_v1(array_agg(-agreement), array_agg(NOT is_correct)) AS auroc_agreement,
  reflect.auroc_v1(array_agg(-critique_verdict), array_agg(NOT is_correct)) AS auroc_critique,
  reflect.accuracy_at_coverage_v1(array_agg(confidence), array_agg(is_correct), 0.8) AS accuracy_at_80,
  avg((action = 'abstain')::int) AS abstention_rate,
  avg((action = 'flag')::int) AS review_rate,
  avg(is_correct::int) FILTER (WHERE memory_enabled) AS accuracy_memory_on,
  avg(is_correct::int) FILTER (WHERE NOT memory_enabled) AS accuracy_memory_off,
  avg(calibrated::int) AS calibrated_share
FROM reflect.labelled_answers
GROUP BY model_version, day;

-- Each signal's AUROC on its own, per model version over all labelled answers (the calibrated confidence
-- beside them), oriented by reflect.signal_orientations_v1. The columns are listed here rather than read by name
-- (to_jsonb(la) ->> signal): on 100,000 rows of 12 signals that read cost 88 us a row, the listed columns 1 us and
-- their join to the function 3 us (bench/signal_view_cost.py). A test keeps this list and the function's the same.
CREATE OR REPLACE VIEW reflect.signal_auroc AS
SELECT la.model_version, s.signal, count(s.score) AS n,
       reflect.auroc_v1(array_agg(s.score), array_agg(NOT la.is_correct)) AS auroc_wrong
FROM reflect.labelled_answers la
CROSS JOIN LATERAL (
  SELECT 'confidence' AS signal, 1 - la.confidence AS score
  UNION ALL
  SELECT v.signal, CASE WHEN o.higher_is_right THEN -v.value ELSE v.value END
  FROM (VALUES
    ('logprob_mean', la.logprob_mean), ('logprob_min', la.logprob_min), ('logprob_norm', la.logprob_norm),
    ('p_true', la.p_true), ('p_answer', la.p_answer), ('rule_failed', la.rule_failed), ('agreement', la.agreement),
    ('critique_verdict', la.critique_verdict), ('option_max_prob', la.option_max_prob),
    ('option_margin', la.option_margin), ('option_entropy', la.option_entropy), ('probe', la.probe)
  ) AS v(signal, value)
  JOIN reflect.signal_orientations_v1() o USING (signal)) AS s
WHERE s.score IS NOT NULL
GROUP BY la.model_version, s.signal;

-- Reliability diagram data: 10 equal-width confidence bins per model version.
CREATE OR REPLACE VIEW reflect.reliability AS
SELECT model_version,
       least(floor(confidence * 10)::int, 9) AS bin,
       least(floor(confidence * 10)::int, 9) / 10.0 AS bin_low,
       (least(floor(confidence * 10)::int, 9) + 1) / 10.0 AS bin_high,
       count(*) AS n,
       avg(confidence) AS mean_confidence,
       avg(is_correct::int) AS accuracy
FROM reflect.labelled_answers
WHERE confidence IS NOT NULL
GROUP BY model_version, 2, 3, 4;

CREATE OR REPLACE VIEW reflect.calibrator_history AS
SELECT c.id, mv.name AS model_version, c.method, c.features, c.weights, c.n_train, c.n_heldout,
       c.heldout_metrics, c.labels_seen, c.is_active, c.created_at
FROM reflect.calibrators c JOIN reflect.model_versions mv ON mv.id = c.model_version_id;

-- Evaluation results per run, dataset and split, for analysts (no text).
CREATE OR REPLACE VIEW reflect.eval_results AS
SELECT er.run_label, er.dataset, coalesce(ei.split, 'unsplit') AS split, la.model_version,
       count(*) AS n,
       avg(la.is_correct::int) AS accuracy,
       avg(la.confidence) AS mean_confidence,
       reflect.auroc_v1(array_agg(1 - la.confidence), array_agg(NOT la.is_correct)) AS auroc_confidence,
       reflect.ece_v1(array_agg(la.confidence), array_agg(la.is_correct)) AS ece,
       reflect.brier_v1(array_agg(la.confidence), array_agg(la.is_correct)) AS brier,
       reflect.accuracy_at_coverage_v1(array_agg(la.confidence), array_agg(la.is_correct), 0.8) AS accuracy_at_80,
       avg(la.calibrated::int) AS calibrated_share,
       -- the same numbers as the harness's report: intervals, ECE floor, selective gain share of the oracle's
       reflect.eval_metrics_v1(array_agg(la.confidence), array_agg(la.is_correct)) AS metrics
FROM reflect.eval_requests er
JOIN reflect.labelled_answers la ON la.request_id = er.request_id
LEFT JOIN reflect.eval_items ei ON ei.dataset = er.dataset AND ei.item_id = er.item_id
GROUP BY 1, 2, 3, 4;

-- The answers people should judge, numbers only (no text: a reviewer reads an item's text with
-- reflect.reveal_request_v1, which is audited, and judges it with reflect.review_v1): flagged, abstained, under their
-- confidence threshold, or in the review_sample_share sample of the rest. Evaluation traffic has ground truth and
-- is not shown. `label` is the latest verdict (NULL: not judged yet).
-- (Security definer: it reads the setting, and a view's functions run with the reader's rights.)
CREATE OR REPLACE FUNCTION reflect._sampled_for_review(p_request_id bigint)
RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT (('x' || substr(md5('review-sample:' || p_request_id), 1, 8))::bit(32)::bigint / 4294967296.0)
         < reflect._setting_float('review_sample_share')
$$;

CREATE OR REPLACE VIEW reflect.review_queue AS
SELECT
  q.request_id, q.model_version, q.app_login, q.caller, q.answered_at, q.confidence, q.calibrated, q.threshold,
  q.action,
  CASE WHEN q.action = 'abstain' THEN 'abstained' WHEN q.action = 'flag' THEN 'flagged'
       WHEN q.confidence < q.threshold THEN 'low_confidence' ELSE 'sampled' END AS reason,
  q.signals, q.critique_verdict, q.critique_rating, q.memory_used, l.is_correct AS label, l.source AS label_source
FROM (
  SELECT r.id AS request_id, mv.name AS model_version, r.submitted_by AS app_login, r.caller,
         a.created_at AS answered_at, a.confidence, a.calibrator_id IS NOT NULL AS calibrated,
         (r.params ->> 'confidence_threshold')::double precision AS threshold, a.action, a.memory_used,
         (SELECT jsonb_object_agg(s.name, s.value) FROM reflect.answer_signals s WHERE s.request_id = r.id) AS signals,
         c.verdict AS critique_verdict, c.rating AS critique_rating
  FROM reflect.requests r
  JOIN reflect.answers a ON a.request_id = r.id
  JOIN reflect.model_versions mv ON mv.id = r.model_version_id
  LEFT JOIN reflect.critiques c ON c.request_id = r.id
  WHERE r.state = 'succeeded'
    AND NOT EXISTS (SELECT FROM reflect.eval_requests e WHERE e.request_id = r.id)
) q
LEFT JOIN reflect.labels l ON l.request_id = q.request_id
WHERE q.action IN ('flag', 'abstain') OR q.confidence < q.threshold
   OR reflect._sampled_for_review(q.request_id);

-- The memories that went into an answer's prompt (numbers: which earlier request, its rank and distance, and what
-- it is now: a correction, a confirmed answer, or gone). A reviewer reads a memory's text with the audited reveal.
CREATE OR REPLACE VIEW reflect.review_memories AS
SELECT am.request_id, am.memory_request_id, am.rank, am.distance, m.kind
FROM reflect.answer_memories am
LEFT JOIN reflect.memories m ON m.request_id = am.memory_request_id;
