"""Isolation, rotation, audit and input hardening: memories stay with their owner, every encrypted column
rotates, decryptions for people are audited, a backend serves only what it can run, and bad inserts are
refused instead of silently dropped."""

from __future__ import annotations

import json
import uuid

import numpy as np
import psycopg
import pytest

from pgreflect.db import connect
from pgreflect.errors import InvalidInput, UnknownModel
from pgreflect.keys import Keyring, new_key
from pgreflect.sql import query

from conftest import Database
from helpers import SECOND_APP, answer_with_embedding, client, drain, second_app, unit_vector, use_noop, worker


def test_memories_stay_with_their_owner_unless_shared(db: Database, keyring: Keyring) -> None:
    app_one, app_two = db.dsn("app"), second_app(db)
    near = unit_vector(1)
    first, _ = answer_with_embedding(db, keyring, app_one, "app one's private question", near)
    with connect(app_one, keyring=keyring) as conn:
        conn.execute(query("feedback"), {"request_id": first, "is_correct": False, "rating": None,
                                         "correction": "app one's private correction", "source": "human"})
    assert db.scalar("SELECT owner FROM reflect.memories WHERE request_id = %s", (first,)) == "pgreflect_app"

    _, recalled_by_two = answer_with_embedding(db, keyring, app_two, "app two asks the same", near)
    assert recalled_by_two == []  # the nearest memory belongs to another app
    _, recalled_by_one = answer_with_embedding(db, keyring, app_one, "app one asks again", near)
    assert recalled_by_one == [first]

    with connect(app_one, keyring=keyring) as conn:
        conn.execute(query("share_memories"), {"reader": SECOND_APP, "share": True})
        with pytest.raises(psycopg.Error, match="no app login"):
            conn.execute(query("share_memories"), {"reader": "pgreflect_analyst", "share": True})
    _, shared = answer_with_embedding(db, keyring, app_two, "app two, after sharing", near)
    assert shared == [first]
    with connect(app_one, keyring=keyring) as conn:
        conn.execute(query("share_memories"), {"reader": SECOND_APP, "share": False})
    _, unshared = answer_with_embedding(db, keyring, app_two, "app two, after unsharing", near)
    assert unshared == []


def test_owner_filter_still_finds_memories_behind_nearer_foreign_ones(db: Database, keyring: Keyring) -> None:
    """More of another app's memories (60) lie nearer than the owner's one than HNSW's default candidate list
    holds (ef_search 40): the owner's memory is still found (recall_v1 turns pgvector's iterative scan on)."""
    app_one = db.dsn("app")
    second_app(db)
    base = np.random.default_rng(7).normal(size=384)
    with db.admin() as conn:
        for i in range(60):  # 60 of app two's memories right next to the query ...
            v = base + np.random.default_rng(100 + i).normal(scale=0.01, size=384)
            conn.execute("""
                WITH r AS (INSERT INTO reflect.requests (key_id, prompt_enc, params, submitted_by, model_version_id,
                                                         max_attempts, state, finished_at)
                           SELECT k, public.pgp_sym_encrypt('foreign', %s), '{}', %s,
                                  (SELECT id FROM reflect.model_versions WHERE name = 'noop'), 3, 'succeeded',
                                  now()
                           FROM (SELECT %s::text AS k) s RETURNING id),
                     f AS (INSERT INTO reflect.feedback (request_id, is_correct, source, given_by)
                           SELECT id, true, 'human', %s FROM r RETURNING id, request_id)
                INSERT INTO reflect.memories (request_id, kind, feedback_id, embedding, owner)
                SELECT f.request_id, 'confirmed', f.id, %s::public.vector, %s FROM f""",
                         (keyring.keys[keyring.current], SECOND_APP, keyring.current, SECOND_APP,
                          "[" + ",".join(map(str, v / np.linalg.norm(v))) + "]", SECOND_APP))
    far = base + np.random.default_rng(3).normal(scale=0.5, size=384)
    far_vec = "[" + ",".join(map(str, far / np.linalg.norm(far))) + "]"
    mine, _ = answer_with_embedding(db, keyring, app_one, "mine", far_vec)
    with connect(app_one, keyring=keyring) as conn:
        conn.execute(query("feedback"), {"request_id": mine, "is_correct": True, "rating": None, "correction": None,
                                         "source": "human"})
    query_vec = "[" + ",".join(map(str, base / np.linalg.norm(base))) + "]"
    _, recalled = answer_with_embedding(db, keyring, app_one, "query", query_vec)
    assert recalled == [mine]


