-- pgreflect 0009: the expensive follow-ups run where they pay. Measured on the landed main (issue 8): the
-- critique costs ~30 s per answer on a 2-core CPU and carried no information about correctness (AUROC 0.50,
-- n = 30), yet ran on every answer whenever a worker was idle. Now, by default, critique and agreement are
-- queued for evaluation traffic and for answers that are low-confidence (calibrated confidence under the
-- request's threshold) or failed a rule check; the critique stays a review aid for those.
SET LOCAL ROLE reflect_owner;

INSERT INTO reflect.settings (key, value, description) VALUES
  ('followups_scope', '"low_confidence"',
   'Which answers get critique and agreement follow-ups (each then at its *_fraction): low_confidence (under '
   'the request''s confidence threshold, or a failed rule check), all, or evaluation (evaluation traffic only; '
   'evaluation traffic gets them in every scope)');
UPDATE reflect.settings SET description = 'Share of the answers in followups_scope that get a structured critique'
WHERE key = 'critique_fraction';
UPDATE reflect.settings SET description = 'Share of the answers in followups_scope that get the agreement signal'
WHERE key = 'agreement_fraction';
