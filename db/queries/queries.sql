-- Every runtime query of the Python side, loaded by name (pgreflect/sql.py). Parameters are always bind
-- parameters (%(name)s): keys and prompts never become part of a statement's text.

-- name: use_key
SELECT reflect.use_key_v1(%(key_id)s, %(key)s, %(current)s);

-- name: logging_settings
SELECT name, setting FROM pg_catalog.pg_settings
WHERE name IN ('log_parameter_max_length', 'log_parameter_max_length_on_error', 'log_min_error_statement',
               'log_statement', 'log_min_duration_statement', 'log_min_duration_sample',
               'log_statement_sample_rate', 'log_transaction_sample_rate', 'debug_print_parse',
               'debug_print_rewritten', 'debug_print_plan')
ORDER BY name;

-- name: models_to_serve
SELECT id, name, gguf_path, sha256, n_ctx, is_active, base_model_version_id, adapter_path, adapter_sha256,
       base_url, remote_model
FROM reflect.model_versions_to_serve_v4(%(backend)s, %(names)s);

-- name: listen
LISTEN needs_inference;

-- name: listen_done
LISTEN request_done;

-- name: claim
SELECT request_id, lease_token, attempt, model_version_id, prompt, system_prompt, params, queue_wait_ms
FROM reflect.claim_v1(%(worker_id)s, %(limit)s, %(lease_seconds)s, %(model_version_ids)s);

-- name: heartbeat
SELECT heartbeat_v1 AS request_id
FROM reflect.heartbeat_v1(%(request_ids)s, %(lease_tokens)s, %(lease_seconds)s);

-- name: complete
SELECT reflect.complete_v2(%(request_id)s, %(lease_token)s, %(answer)s, %(finish_reason)s,
                           %(prompt_tokens)s, %(token_logprobs)s::real[], %(prompt_eval_ms)s,
                           %(generation_ms)s, %(signals)s::jsonb) AS confidence;

-- name: complete_v1
SELECT reflect.complete_v1(%(request_id)s, %(lease_token)s, %(answer)s, %(finish_reason)s,
                           %(prompt_tokens)s, %(token_logprobs)s::real[], %(prompt_eval_ms)s,
                           %(generation_ms)s);

-- name: recall
SELECT memory_request_id, kind, distance, prompt, answer, correction
FROM reflect.recall_v1(%(request_id)s, %(lease_token)s, %(model)s, %(embedding)s::public.vector, %(k)s);

-- name: add_signals
SELECT reflect.add_signals_v1(%(request_id)s, %(signals)s::jsonb) AS confidence;

-- name: feedback
SELECT reflect.feedback_v1(%(request_id)s, %(is_correct)s, %(rating)s, %(correction)s, %(source)s) AS id;

-- name: fit_calibrator
SELECT reflect.fit_calibrator_v1(%(model_version)s) AS id;

-- name: refit_calibrators
SELECT reflect.refit_calibrators_v1() AS fitted;

-- name: fail
SELECT reflect.fail_v1(%(request_id)s, %(lease_token)s, %(error)s, %(retryable)s) AS state;

-- name: release
SELECT reflect.release_v1(%(request_id)s, %(lease_token)s);

-- name: reap_expired
SELECT reflect.reap_expired_v1() AS reaped;

-- name: worker_seen
SELECT reflect.worker_seen_v1(%(worker_id)s, %(model_version_ids)s, %(pid)s, %(hostname)s);

-- name: worker_stopped
SELECT reflect.worker_stopped_v1(%(worker_id)s);

-- name: live_workers
SELECT reflect.live_worker_count_v1(%(model_version)s) AS n;

-- name: submit_via_view
INSERT INTO reflect.app_requests (prompt, system_prompt, params, idempotency_key, caller, model_version, history)
VALUES (%(prompt)s, %(system_prompt)s, %(params)s, %(idempotency_key)s, %(caller)s, %(model_version)s,
        %(history)s)
RETURNING id, state;

-- name: app_request
SELECT id, state, attempts, last_error, model_version, answer, finish_reason, tokens, tokens_per_s,
       logprob_mean, logprob_min, confidence, prompt_tokens, queue_wait_ms, prompt_eval_ms, generation_ms,
       created_at, finished_at, calibrated, action, memory_used, signals, critique, critique_verdict,
       critique_rating, followups_pending, is_correct, token_logprobs, answer_tokens
FROM reflect.app_requests WHERE id = %(id)s;

