-- Privileges, applied last on every deploy. Golden test: tests/test_privileges.py.
SET LOCAL ROLE reflect_owner;

REVOKE ALL ON ALL TABLES IN SCHEMA reflect FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA reflect FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA reflect FROM PUBLIC;

GRANT USAGE ON SCHEMA reflect TO reflect_app, reflect_worker, reflect_analyst;

-- app: submit (function or view), read its own requests and answers
GRANT USAGE ON SCHEMA reflect TO reflect_reviewer;
GRANT EXECUTE ON FUNCTION reflect.use_key_v1(text, text, boolean) TO reflect_app, reflect_worker, reflect_reviewer;
GRANT EXECUTE ON FUNCTION reflect.submit_v1(text, text, jsonb, text, text, text) TO reflect_app;
GRANT EXECUTE ON FUNCTION reflect._decrypt_or_null(bytea, text) TO reflect_app;
GRANT SELECT, INSERT ON reflect.app_requests TO reflect_app;

-- worker: the lifecycle functions, nothing else
GRANT EXECUTE ON FUNCTION
  reflect.model_versions_to_serve_v1(text[]),
  reflect.model_versions_to_serve_v2(text, text[]),
  reflect.claim_v1(text, integer, integer, integer[]),
  reflect.heartbeat_v1(bigint[], uuid[], integer),
  reflect.complete_v1(bigint, uuid, text, text, integer, real[], double precision, double precision),
  reflect.fail_v1(bigint, uuid, text, boolean),
  reflect.release_v1(bigint, uuid),
  reflect.reap_expired_v1()
TO reflect_worker;

-- analyst: the measurement views only (no plaintext, no ciphertext)
GRANT SELECT ON reflect.request_metrics, reflect.model_version_daily, reflect.queue_status,
  reflect.model_version_registry, reflect.request_audit TO reflect_analyst;
GRANT SELECT ON reflect.queue_status, reflect.model_version_registry TO reflect_app, reflect_worker;

GRANT EXECUTE ON FUNCTION reflect.worker_seen_v1(text, integer[], integer, text),
  reflect.worker_stopped_v1(text) TO reflect_worker;
GRANT EXECUTE ON FUNCTION reflect.live_worker_count_v1(text) TO reflect_app, reflect_worker;
GRANT SELECT ON reflect.worker_status TO reflect_analyst;

-- metacognition (0002)
GRANT EXECUTE ON FUNCTION
  reflect.complete_v2(bigint, uuid, text, text, integer, real[], double precision, double precision, jsonb),
  reflect.add_signals_v1(bigint, jsonb),
  reflect.recall_v1(bigint, uuid, text, public.vector, integer)
TO reflect_worker;
GRANT EXECUTE ON FUNCTION reflect.feedback_v1(bigint, boolean, integer, text, text) TO reflect_app;
GRANT EXECUTE ON FUNCTION reflect.auroc_v1(double precision[], boolean[]),
  reflect.ece_v1(double precision[], boolean[], integer),
  reflect.brier_v1(double precision[], boolean[]),
  reflect.accuracy_at_coverage_v1(double precision[], boolean[], double precision),
  reflect._uniform(bigint, bigint, bigint),  -- pure; called by the two below in the caller's rights
  reflect.ece_floor_v1(double precision[], integer, integer),
  reflect.bootstrap_v1(double precision[], boolean[], integer),
  reflect.eval_metrics_v1(double precision[], boolean[], integer, double precision),
  reflect.signal_orientations_v1()  -- read by reflect.signal_auroc in the reader's rights, and by the harness
TO reflect_analyst, reflect_app;
GRANT SELECT ON reflect.labelled_answers, reflect.calibration_daily, reflect.signal_auroc, reflect.reliability,
  reflect.calibrator_history TO reflect_analyst;
-- Only an administrator stores the evaluation split (it is shared by every app); an app tags its own requests.
GRANT EXECUTE ON FUNCTION reflect.tag_eval_request_v1(bigint, text, text, text) TO reflect_app;
GRANT SELECT ON reflect.eval_results TO reflect_analyst;
GRANT EXECUTE ON FUNCTION
  reflect.claim_followups_v1(text, integer, integer, integer[]),
  reflect.complete_followup_v1(bigint, uuid, jsonb, text),
  reflect.fail_followup_v1(bigint, uuid, text, boolean),
  reflect.heartbeat_followups_v1(bigint[], uuid[], integer)
TO reflect_worker;
GRANT EXECUTE ON FUNCTION reflect.rate_critique_v1(bigint, integer) TO reflect_app;
GRANT EXECUTE ON FUNCTION
  reflect.record_candidate_v1(bigint, uuid, text, real[], jsonb, bigint[]),
  reflect.evidence_v1(bigint, uuid, integer),
  reflect.store_answer_state_v1(bigint, uuid, public.vector)
