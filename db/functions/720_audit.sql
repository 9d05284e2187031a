SET LOCAL ROLE reflect_owner;

-- Append-only tables refuse UPDATE, DELETE and TRUNCATE for every role, their owner included (only a
-- superuser who disables the triggers could rewrite them, and that is itself in the server log).
CREATE OR REPLACE FUNCTION reflect._append_only()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RAISE EXCEPTION 'reflect.% is append-only: rows can be added, never changed or removed', TG_TABLE_NAME
    USING ERRCODE = 'PR006';
END
$$;

CREATE OR REPLACE TRIGGER _100_append_only
  BEFORE UPDATE OR DELETE ON reflect.decryption_audit
  FOR EACH ROW EXECUTE FUNCTION reflect._append_only();
CREATE OR REPLACE TRIGGER _100_append_only_truncate
  BEFORE TRUNCATE ON reflect.decryption_audit
  FOR EACH STATEMENT EXECUTE FUNCTION reflect._append_only();

-- A person (an administrator or a reviewer) reads one request's text: prompt, system prompt, answer,
-- corrections and critique. The decryption is recorded first, in the same transaction, with who asked,
-- when, why, and whether the tool showed it redacted; a reveal that fails records nothing because it
-- revealed nothing.
CREATE OR REPLACE FUNCTION reflect.reveal_request_v1(p_request_id bigint, p_purpose text, p_redacted boolean)
RETURNS TABLE (request_id bigint, submitted_by name, caller text, state text, prompt text, system_prompt text,
               answer text, corrections text[], critique text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
  r reflect.requests;
BEGIN
  IF p_purpose IS NULL OR reflect._is_blank(p_purpose) OR length(btrim(p_purpose)) NOT BETWEEN 3 AND 500 THEN
    RAISE EXCEPTION 'say why you need to see this text (3 to 500 characters); it is recorded in the audit trail'
      USING ERRCODE = 'PR001';
  END IF;
  IF p_redacted IS NULL THEN
    RAISE EXCEPTION 'redacted must be true or false' USING ERRCODE = 'PR001';
  END IF;
  SELECT * INTO r FROM reflect.requests WHERE id = p_request_id;
  IF r.id IS NULL THEN
    RAISE EXCEPTION 'no request %', p_request_id USING ERRCODE = 'PR005';
  END IF;
  INSERT INTO reflect.decryption_audit (by_login, request_id, what, purpose, redacted)
  VALUES (session_user, r.id,
          ARRAY['prompt', 'system_prompt', 'answer', 'corrections', 'critique'], btrim(p_purpose), p_redacted);
  RETURN QUERY
  SELECT r.id, r.submitted_by, r.caller, r.state::text,
         reflect._decrypt(r.prompt_enc, r.key_id), reflect._decrypt(r.system_prompt_enc, r.key_id),
         (SELECT reflect._decrypt(a.answer_enc, a.key_id) FROM reflect.answers a WHERE a.request_id = r.id),
         ARRAY(SELECT reflect._decrypt(f.correction_enc, f.key_id) FROM reflect.feedback f
               WHERE f.request_id = r.id AND f.correction_enc IS NOT NULL ORDER BY f.id),
         (SELECT reflect._decrypt(c.critique_enc, c.key_id) FROM reflect.critiques c WHERE c.request_id = r.id);
END
$$;

-- The audit trail as the DBA and analysts read it (the table itself is default-deny like every internal one).
CREATE OR REPLACE VIEW reflect.decryption_log AS
SELECT d.id, d.at, d.by_login, d.request_id, d.what, d.purpose, d.redacted
FROM reflect.decryption_audit d;
