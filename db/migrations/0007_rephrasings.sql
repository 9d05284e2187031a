-- pgreflect 0007: rephrasings in the gate. Part (a) asks the corrected prompts verbatim; part r asks the
-- parent's own rewording of each (did the candidate learn the fact, not the wording?). A part-r item points
-- at the training example it rephrases, and its reference is that example's correction.
SET LOCAL ROLE reflect_owner;

ALTER TABLE reflect.gate_items DROP CONSTRAINT gate_items_part_check;
ALTER TABLE reflect.gate_items ADD CONSTRAINT gate_items_part_check CHECK (part IN ('a', 'r', 'b', 'c'));

INSERT INTO reflect.settings (key, value, description) VALUES
  ('gate_rephrase', 'true', 'Ask the parent to reword each corrected prompt and put the rewordings in the gate (part r)'),
  ('gate_rephrase_max_chars', '400', 'Corrected prompts longer than this are not reworded (few-shot blocks, documents)');
