-- pgreflect 0018: a refit's kind levels held by a penalty of 1 instead of 0.3 (calibration_anchor_intercept_l2).
-- Measured side by side on the same draws (bench/results/kind-penalty.md): on a user's own traffic the two
-- correct alike (0.3 against 1 after 25 labels: Brier +0.0007 [-0.0007, +0.0021], ECE gap +0.0008); labels of
-- traffic the installed calibrator already fits add half the noise (Brier +0.019 -> +0.009 after 25 labels);
-- 50 labels of one dataset move the other datasets of its kind less (+0.049 -> +0.032) and the other kinds less
-- (+0.0041 -> +0.0021). An installation that changed the penalty keeps its own.
SET LOCAL ROLE reflect_owner;

UPDATE reflect.settings SET value = '1'
WHERE key = 'calibration_anchor_intercept_l2' AND value = '0.3'::jsonb;
