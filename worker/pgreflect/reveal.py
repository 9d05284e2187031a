"""Showing stored text to a person: every decryption goes through reflect.reveal_request_v1, which records
who asked, for which request, when and why (reflect.decryption_audit, append-only) before it decrypts.
Text is redacted (pgreflect.privacy) unless the person asks for it unredacted, and the audit row says which.
CLI display, review and export all use these functions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

import psycopg

from pgreflect.errors import translate
from pgreflect.privacy import Redactor
from pgreflect.sql import query

TEXT_FIELDS = ("prompt", "system_prompt", "answer", "critique")


def reveal(conn: psycopg.Connection, request_id: int, purpose: str, redactor: Redactor | None) -> dict[str, Any]:
    """One request's text, audited. `redactor` None shows it unredacted (and the audit says so)."""
    try:
        row = conn.execute(query("reveal_request"), {"request_id": request_id, "purpose": purpose,
                                                     "redacted": redactor is not None}).fetchone()
    except psycopg.Error as exc:
        raise translate(exc) from exc
    assert row is not None
    cols = ["request_id", "submitted_by", "caller", "state", "prompt", "system_prompt", "answer", "corrections",
            "critique"]
    out = dict(zip(cols, row, strict=True))
    if redactor is not None:
        for name in TEXT_FIELDS:
            out[name] = redactor.redact(out[name])
        out["corrections"] = [redactor.redact(c) for c in out["corrections"]]
    return out


def training_examples(conn: psycopg.Connection, owner: str, purpose: str, redactor: Redactor | None
                      ) -> Iterator[dict[str, Any]]:
    """Question/answer pairs for fine-tuning from one owner's history: corrected answers (the correction
    is the target) and answers confirmed correct. Only the owner's own requests: a model trained on them
    may serve that owner (and the apps it shares memories with), never another app."""
    ids = [r[0] for r in conn.execute(query("training_candidates"), {"owner": owner})]
    for request_id in ids:
        r = reveal(conn, request_id, purpose, redactor)
        target = r["corrections"][-1] if r["corrections"] else r["answer"]
        if r["prompt"] and target:
            yield {"request_id": request_id, "system": r["system_prompt"], "prompt": r["prompt"],
                   "completion": target, "source": "correction" if r["corrections"] else "confirmed"}


def export_training(conn: psycopg.Connection, owner: str, purpose: str, redactor: Redactor | None,
                    out: IO[str]) -> int:
    n = 0
    for example in training_examples(conn, owner, purpose, redactor):
        out.write(json.dumps(example, ensure_ascii=False) + "\n")
        n += 1
    return n