-- name: register_model
SELECT reflect.register_model_version_v2(%(name)s, %(gguf_path)s, %(sha256)s, %(source)s, %(n_ctx)s,
                                         %(parent)s, %(activate)s, %(backend)s) AS id;

-- name: register_remote_model
SELECT reflect.register_remote_model_version_v1(%(name)s, %(base_url)s, %(remote_model)s, %(n_ctx)s, %(parent)s,
                                                %(activate)s) AS id;

-- name: activate_model
SELECT reflect.activate_model_version_v1(%(name)s) AS id;

-- name: list_models
SELECT id, name, source, sha256, parent, n_ctx, is_active, created_at, backend, base_url, remote_model
FROM reflect.model_version_registry ORDER BY id;

-- name: queue_status
SELECT model_version, is_active, queued, waiting_retry, running, lease_expired, succeeded, failed,
       oldest_queued_at
FROM reflect.queue_status ORDER BY model_version;

-- name: rotate_key
SELECT reflect.rotate_key_v1(%(from_key_id)s, %(batch)s) AS rotated;

-- name: ensure_login_role
SELECT reflect.ensure_login_role_v1(%(login)s, %(group_role)s);

-- name: workers
SELECT worker_id, hostname, pid, model_versions, started_at, last_seen_at, live FROM reflect.worker_status
ORDER BY started_at DESC LIMIT 20;

-- name: register_eval_items
SELECT reflect.register_eval_items_v1(%(dataset)s, %(item_ids)s, %(splits)s) AS added;

-- name: tag_eval_request
SELECT reflect.tag_eval_request_v1(%(request_id)s, %(dataset)s, %(item_id)s, %(run_label)s);

-- name: metrics
SELECT reflect.auroc_v1(%(wrong_scores)s::float8[], %(wrong)s::bool[]) AS auroc,
       reflect.ece_v1(%(confidence)s::float8[], %(correct)s::bool[]) AS ece,
       reflect.brier_v1(%(confidence)s::float8[], %(correct)s::bool[]) AS brier,
       reflect.accuracy_at_coverage_v1(%(confidence)s::float8[], %(correct)s::bool[], 0.8) AS accuracy_at_80;

-- name: probe_training_set
SELECT request_id, state, is_correct, dataset, heldout FROM reflect.probe_training_set_v1(%(model_version)s);

-- name: active_probe
SELECT id, weights, bias FROM reflect.active_probe_v1(%(model_version)s);

-- name: install_probe
SELECT reflect.install_probe_v1(%(model_version)s, %(weights)s::vector, %(bias)s, %(n_train)s, %(metrics)s,
                                %(activate)s);

-- name: set_probe_signals
SELECT reflect.set_probe_signals_v1(%(model_version)s, %(request_ids)s::bigint[], %(values)s::float8[]);

-- name: install_calibrator
SELECT reflect.install_calibrator_v1(%(model_version)s, %(document)s::jsonb);

-- name: export_calibrator
SELECT reflect.export_calibrator_v1(%(model_version)s);

-- name: eval_metrics
SELECT reflect.eval_metrics_v1(%(confidence)s::float8[], %(correct)s::bool[]);

-- name: signal_orientations
SELECT signal, higher_is_right FROM reflect.signal_orientations_v1();

-- name: auroc
SELECT reflect.auroc_v1(%(scores)s::float8[], %(positives)s::bool[]) AS auroc;

-- name: calibrator
SELECT heldout_metrics FROM reflect.calibrator_history WHERE id = %(id)s;

-- name: claim_followups
SELECT followup_id, lease_token, kind, request_id, model_version_id, prompt, system_prompt, answer, params,
       samples, temperature
FROM reflect.claim_followups_v1(%(worker_id)s, %(limit)s, %(lease_seconds)s, %(model_version_ids)s);

-- name: complete_followup
SELECT reflect.complete_followup_v1(%(followup_id)s, %(lease_token)s, %(signals)s::jsonb, %(critique)s)
  AS confidence;

-- name: rate_critique
SELECT reflect.rate_critique_v1(%(request_id)s, %(rating)s);

-- name: store_state
SELECT reflect.store_answer_state_v1(%(request_id)s, %(lease_token)s, %(state)s::vector);

-- name: record_candidate
SELECT n, confidence, reanswer
FROM reflect.record_candidate_v1(%(request_id)s, %(lease_token)s, %(answer)s, %(token_logprobs)s::real[],
                                 %(signals)s::jsonb, %(evidence)s::bigint[]);

-- name: evidence
SELECT memory_request_id, prompt, answer FROM reflect.evidence_v1(%(request_id)s, %(lease_token)s, %(k)s);