TO reflect_worker;

-- hardening (0003)
GRANT EXECUTE ON FUNCTION reflect.share_memories_v1(name, boolean) TO reflect_app;
GRANT EXECUTE ON FUNCTION reflect.reveal_request_v1(bigint, text, boolean) TO reflect_reviewer;
GRANT SELECT ON reflect.decryption_log TO reflect_analyst;

-- job runtime (0004)
GRANT EXECUTE ON FUNCTION
  reflect.claim_jobs_v1(text, text[], integer, integer, integer[]),
  reflect.job_input_v1(bigint, uuid),
  reflect.heartbeat_jobs_v1(bigint[], uuid[], integer),
  reflect.checkpoint_job_v1(bigint, uuid, jsonb, integer),
  reflect.complete_job_v1(bigint, uuid, jsonb),
  reflect.fail_job_v1(bigint, uuid, text, boolean, boolean)
TO reflect_worker;

-- curation (0005): administrators curate and queue fine-tunes; analysts see the sets' numbers, no text
GRANT SELECT ON reflect.training_set_summary TO reflect_analyst;

-- improvement loop (0006): workers train, gate and report; administrators decide and roll back (they own
-- the functions); analysts read progress, states and decisions, no text
GRANT EXECUTE ON FUNCTION
  reflect.model_versions_to_serve_v3(text, text[]),
  reflect.finetune_plan_v1(bigint, uuid),
  reflect.finetune_examples_v1(bigint, uuid),
  reflect.record_training_progress_v1(bigint, uuid, integer, integer, double precision, double precision,
                                      double precision, double precision, double precision),
  reflect.record_training_memory_v1(bigint, uuid, double precision, double precision, double precision, boolean,
                                    boolean, text, text, double precision),
  reflect.snooze_job_v1(bigint, uuid, double precision, jsonb),
  reflect.gate_submit_v1(bigint, uuid),
  reflect.gate_submit_v2(bigint, uuid, jsonb),
  reflect.gate_rephrase_v1(bigint, uuid, text, integer),
  reflect.gate_answers_v1(bigint, uuid)
TO reflect_worker;
GRANT SELECT ON reflect.model_states, reflect.training_status, reflect.promotion_decisions, reflect.canary_status,
  reflect.tuning_history
TO reflect_analyst;

-- HTTP API (0011): the server's login verifies keys and listens; it acts as each key's app through that app's
-- own login, never through its own rights. Administrators create and revoke keys (their functions).
GRANT USAGE ON SCHEMA reflect TO reflect_api;
GRANT EXECUTE ON FUNCTION reflect.verify_api_key_v1(text), reflect.verify_person_v1(text, text) TO reflect_api;
GRANT SELECT ON reflect.api_key_list TO reflect_analyst;
GRANT EXECUTE ON FUNCTION reflect.store_answer_tokens_v1(bigint, uuid, jsonb),
  reflect.report_partial_v1(bigint, uuid, text),
  reflect.request_history_v1(bigint, uuid),
  reflect.job_history_v1(bigint, uuid)
TO reflect_worker;
GRANT EXECUTE ON FUNCTION reflect.submit_v2(text, text, jsonb, text, text, text, jsonb) TO reflect_app;

-- review (0011): reviewers see the queue's numbers, read an item's text through reveal_request_v1 (audited) and
-- judge it; analysts see the same numbers
GRANT EXECUTE ON FUNCTION reflect.review_v1(bigint, boolean, text), reflect.rate_critique_v1(bigint, integer)
TO reflect_reviewer;
GRANT USAGE ON SCHEMA reflect TO reflect_reviewer;
GRANT SELECT ON reflect.review_queue, reflect.review_memories TO reflect_reviewer, reflect_analyst;
GRANT EXECUTE ON FUNCTION reflect._sampled_for_review(bigint) TO reflect_reviewer, reflect_analyst;

-- the web dashboard (0011): reviewers see the same numbers as analysts (never text through these)
GRANT SELECT ON reflect.reliability, reflect.calibration_daily, reflect.signal_auroc, reflect.queue_status,
  reflect.worker_status, reflect.model_version_daily, reflect.model_states, reflect.canary_status,
  reflect.request_metrics, reflect.request_audit
TO reflect_reviewer;
GRANT EXECUTE ON FUNCTION reflect.auroc_v1(double precision[], boolean[]),
  reflect.ece_v1(double precision[], boolean[], integer),
  reflect.brier_v1(double precision[], boolean[]),
  reflect.accuracy_at_coverage_v1(double precision[], boolean[], double precision),
  reflect.signal_orientations_v1()
TO reflect_reviewer;

-- remote backends (0014): a worker reads where a remote version is served; administrators register them
GRANT EXECUTE ON FUNCTION reflect.model_versions_to_serve_v4(text, text[]) TO reflect_worker;
