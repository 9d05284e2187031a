"""What people who do not write SQL use: the OpenAI-compatible HTTP API (`pgreflect serve`) and its API keys.
The server holds no business rules: it verifies a key, connects as the key's app login and calls the same SQL
the CLI and apps call."""
