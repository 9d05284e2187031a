-- pgreflect 0012: the gate also requires a gain on the rewordings of the corrected prompts (issue 7: a
-- poisoned set must be rejected). In every poisoned run of bench/results/improve-poison.md the candidate
-- learned the wrong answers verbatim (corrected part up to +0.58) but none carried over to the parent's own
-- rewordings (0 -> 0, n = 6..12), while true corrections did (bench/results/improve.md). The rule applies
-- once at least gate_rephrase_min rewordings were scored; with fewer it cannot tell, and says so.
SET LOCAL ROLE reflect_owner;

INSERT INTO reflect.settings (key, value, description) VALUES
  ('gate_rephrase_min', '5',
   'Scored rewordings (gate part r) from which the candidate must also gain on them (paired lower bound > 0); with fewer the check is not applied');