-- name: share_memories
SELECT reflect.share_memories_v1(%(reader)s, %(share)s) AS shared;

-- name: reveal_request
SELECT request_id, submitted_by, caller, state, prompt, system_prompt, answer, corrections, critique
FROM reflect.reveal_request_v1(%(request_id)s, %(purpose)s, %(redacted)s);

-- name: key_usage
SELECT key_id, table_name, n_rows FROM reflect.key_usage_v1() ORDER BY key_id, table_name;

-- name: app_register
INSERT INTO reflect.apps (name, login, key_id) VALUES (%(name)s, %(login)s, %(key_id)s)
ON CONFLICT (name) DO UPDATE SET revoked_at = NULL
RETURNING name, login, key_id, created_at;

-- name: app_list
SELECT name, login, key_id, created_at, revoked_at FROM reflect.apps ORDER BY name;

-- name: app_revoke
UPDATE reflect.apps SET revoked_at = now() WHERE name = %(name)s AND revoked_at IS NULL RETURNING login;

-- name: training_candidates
SELECT request_id FROM (
  SELECT DISTINCT ON (f.request_id) f.request_id, f.is_correct, f.correction_enc IS NOT NULL AS corrected
  FROM reflect.feedback f
  JOIN reflect.requests r ON r.id = f.request_id
  WHERE r.submitted_by = %(owner)s AND (f.is_correct IS NOT NULL OR f.correction_enc IS NOT NULL)
  ORDER BY f.request_id, f.id DESC
) latest
WHERE corrected OR is_correct
ORDER BY request_id;

-- name: pending_restart
SELECT name FROM pg_catalog.pg_settings WHERE pending_restart;

-- name: terminate_login_sessions
SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = %(login)s;

-- name: claim_jobs
SELECT job_id, lease_token, kind, attempt, request_id, model_version_id, payload, checkpoint
FROM reflect.claim_jobs_v1(%(worker_id)s, %(kinds)s, %(limit)s, %(lease_seconds)s, %(model_version_ids)s);

-- name: job_input
SELECT prompt, system_prompt, answer, params FROM reflect.job_input_v1(%(job_id)s, %(lease_token)s);

-- name: heartbeat_jobs
SELECT heartbeat_jobs_v1 AS job_id FROM reflect.heartbeat_jobs_v1(%(job_ids)s, %(lease_tokens)s, %(lease_seconds)s);

-- name: checkpoint_job
SELECT reflect.checkpoint_job_v1(%(job_id)s, %(lease_token)s, %(checkpoint)s::jsonb, %(lease_seconds)s);

-- name: complete_job
SELECT reflect.complete_job_v1(%(job_id)s, %(lease_token)s, %(result)s::jsonb) AS out;

-- name: fail_job
SELECT reflect.fail_job_v1(%(job_id)s, %(lease_token)s, %(error)s, %(retryable)s, %(release)s) AS state;

-- name: request_finetune
SELECT reflect.request_finetune_v1(%(owner)s, %(model_version)s) AS job_id;

-- name: job_status
SELECT id, kind, state::text AS state, payload, attempts, created_at, finished_at, last_error, result
FROM reflect.jobs WHERE id = %(job_id)s;

-- name: training_set
SELECT * FROM reflect.training_set_summary WHERE id = %(id)s;

-- name: training_sets
SELECT * FROM reflect.training_set_summary ORDER BY id DESC LIMIT 20;

-- name: finetune_jobs
SELECT id, state::text AS state, payload, attempts, created_at, finished_at, last_error
FROM reflect.jobs WHERE kind = 'finetune' ORDER BY id DESC LIMIT 20;

-- name: finetune_when_ready
SELECT reflect.finetune_when_ready_v1() AS queued;

-- name: finetune_plan
SELECT reflect.finetune_plan_v1(%(job_id)s, %(lease_token)s);

-- name: finetune_examples
SELECT request_id, source, split, system_prompt, prompt, completion
FROM reflect.finetune_examples_v1(%(job_id)s, %(lease_token)s);

-- name: training_progress
SELECT reflect.record_training_progress_v1(%(job_id)s, %(lease_token)s, %(step)s, %(total_steps)s, %(epoch)s,
                                           %(loss)s, %(tokens_per_s)s, %(eta_s)s, %(rss_mb)s);

-- name: training_memory
SELECT reflect.record_training_memory_v1(%(job_id)s, %(lease_token)s, %(estimate_mb)s, %(available_mb)s,
                                         %(reserve_mb)s, %(gradient_checkpointing)s, %(serving_paused)s,
                                         %(decision)s, %(detail)s, %(peak_rss_mb)s);

