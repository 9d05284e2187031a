"""Schema deployment: run-once migrations (frozen by sha256) then idempotent function files.

- db/migrations/NNNN_name.sql run once each, in order, one transaction each, under a transaction-level
  advisory lock. A migrator that waited for the lock re-reads what was applied meanwhile, verifies its
  hash and follows behind, instead of applying it twice (the tracking row's primary key is the backstop).
- A migration whose file changed after it was applied is refused, and so is a database that has
  migrations this checkout does not know (it is ahead of the code).
- db/functions/*.sql (CREATE OR REPLACE, views, triggers, grants, cron schedules) are re-applied on
  every deploy, in file order, in one transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import LiteralString, cast

import psycopg

from pgreflect.paths import db_dir
from pgreflect.sql import query


class MigrationError(RuntimeError):
    pass


@dataclass
class MigrationResult:
    applied: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def migration_files(root: Path | None = None) -> list[Path]:
    return sorted((root or db_dir()).joinpath("migrations").glob("*.sql"))


def function_files(root: Path | None = None) -> list[Path]:
    return sorted((root or db_dir()).joinpath("functions").glob("*.sql"))


def _run_file(conn: psycopg.Connection, path: Path) -> None:
    # Files are trusted project SQL with no parameters: run as one simple-protocol batch.
    try:
        conn.execute(cast(LiteralString, path.read_text()), prepare=False)
    except psycopg.Error as exc:
        raise MigrationError(f"{path.name}: {exc}") from exc


def _migrate_once(dsn: str, root: Path | None) -> MigrationResult:
    result = MigrationResult()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(query("migrate_lock"))
            conn.execute(query("migrate_bootstrap"))
        applied = {row[0]: row[1] for row in conn.execute(query("migrate_applied")).fetchall()}
        files = migration_files(root)
        known = {p.name for p in files}
        ahead = sorted(set(applied) - known)
        if ahead:
            raise MigrationError(f"the database has migrations this code does not know: {', '.join(ahead)}")
        for path in files:
            digest = _sha256(path)
            if path.name in applied:
                if applied[path.name] != digest:
                    raise MigrationError(
                        f"migration {path.name} changed after it was applied (sha256 {applied[path.name][:12]}"
                        f" in the database, {digest[:12]} on disk); never edit an applied migration: add a new one"
                    )
                continue
            with conn.transaction():
                conn.execute(query("migrate_lock"))
                # Under the lock, re-read: another migrator may have applied it since our first read (then
                # verify its hash and follow behind it, rather than race it again from the start).
                now = dict(conn.execute(query("migrate_applied")).fetchall())
                if path.name in now:
                    if now[path.name] != digest:
                        raise MigrationError(f"migration {path.name} was applied by another migrator with sha256 "
                                             f"{now[path.name][:12]}, not {digest[:12]} as on disk")
                    continue
                conn.execute(query("migrate_record"), {"name": path.name, "sha256": digest})
                _run_file(conn, path)
            result.applied.append(path.name)
        with conn.transaction():
            conn.execute(query("migrate_lock"))
            for path in function_files(root):
                _run_file(conn, path)
                result.functions.append(path.name)
    return result


def migrate(dsn: str, root: Path | None = None) -> MigrationResult:
    return _migrate_once(dsn, root)
