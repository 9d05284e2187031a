"""pgreflect: a local LLM that knows when it is wrong, orchestrated by PostgreSQL."""

__version__ = "0.1.0"