-- name: snooze_job
SELECT reflect.snooze_job_v1(%(job_id)s, %(lease_token)s, %(seconds)s, %(checkpoint)s);

-- name: gate_rephrase
SELECT example_request_id, state, prompt, rephrasing, reference
FROM reflect.gate_rephrase_v1(%(job_id)s, %(lease_token)s, %(instruction)s, %(max_tokens)s);

-- name: gate_submit
SELECT reflect.gate_submit_v2(%(job_id)s, %(lease_token)s, %(rephrasings)s::jsonb);

-- name: gate_answers
SELECT candidate_request_id, part, reference, candidate_state, candidate_answer, parent_state, parent_answer
FROM reflect.gate_answers_v1(%(job_id)s, %(lease_token)s);

-- name: decide_model_version
SELECT reflect.decide_model_version_v1(%(name)s, %(decision)s, %(reason)s);

-- name: rollback_model_version
SELECT reflect.rollback_model_version_v1(%(reason)s);

-- name: add_retention_items
SELECT reflect.add_retention_items_v1(%(items)s, %(embedding_model)s);

-- name: retention_count
SELECT count(*) FROM reflect.retention_items;

-- name: model_states
SELECT id, name, parent, base, state, adapter_sha256, training_set_id, finetune_job_id, last_decision, reason,
       numbers, decided_at, created_at
FROM reflect.model_states ORDER BY id;

-- name: training_status
SELECT job_id, state, attempts, training_set_id, step, total_steps, epoch, loss, tokens_per_s, eta_s, rss_mb,
       recorded_at, last_error
FROM reflect.training_status ORDER BY job_id DESC;

-- name: gate_decision
SELECT d.id, c.name AS candidate, p.name AS parent, d.decision, d.reason, d.numbers, d.rule, d.decided_at
FROM reflect.promotion_decisions d
JOIN reflect.model_versions c ON c.id = d.candidate_id
LEFT JOIN reflect.model_versions p ON p.id = d.parent_id
WHERE d.job_id = %(job_id)s ORDER BY d.id DESC LIMIT 1;

-- name: canary_status
SELECT id, candidate, parent, share, state, started_at, ended_at, candidate_labels, candidate_right,
       candidate_accuracy, parent_labels, parent_right, parent_accuracy, glr, threshold, min_labels
FROM reflect.canary_status ORDER BY id DESC;

-- name: tune_threshold
SELECT reflect.tune_confidence_threshold_v1(%(model_version)s, %(target)s);

-- name: tune_memory
SELECT reflect.tune_memory_v1(%(model_version)s);

-- name: revert_tuning
SELECT reflect.revert_tuning_v1(%(change_id)s);

-- name: tuning_history
SELECT id, model_version, knob, old_value, new_value, reason, evidence, decided_by, decided_at, reverted_at, in_force
FROM reflect.tuning_history ORDER BY id DESC;

-- name: create_api_key
SELECT id, key FROM reflect.create_api_key_v1(%(name)s, %(app)s);

-- name: verify_api_key
SELECT key_id, app, login FROM reflect.verify_api_key_v1(%(key)s);

-- name: revoke_api_key
SELECT reflect.revoke_api_key_v1(%(name_or_id)s) AS id;

-- name: api_key_list
SELECT id, name, app, login, created_at, created_by, last_used_at, revoked_at
FROM reflect.api_key_list ORDER BY created_at, id;

-- name: listen_api
LISTEN request_done;
LISTEN request_progress;
LISTEN api_key_revoked;
LISTEN person_revoked;

-- name: api_models
SELECT name, created_at, is_active, parent FROM reflect.model_version_registry ORDER BY id;

-- name: model_exists
SELECT 1 FROM reflect.model_version_registry WHERE name = %(name)s;

-- name: report_partial
SELECT reflect.report_partial_v1(%(request_id)s, %(lease_token)s, %(text)s);

-- name: app_request_progress
SELECT state, partial_answer FROM reflect.app_requests WHERE id = %(id)s;

-- name: store_tokens
SELECT reflect.store_answer_tokens_v1(%(request_id)s, %(lease_token)s, %(tokens)s);

-- name: request_history
SELECT reflect.request_history_v1(%(request_id)s, %(lease_token)s);

-- name: job_history
SELECT reflect.job_history_v1(%(job_id)s, %(lease_token)s);

-- name: app_request_by_key
SELECT id FROM reflect.app_requests WHERE idempotency_key = %(key)s;

