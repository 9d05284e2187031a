"""Migrations run once and are frozen by hash; function files are idempotent; concurrent migrators are safe."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from pgreflect.migrate import MigrationError, migrate, migration_files
from pgreflect.paths import db_dir

from conftest import Database


@pytest.fixture
def empty_db(cluster) -> Database:  # type: ignore[no-untyped-def]
    name = "t_empty_migrate"
    with psycopg.connect(cluster.dsn(dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield Database(name, cluster)
    with psycopg.connect(cluster.dsn(dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _schema_fingerprint(db: Database) -> list[tuple]:
    with db.admin() as conn:
        return conn.execute("""
            SELECT 'rel', c.relname, c.relkind::text, pg_get_userbyid(c.relowner) FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'reflect'
            UNION ALL
            SELECT 'fn', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', md5(p.prosrc),
                   pg_get_userbyid(p.proowner)
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'reflect'
            ORDER BY 1, 2""").fetchall()


def test_applying_twice_is_a_no_op(empty_db: Database) -> None:
    first = migrate(empty_db.dsn())
    assert first.applied == [p.name for p in migration_files()]
    before = _schema_fingerprint(empty_db)
    second = migrate(empty_db.dsn())
    assert second.applied == []
    assert second.functions == first.functions
    assert _schema_fingerprint(empty_db) == before
    assert empty_db.scalar("SELECT count(*) FROM reflect_meta.schema_migrations") == len(first.applied)


def test_an_edited_applied_migration_is_refused(empty_db: Database, tmp_path: Path) -> None:
    migrate(empty_db.dsn())
    edited = tmp_path / "db"
    shutil.copytree(db_dir(), edited)
    target = sorted((edited / "migrations").glob("*.sql"))[0]
    target.write_text(target.read_text() + "\n-- a harmless-looking edit\n")
    with pytest.raises(MigrationError, match=f"migration {target.name} changed after it was applied"):
        migrate(empty_db.dsn(), root=edited)


def test_a_database_ahead_of_the_code_is_refused(empty_db: Database) -> None:
    migrate(empty_db.dsn())
    empty_db.scalar("INSERT INTO reflect_meta.schema_migrations (name, sha256) VALUES ('9999_future.sql', 'x')"
                    " RETURNING name")
    with pytest.raises(MigrationError, match=r"9999_future\.sql"):
        migrate(empty_db.dsn())


def test_concurrent_migrators_apply_each_migration_once(empty_db: Database) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait()
            migrate(empty_db.dsn())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert empty_db.scalar("SELECT count(*) FROM reflect_meta.schema_migrations") == len(migration_files())


def test_every_function_pins_search_path(db: Database) -> None:
    unpinned = db.admin().execute("""
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'reflect' AND NOT EXISTS (
          SELECT FROM unnest(coalesce(p.proconfig, '{}')) c WHERE c LIKE 'search_path=%')""").fetchall()
    assert unpinned == []


def test_versioned_entry_points(db: Database) -> None:
    """Public functions carry a _vN suffix so old and new workers can share a database during a deploy."""
    names = [r[0] for r in db.admin().execute("""
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'reflect' AND p.proname NOT LIKE '\\_%' AND p.prorettype <> 'trigger'::regtype""")]
    assert names and all(n.rsplit("_", 1)[-1].startswith("v") for n in names), names
