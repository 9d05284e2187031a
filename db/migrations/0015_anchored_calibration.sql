-- pgreflect 0015: a version's own labels refine the calibrator pgreflect ships instead of replacing it
-- (fit_calibrator_v1 anchors its fit on the installed calibrator; bench/results/calibration-few-labels.md).
SET LOCAL ROLE reflect_owner;

INSERT INTO reflect.settings (key, value, description) VALUES
  ('calibration_anchor_l2', '30',
   'L2 penalty pulling a refit''s feature weights towards the installed calibrator''s (standardised features)'),
  ('calibration_anchor_intercept_l2', '0.3',
   'L2 penalty pulling a refit''s intercept towards the installed calibrator''s (small: base rates differ most)'),
  ('calibration_anchor_min_labels', '20',
   'Labelled answers a version with an installed calibrator needs before a refit anchored on it'),
  ('calibration_anchor_min_per_class', '0',
   'Correct and wrong answers each (training part) an anchored refit needs');
