"""db/schema.sql is the canonical schema: what the migrations and function files produce, as pg_dump
prints it. Reviewers read one file; this test fails when the two drift apart."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from pgreflect.cluster import pg_bin

from conftest import Database

CANONICAL = Path(__file__).resolve().parents[1] / "db" / "schema.sql"


def normalised_dump(db: Database) -> str:
    out = subprocess.run(
        [pg_bin("pg_dump"), "--schema-only", "--schema=reflect", "--schema=reflect_meta", "--no-comments",
         "--dbname", db.dsn()], check=True, capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines()
             if line and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config"))
             and not re.match(r"^\\(un)?restrict ", line)]  # pg_dump >= 15.14 adds \restrict <random key>
    header = "-- Canonical schema: pg_dump of a database built by the migrations and function files.\n" \
             "-- Regenerate: PGREFLECT_UPDATE_GOLDEN=1 scripts/test.sh tests/test_schema.py\n\n"
    return header + "\n".join(lines) + "\n"


def test_migrations_produce_the_canonical_schema(db: Database) -> None:
    actual = normalised_dump(db)
    if os.environ.get("PGREFLECT_UPDATE_GOLDEN") == "1":
        CANONICAL.write_text(actual)
    assert actual == CANONICAL.read_text(), "schema drifted from db/schema.sql: regenerate it and review the diff"
