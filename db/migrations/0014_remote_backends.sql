-- pgreflect 0014: past one machine (issue 10). Model versions served by an OpenAI-compatible HTTP server (vLLM, llama.cpp's
-- server, llama-cpp-python's llama_cpp.server). Such a version has no GGUF here: it is a base URL and the
-- server's model name; a worker started with --backend openai sends its requests there. Credentials never go
-- in the URL (the worker reads the key from its environment), so a URL with user info is refused.
SET LOCAL ROLE reflect_owner;

ALTER TABLE reflect.model_versions DROP CONSTRAINT model_version_backend;
ALTER TABLE reflect.model_versions
  ADD CONSTRAINT model_version_backend CHECK (backend IN ('llama', 'noop', 'openai')),
  ADD COLUMN base_url text
    CONSTRAINT base_url_format CHECK (base_url ~ '^https?://[^/@[:space:]]+(/[^[:space:]]*)?$'),
  ADD COLUMN remote_model text CONSTRAINT remote_model_format CHECK (remote_model ~ '^[^[:space:][:cntrl:]]{1,200}$'),
  ALTER COLUMN gguf_path DROP NOT NULL,
  ALTER COLUMN sha256 DROP NOT NULL,
  ADD CONSTRAINT model_version_location CHECK (
    CASE WHEN backend = 'openai'
         THEN base_url IS NOT NULL AND remote_model IS NOT NULL AND gguf_path IS NULL AND sha256 IS NULL
         ELSE gguf_path IS NOT NULL AND sha256 IS NOT NULL AND base_url IS NULL AND remote_model IS NULL END);

-- Back-pressure: submit refuses (SQLSTATE PR007) a request for a version that already has this many waiting,
-- instead of queueing hours of work (2,000 answers of the default model are ~6 hours for one CPU worker).
INSERT INTO reflect.settings (key, value, description) VALUES
  ('max_queued_per_version', '2000',
   'Requests a model version may have waiting (queued); submit refuses more with SQLSTATE PR007 (0: no limit)');
