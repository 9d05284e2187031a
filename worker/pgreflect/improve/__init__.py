"""Self-improvement: curate training sets from an owner's history (in the database), then train, convert,
gate and promote (next). Flows callable from the CLI and the web server alike."""
