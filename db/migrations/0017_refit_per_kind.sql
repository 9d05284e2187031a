-- pgreflect 0017: a refit anchored on the installed calibrator moves a level per kind of question (choice /
-- number / short / long) instead of one intercept (reflect._fit_logistic_around_kinds), so the penalty that
-- was the intercept's is now each kind's level's; the value stays.
SET LOCAL ROLE reflect_owner;

UPDATE reflect.settings
SET description = 'L2 penalty on a refit''s level for each kind of question (choice, number, short, long), around the '
                  'installed calibrator''s (small: base rates differ most); its intercept takes calibration_anchor_l2'
WHERE key = 'calibration_anchor_intercept_l2';