-- name: set_person
SELECT login, password FROM reflect.set_person_v1(%(name)s, %(role)s);

-- name: verify_person
SELECT login, role FROM reflect.verify_person_v1(%(name)s, %(password)s);

-- name: revoke_person
SELECT reflect.revoke_person_v1(%(name)s);

-- name: people
SELECT name, login, role, created_at, revoked_at FROM reflect.people ORDER BY name;

-- name: review_queue
SELECT request_id, model_version, app_login, caller, answered_at, confidence, calibrated, threshold, action, reason,
       signals, critique_verdict, critique_rating, memory_used, label, label_source
FROM reflect.review_queue
WHERE (%(model_version)s::text IS NULL OR model_version = %(model_version)s)
  AND (%(caller)s::text IS NULL OR caller = %(caller)s)
  AND (%(max_confidence)s::float8 IS NULL OR confidence <= %(max_confidence)s)
  AND (%(judged)s OR label IS NULL)
ORDER BY label IS NOT NULL, confidence, request_id DESC
LIMIT 200;

-- name: review_item
SELECT request_id, model_version, app_login, caller, answered_at, confidence, calibrated, threshold, action, reason,
       signals, critique_verdict, critique_rating, memory_used, label, label_source
FROM reflect.review_queue WHERE request_id = %(request_id)s;

-- name: review
SELECT reflect.review_v1(%(request_id)s, %(is_correct)s, %(correction)s);

-- name: dashboard_reliability
SELECT bin, bin_low, bin_high, n, mean_confidence, accuracy FROM reflect.reliability
WHERE model_version = %(model_version)s ORDER BY bin;

-- name: dashboard_calibration
SELECT day, labelled, accuracy, mean_confidence, ece, brier, auroc_confidence, accuracy_at_80, abstention_rate,
       review_rate, accuracy_memory_on, accuracy_memory_off, calibrated_share
FROM reflect.calibration_daily WHERE model_version = %(model_version)s ORDER BY day;

-- name: dashboard_versions
SELECT model_version, day, labelled, ece, brier, auroc_confidence FROM reflect.calibration_daily
WHERE day > current_date - 60 ORDER BY day, model_version;

-- name: dashboard_signals
SELECT signal, n, auroc_wrong FROM reflect.signal_auroc WHERE model_version = %(model_version)s
ORDER BY auroc_wrong DESC NULLS LAST, signal;

-- name: dashboard_traffic
SELECT day, requests, succeeded, failed, pending, p50_queue_wait_ms, p95_queue_wait_ms, mean_tokens_per_s
FROM reflect.model_version_daily WHERE model_version = %(model_version)s ORDER BY day DESC LIMIT 14;

-- name: dashboard_queue
SELECT model_version, is_active, queued, running, waiting_retry, lease_expired, failed, oldest_queued_at
FROM reflect.queue_status ORDER BY is_active DESC, model_version;

-- name: dashboard_workers
SELECT worker_id, hostname, model_versions, started_at, last_seen_at FROM reflect.worker_status
WHERE live ORDER BY worker_id;

-- name: dashboard_reviews
SELECT reason, count(*) AS answers, count(*) FILTER (WHERE label IS NULL) AS to_judge
FROM reflect.review_queue WHERE model_version = %(model_version)s GROUP BY reason ORDER BY reason;

-- name: web_models
SELECT name, state, parent, base, backend, adapter_sha256, last_decision, decided_by, reason, numbers, decided_at,
       created_at
FROM reflect.model_states ORDER BY created_at, name;

-- name: web_canaries
SELECT candidate, parent, share, state, started_at, ended_at, candidate_labels, candidate_accuracy, parent_labels,
       parent_accuracy, glr, threshold, min_labels
FROM reflect.canary_status ORDER BY started_at DESC LIMIT 20;

-- name: web_request
SELECT request_id, caller, submitted_by, model_version, state, attempts, last_error, created_at, claimed_at,
       finished_at, worker_id, finish_reason, prompt_tokens, completion_tokens, confidence, queue_wait_ms,
       prompt_eval_ms, generation_ms, tokens_per_s
FROM reflect.request_metrics WHERE request_id = %(request_id)s;

-- name: web_request_events
SELECT at, event, attempt, worker_id, detail FROM reflect.request_audit WHERE request_id = %(request_id)s ORDER BY at;

-- name: review_memories
SELECT memory_request_id, rank, distance, kind FROM reflect.review_memories
WHERE request_id = %(request_id)s ORDER BY rank;
