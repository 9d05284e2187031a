-- pgreflect 0016: the agreement follow-up on every low-confidence answer (agreement_fraction 0.1 -> 1.0).
-- Measured: inside the low-confidence answers, where it runs, agreement raises the shipped calibrator's AUROC
-- 0.615 -> 0.674 (+0.059 [+0.031, +0.088], 428 answers, bench/results/agreement.md). It was held at 10%
-- because a request that arrived during a follow-up waited for it (median 16.3 s behind agreement, 6.5 s behind
-- a critique, on 2 cores); a request now stops the follow-up instead (1.2 s against 0.9 s on an idle worker;
-- worker --preempt-followups, bench/results/followup-preemption.md), so the share costs idle compute only.
-- An installation that changed the share keeps its own.
SET LOCAL ROLE reflect_owner;

UPDATE reflect.settings SET value = '1.0'
WHERE key = 'agreement_fraction' AND value = '0.1'::jsonb;
