"""The retention set: questions from packaged datasets (MMLU's held-out split) that no training set may
contain and every candidate and its parent must answer, so forgetting shows before a promotion. Stored with
their prompt embeddings, which the curation's leakage check compares against."""

from __future__ import annotations

import json

import psycopg

from pgreflect import datasets
from pgreflect.sql import query

DEFAULT_SIZE = 300
MAX_TOKENS = 16  # a letter answer ("B", "The answer is B") fits; an explanation after it does not matter


def load(admin_dsn: str, size: int = DEFAULT_SIZE) -> int:
    """Adds up to `size` MMLU held-out questions (a fixed sample); returns how many were new."""
    from pgreflect.embeddings import Embedder, to_pgvector

    items = datasets.select("mmlu", "heldout", size, seed=7)
    embedder = Embedder()
    vectors = embedder.embed([it["question"] for it in items])
    payload = [{"dataset": "mmlu", "id": it["id"], "question": it["question"], "answer": it["answer"],
                "max_tokens": MAX_TOKENS, "embedding": to_pgvector(v)} for it, v in zip(items, vectors, strict=True)]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return conn.execute(query("add_retention_items"), {"items": json.dumps(payload),
                                                           "embedding_model": embedder.name}).fetchone()[0]


def count(admin_dsn: str) -> int:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return conn.execute(query("retention_count")).fetchone()[0]
