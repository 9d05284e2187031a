"""Golden privilege matrix, default-deny internal tables, analyst without plaintext, SQL injection."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from pgreflect.db import connect
from pgreflect.keys import Keyring, new_key

from conftest import Database
from helpers import client, drain

GOLDEN = Path(__file__).parent / "golden" / "privileges.txt"
ROLES = ("reflect_app", "reflect_worker", "reflect_analyst", "reflect_reviewer", "reflect_api", "public")


def privilege_matrix(db: Database) -> str:
    with db.admin() as conn:
        funcs = conn.execute("""
            SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'reflect' ORDER BY 1""").fetchall()
        rels = conn.execute("""
            SELECT c.oid::regclass::text, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'reflect' AND c.relkind IN ('r', 'v') ORDER BY 1""").fetchall()
        lines = []
        for (fn,) in funcs:
            allowed = [r for r in ROLES if r != "public" and conn.execute(
                "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (r, fn)).fetchone()[0]]
            public = conn.execute("""SELECT coalesce(bool_or(a.grantee = 0), false) FROM pg_proc p,
                aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                WHERE p.oid = %s::regprocedure AND a.privilege_type = 'EXECUTE'""", (fn,)).fetchone()[0]
            lines.append(f"function {fn}: {' '.join(allowed + (['PUBLIC'] if public else [])) or '-'}")
        for rel, kind in rels:
            for priv in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                allowed = [r for r in ROLES if r != "public" and conn.execute(
                    "SELECT has_table_privilege(%s, %s, %s)", (r, rel, priv)).fetchone()[0]]
                if allowed:
                    lines.append(f"{'view' if kind == 'v' else 'table'} {rel} {priv}: {' '.join(allowed)}")
        rls = conn.execute("""SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'reflect' AND c.relkind = 'r' AND NOT c.relrowsecurity ORDER BY 1""").fetchall()
        lines.append(f"tables without row level security: {[r[0] for r in rls]}")
    return "\n".join(lines) + "\n"


def test_privileges_match_the_golden_file(db: Database) -> None:
    actual = privilege_matrix(db)
    if os.environ.get("PGREFLECT_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(actual)
    assert actual == GOLDEN.read_text(), "privileges changed: review, then PGREFLECT_UPDATE_GOLDEN=1 pytest ..."


@pytest.mark.parametrize("role", ["app", "worker", "analyst", "api"])
def test_internal_tables_are_closed_to_every_role(db: Database, role: str) -> None:
    with psycopg.connect(db.dsn(role), autocommit=True) as conn:
        for table in ("requests", "answers", "model_versions", "request_events", "settings", "workers",
                      "feedback", "answer_signals", "calibrators", "prompt_embeddings", "memories",
                      "answer_memories", "eval_items", "eval_requests", "labels", "api_keys", "apps"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT 1 FROM reflect.{table} LIMIT 1")


def test_analyst_reads_the_views_and_no_plaintext(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        rid = c.submit("analyst must not read this", params={"max_tokens": 3})
    drain(db, keyring)
    with psycopg.connect(db.dsn("analyst"), autocommit=True) as conn:
        row = conn.execute("SELECT state, completion_tokens, confidence FROM reflect.request_metrics"
                           " WHERE request_id = %s", (rid,)).fetchone()
        assert row[0] == "succeeded" and row[1] == 3 and 0 < row[2] <= 1
        for view in ("request_metrics", "model_version_daily", "queue_status", "model_version_registry",
                     "request_audit", "worker_status", "labelled_answers", "calibration_daily", "signal_auroc",
                     "reliability", "calibrator_history"):
            cols = [d.name for d in conn.execute(f"SELECT * FROM reflect.{view} LIMIT 0").description]
            assert not {"prompt", "answer", "system_prompt", "prompt_enc", "answer_enc"} & set(cols), view
            text = str(conn.execute(f"SELECT * FROM reflect.{view}").fetchall())
            assert "analyst must not read" not in text
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM reflect.app_requests")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT reflect._decrypt_or_null('\\x00'::bytea, 'k')")


def test_app_cannot_call_worker_functions(db: Database, keyring: Keyring) -> None:
    with connect(db.dsn("app"), keyring=keyring) as conn:
        for sql in ("SELECT reflect.claim_v1('x', 1, 60)", "SELECT reflect.reap_expired_v1()",
                    "SELECT reflect.rotate_key_v1('a')", "SELECT reflect.activate_model_version_v1('tiny')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


INJECTIONS = ["x'; DROP TABLE reflect.requests; --", 'x"; DROP TABLE reflect.requests; --', "Robert'); --",
              "a b", "line\nbreak", "reflect_app; GRANT postgres TO pgreflect_app"]


@pytest.mark.parametrize("evil", INJECTIONS)
def test_dynamic_sql_resists_injection(db: Database, evil: str) -> None:
    with db.admin() as conn:
        with pytest.raises(psycopg.Error, match=r"must match|must be one of"):
            conn.execute("SELECT reflect.ensure_login_role_v1(%s, 'reflect_app')", (evil,))
        with pytest.raises(psycopg.Error, match="must be one of"):
            conn.execute("SELECT reflect.ensure_login_role_v1('fine_name', %s)", (evil,))
        with pytest.raises(psycopg.Error, match="must match"):
            conn.execute("SELECT reflect.use_key_v1(%s, %s)", (evil, new_key()))
        with pytest.raises(psycopg.Error, match="must match"):
            conn.execute("SELECT reflect.register_model_version_v1(%s, '/x', %s, 'path')", (evil, "0" * 64))
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 0
    assert db.scalar("SELECT count(*) FROM pg_roles WHERE rolname = 'fine_name'") == 0


def test_keys_are_refused_when_the_server_would_log_parameters(db: Database, keyring: Keyring) -> None:
    from pgreflect.errors import UnsafeLogging

    with db.admin() as conn:
        conn.execute(f'ALTER DATABASE "{db.name}" SET log_parameter_max_length = -1')
    with pytest.raises(UnsafeLogging, match="log_parameter_max_length"):
        connect(db.dsn("app"), keyring=keyring)