def _fill_every_encrypted_table(db: Database, keyring: Keyring) -> int:
    use_noop(db)
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '1' WHERE key = 'critique_fraction'")
    with client(db, keyring) as c:
        rid = c.submit("rotate me", system_prompt="be brief", params={"low_confidence": "reanswer"})
        # a conversation's earlier turns, and an answer's token texts (asked for with logprobs)
        c.submit("and me", params={"logprobs": True, "top_logprobs": 2},
                 history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    drain(db, keyring, backend="noop")  # answers, a re-answer candidate, and critiques
    with connect(db.dsn("app"), keyring=keyring) as conn:
        conn.execute(query("feedback"), {"request_id": rid, "is_correct": False, "rating": None,
                                         "correction": "rotated correction", "source": "human"})
    with connect(db.dsn(), keyring=keyring) as conn:  # and a training set made from it
        conn.execute("INSERT INTO reflect.prompt_embeddings (request_id, model, embedding) VALUES (%s, 'test', %s)",
                     (rid, unit_vector(5)))
        conn.execute("SELECT reflect.curate_training_set_v1('pgreflect_app', 'noop')")
    with client(db, keyring) as c:  # a streamed answer still being generated: its text so far
        streamed = c.submit("stream me", params={"stream": True})
    with connect(db.dsn("worker"), keyring=keyring) as w:
        (row,) = w.execute(query("claim"), {"worker_id": "w", "limit": 1, "lease_seconds": 600,
                                            "model_version_ids": None}).fetchall()
        w.execute(query("report_partial"), {"request_id": streamed, "lease_token": row[1], "text": "so far"})
    return rid


def test_rotation_reencrypts_every_encrypted_column_found_in_the_catalog(db: Database, keyring: Keyring) -> None:
    rid = _fill_every_encrypted_table(db, keyring)
    with db.admin() as conn:
        # Every bytea column of the schema, from the catalog, whatever rotate_key_v1 itself knows.
        columns = conn.execute("""
            SELECT table_name, column_name FROM information_schema.columns
            WHERE table_schema = 'reflect' AND data_type = 'bytea' ORDER BY 1, 2""").fetchall()
        known = {(t, c) for t, cols in conn.execute("SELECT * FROM reflect._encrypted_columns()") for c in cols}
        assert set(columns) == known, "a bytea column that rotation does not know (name it *_enc, add key_id)"
        for table, column in columns:
            filled = conn.execute(f"SELECT count(*) FROM reflect.{table} WHERE {column} IS NOT NULL").fetchone()[0]
            assert filled > 0, f"the test leaves reflect.{table}.{column} empty, so it would prove nothing"
    old_id = keyring.current
    new = Keyring(current="knew", keys={**keyring.keys, "knew": new_key()})
    total = 0
    with connect(db.dsn(), keyring=new) as conn:
        while n := conn.execute(query("rotate_key"), {"from_key_id": old_id, "batch": 2}).fetchone()[0]:
            total += n
        usage = conn.execute(query("key_usage")).fetchall()
    assert total == sum(db.scalar(f"SELECT count(*) FROM reflect.{t} WHERE key_id = 'knew'")
                        for t in {t for t, _ in columns})
    assert {k for k, _, _ in usage} == {"knew"}
    new_key_text = new.keys["knew"]
    with db.admin() as conn:
        for table, column in columns:
            plain = conn.execute(f"SELECT public.pgp_sym_decrypt({column}, %s) FROM reflect.{table} "
                                 f"WHERE {column} IS NOT NULL", (new_key_text,)).fetchall()
            assert plain and all(p[0] for p in plain), (table, column)
        assert conn.execute("SELECT count(*) FROM reflect.request_events WHERE event = 'key_rotated' "
                            "AND request_id = %s", (rid,)).fetchone()[0] == 1


def test_reveal_is_audited_and_the_audit_is_append_only(db: Database, keyring: Keyring) -> None:
    rid = _fill_every_encrypted_table(db, keyring)
    with db.admin() as conn:
        conn.execute(query("ensure_login_role"), {"login": "pgreflect_reviewer", "group_role": "reflect_reviewer"})
    from pgreflect.privacy import Redactor
    from pgreflect.reveal import reveal

    with connect(db.cluster.dsn(user="pgreflect_reviewer", dbname=db.name), keyring=keyring) as conn:
        with pytest.raises(InvalidInput, match="say why"):
            reveal(conn, rid, "  ", Redactor())
        shown = reveal(conn, rid, "checking a reported wrong answer", Redactor())
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT prompt FROM reflect.app_requests")
    assert shown["prompt"] == "rotate me" and shown["corrections"] == ["rotated correction"]
    assert json.loads(shown["critique"])["verdict"] == "unsure"
    with psycopg.connect(db.dsn("analyst"), autocommit=True) as conn:
        log = conn.execute("SELECT by_login, request_id, purpose, redacted FROM reflect.decryption_log").fetchall()
    assert log == [("pgreflect_reviewer", rid, "checking a reported wrong answer", True)]
    with db.admin() as conn:  # not even the superuser rewrites it
        for sql in ("UPDATE reflect.decryption_audit SET purpose = 'nothing to see'",
                    "DELETE FROM reflect.decryption_audit", "TRUNCATE reflect.decryption_audit"):
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute(sql)
    with connect(db.dsn("app"), keyring=keyring) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(query("reveal_request"), {"request_id": rid, "purpose": "curious", "redacted": False})


def test_inserting_computed_columns_is_refused_not_dropped(db: Database, keyring: Keyring) -> None:
    with connect(db.dsn("app"), keyring=keyring) as conn:
        for column, value in (("attempts", 0), ("last_error", "'x'"), ("confidence", 0.9), ("tokens", 5),
                              ("signals", "'{}'")):
            with pytest.raises(psycopg.Error, match=f"got {column}"):
                conn.execute(f"INSERT INTO reflect.app_requests (prompt, {column}) VALUES ('hi', {value})")
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 0


@pytest.mark.parametrize("prompt", ["\u00a0\u00a0", "\u200b", "\ufeff \u2003\n", "\u3000\t"])
def test_prompts_of_only_unicode_whitespace_are_refused(db: Database, keyring: Keyring, prompt: str) -> None:
    with client(db, keyring) as c, pytest.raises(InvalidInput, match="prompt must not be empty"):
        c.submit(prompt)
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 0


def test_numbers_are_stored_normalised(db: Database, keyring: Keyring) -> None:
    with connect(db.dsn("app"), keyring=keyring) as conn:
        rid = conn.execute("INSERT INTO reflect.app_requests (prompt, params) VALUES ('hi', %s::jsonb) RETURNING id",
                           ('{"max_tokens": 8.0, "temperature": 1e-400, "top_p": 0.50}',)).fetchone()[0]
        params = conn.execute("SELECT params FROM reflect.app_requests WHERE id = %s", (rid,)).fetchone()[0]
    assert params["max_tokens"] == 8 and isinstance(params["max_tokens"], int)
    assert params["temperature"] == 0 and params["top_p"] == 0.5


def test_a_backend_serves_only_versions_it_can_run(db: Database, keyring: Keyring) -> None:
    with pytest.raises(UnknownModel, match='"tiny" runs on the llama backend, not on noop'):
        worker(db, keyring, backend="noop", model_versions=["tiny"]).load_models()
    with client(db, keyring) as c:
        real = c.submit("for the real model")
        fake = c.submit("for the noop backend", model_version="noop")
    stats = drain(db, keyring, backend="noop", model_versions=None)  # every noop version, nothing else
    assert stats.succeeded == 1
    with db.admin() as conn:
        states = dict(conn.execute("SELECT id, state FROM reflect.requests").fetchall())
    assert states == {real: "queued", fake: "succeeded"}


def test_apps_cannot_write_the_shared_evaluation_split(db: Database, keyring: Keyring) -> None:
    with connect(db.dsn("app"), keyring=keyring) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(query("register_eval_items"), {"dataset": "mmlu", "item_ids": ["1"], "splits": ["train"]})
    with connect(db.dsn(), keyring=keyring) as conn:
        assert conn.execute(query("register_eval_items"), {"dataset": "mmlu", "item_ids": ["1"],
                                                           "splits": ["train"]}).fetchone()[0] == 1


def test_a_stale_lease_token_reveals_nothing(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    with client(db, keyring) as c:
        rid = c.submit("secret question")
    with connect(db.dsn("worker"), keyring=keyring) as conn, pytest.raises(psycopg.Error, match="stale lease"):
        conn.execute(query("evidence"), {"request_id": rid, "lease_token": uuid.uuid4(), "k": 3})
