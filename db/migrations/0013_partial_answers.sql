-- pgreflect 0013: answers streamed as they are generated (issue 9: `stream=true` sends tokens as they come).
-- A request that asks for it (params.stream) and whose low-confidence action shows the answer whatever its
-- confidence (answer, flag) gets its text so far published by the worker while it generates: one row per
-- request, overwritten in place, encrypted like every text, NOTIFY request_progress (id only) after each
-- write. The row goes when the attempt ends (answered, failed, released or reaped): the answer is then in
-- reflect.answers. Abstain and reanswer publish nothing: their text can still be withheld or replaced.
SET LOCAL ROLE reflect_owner;

CREATE TABLE reflect.partial_answers (
  request_id bigint PRIMARY KEY REFERENCES reflect.requests (id),
  attempt integer NOT NULL,
  key_id text NOT NULL,
  text_enc bytea NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE reflect.partial_answers ENABLE ROW LEVEL SECURITY;
