"""Migrations run once and are frozen by hash; function files are idempotent; concurrent migrators are safe."""

from __future__ import annotations

import re
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
            SELECT 'rel', c.relname::text, c.relkind::text, pg_get_userbyid(c.relowner) FROM pg_class c
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


def _release_before(migration: str, dest: Path) -> Path:
    """db/ as it was in the commit before `migration` was added: the previous release's schema."""
    import subprocess

    root = db_dir().parent
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", f"db/migrations/{migration}"],
                           cwd=root, capture_output=True, text=True).stdout.split()
    if not added or subprocess.run(["git", "cat-file", "-e", f"{added[-1]}^"], cwd=root).returncode != 0:
        pytest.skip("needs the git history of the checkout (a shallow clone lacks the previous release)")
    archive = subprocess.run(["git", "archive", f"{added[-1]}^", "db"], cwd=root, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "db"


def test_upgrade_carries_follow_ups_and_their_states_into_the_job_runtime(empty_db: Database, tmp_path: Path,
                                                                       keyring) -> None:  # type: ignore[no-untyped-def]
    """A database of the release before the job runtime, with follow-ups in every state, is migrated: the
    rows keep their ids, states and attempts, the old view name still reads them, and new ids follow on."""
    from pgreflect.db import LOGIN_ROLES
    from pgreflect.sql import parse_queries

    old = _release_before("0003_hardening.sql", tmp_path)
    migrate(empty_db.dsn(), root=old)
    old_queries = parse_queries((old / "queries" / "queries.sql").read_text())
    with empty_db.admin() as conn:
        for login, group in LOGIN_ROLES.values():
            if group != "reflect_api":  # the HTTP server's login came later (0011)
                conn.execute(old_queries["ensure_login_role"], {"login": login, "group_role": group})
        conn.execute("SELECT reflect.register_model_version_v1('old', '/x', %s, 'path', 4096, NULL, true)",
                     ("0" * 64,))
        key = keyring.keys[keyring.current]
        conn.execute("SELECT reflect.use_key_v1(%s, %s)", (keyring.current, key))
        for i in range(3):
            rid = conn.execute("SELECT reflect.submit_v1(%s)", (f"old request {i}",)).fetchone()[0]
            (lease,) = conn.execute("SELECT lease_token FROM reflect.claim_v1('old-worker', 1, 60)").fetchone()
            conn.execute("SELECT reflect.complete_v1(%s, %s, 'ok', 'stop', 1, '{-0.1}', 1, 1)", (rid, lease))
        conn.execute("DELETE FROM reflect.followups")
        conn.execute("""
            INSERT INTO reflect.followups (request_id, kind, state, attempts, finished_at)
            SELECT id, 'agreement',
                   (CASE id WHEN 1 THEN 'succeeded' WHEN 2 THEN 'queued' ELSE 'failed' END)::reflect.request_state,
                   CASE id WHEN 2 THEN 0 ELSE 1 END, CASE WHEN id <> 2 THEN now() END
            FROM reflect.requests""")
        before = conn.execute("SELECT id, request_id, kind, state::text, attempts FROM reflect.followups ORDER BY id"
                              ).fetchall()
    migrate(empty_db.dsn())
    with empty_db.admin() as conn:
        after = conn.execute("SELECT id, request_id, kind, state::text, attempts FROM reflect.jobs ORDER BY id"
                             ).fetchall()
        assert conn.execute("SELECT last_error FROM reflect.jobs WHERE state = 'failed'").fetchone() == ("failed",)
        view = conn.execute("SELECT id, request_id, kind, state::text, attempts FROM reflect.followups ORDER BY id"
                            ).fetchall()
        new_id = conn.execute("SELECT reflect._enqueue_job('critique', '{}', 1, 1)").fetchone()[0]
    assert after == before == view
    assert new_id > max(r[0] for r in after)  # the identity continues after the copied ids


def test_every_setting_is_documented_with_its_default(empty_db: Database) -> None:
    """docs/configuration.md has every reflect.settings key with the default a fresh install gets (a row may
    document several: `| `a`, `b` | `1`, `2` | ... |`)."""
    migrate(empty_db.dsn())
    documented: dict[str, str] = {}
    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    for keys, values in re.findall(r"^\| (`[a-z0-9_]+`(?:, `[a-z0-9_]+`)*) \| (`[^|]*`) \|", text, re.M):
        names, defaults = re.findall(r"`([^`]+)`", keys), re.findall(r"`([^`]*)`", values)
        if len(names) == len(defaults):
            documented.update(zip(names, defaults, strict=True))
    with empty_db.admin() as conn:
        settings = conn.execute("SELECT key, value #>> '{}' FROM reflect.settings ORDER BY key").fetchall()
    assert len(settings) > 20
    wrong = [f"{key}: {value} (documented: {documented.get(key)})" for key, value in settings
             if documented.get(key, "").lower() != value.lower()]
    assert wrong == [], "\n".join(wrong)


def test_the_agreement_share_moves_to_every_low_confidence_answer_unless_changed(empty_db: Database,
                                                                                 tmp_path: Path) -> None:
    """0016 raises agreement_fraction from the shipped 0.1 to 1.0 (a fresh install: the test above), and leaves
    a share the installation chose as it was."""
    shutil.copytree(db_dir(), tmp_path / "db")
    (tmp_path / "db" / "migrations" / "0016_agreement_on_low_confidence.sql").unlink()
    migrate(empty_db.dsn(), root=tmp_path / "db")
    with empty_db.admin() as conn:
        assert conn.execute("SELECT value FROM reflect.settings WHERE key = 'agreement_fraction'").fetchone() == (0.1,)
        conn.execute("UPDATE reflect.settings SET value = '0.25' WHERE key = 'agreement_fraction'")
    migrate(empty_db.dsn())
    with empty_db.admin() as conn:
        assert conn.execute("SELECT value FROM reflect.settings WHERE key = 'agreement_fraction'").fetchone() == (0.25,)
        assert conn.execute("SELECT count(*) FROM reflect_meta.schema_migrations").fetchone()[0] == \
            len(migration_files())
