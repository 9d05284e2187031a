"""INSERT -> answer through the real cluster and the real llama.cpp path; encryption at rest; no plaintext
or key in the server log."""

from __future__ import annotations

import threading

import psycopg
import pytest

from pgreflect.backends import GenerationRequest
from pgreflect.backends.llama import LlamaBackend
from pgreflect.db import connect
from pgreflect.keys import Keyring
from pgreflect.sql import query

from conftest import Database
from helpers import GREEDY, client, drain


def test_insert_is_answered_and_encrypted_at_rest(db: Database, keyring: Keyring, tiny_model, cluster) -> None:
    prompt = "Plaintext canary prompt 7f3a9c: tell me about lighthouses."
    system = "System canary 51be2d."
    log_offset = cluster.log_file.stat().st_size
    with client(db, keyring) as c:
        rid = c.submit(prompt, system_prompt=system, params={"max_tokens": 24, **GREEDY}, caller="test")
        assert c.get(rid)["state"] == "queued"
        stats = drain(db, keyring)
        assert stats.succeeded == 1
        row = c.get(rid)
    assert row["state"] == "succeeded"
    with connect(db.dsn("app"), keyring=keyring) as conn:
        assert conn.execute("SELECT prompt, system_prompt FROM reflect.app_requests WHERE id = %s",
                            (rid,)).fetchone() == (prompt, system)

    # The decrypted answer is exactly what the model generates for this prompt.
    backend = LlamaBackend(tiny_model, n_ctx=4096, n_threads=2)
    params = {"max_tokens": 24, "temperature": 0, "top_p": 1, "top_k": 0, "seed": None, "stop": []}
    expected = backend.generate(GenerationRequest(prompt, system, params), threading.Event())
    assert row["answer"] == expected.text
    assert row["tokens"] == len(expected.token_ids) == 24
    assert row["finish_reason"] == "length"
    assert row["logprob_mean"] is not None and row["logprob_mean"] < 0
    assert 0 < row["confidence"] <= 1

    with db.admin() as conn:
        p_enc, s_enc, key_id = conn.execute(
            "SELECT prompt_enc, system_prompt_enc, key_id FROM reflect.requests WHERE id = %s", (rid,)).fetchone()
        a_enc, lps = conn.execute(
            "SELECT answer_enc, token_logprobs FROM reflect.answers WHERE request_id = %s", (rid,)).fetchone()
    assert key_id == keyring.current
    for cipher in (p_enc, s_enc, a_enc):
        assert bytes(cipher)[:1] in (b"\xc3", b"\x8c")  # an OpenPGP symmetric-key packet, not text
    assert prompt.encode() not in bytes(p_enc)
    assert b"canary" not in bytes(p_enc) + bytes(s_enc)
    assert expected.text.encode()[:20] not in bytes(a_enc)
    assert len(lps) == 24

    # Statement logging is on in the test cluster (log_statement = 'all'): the log must hold neither the
    # prompt, the system prompt, the answer nor the key.
    log = cluster.log_file.read_bytes()[log_offset:].decode(errors="replace")
    assert "reflect.claim_v1" in log  # the statements were logged...
    assert "7f3a9c" not in log and "51be2d" not in log  # ...but not the plaintext
    assert expected.text[:20] not in log
    for key in keyring.keys.values():
        assert key not in log


def test_app_can_insert_into_the_view_with_plain_sql(db: Database, keyring: Keyring) -> None:
    """The documented app path: load the key once, then INSERT ... RETURNING and SELECT, no crypto calls."""
    with connect(db.dsn("app"), keyring=keyring) as conn:
        rid, state = conn.execute(
            "INSERT INTO reflect.app_requests (prompt, params) VALUES (%s, %s) RETURNING id, state",
            ("What is two plus two?", '{"max_tokens": 4}')).fetchone()
        assert state == "queued"
    drain(db, keyring)
    with connect(db.dsn("app"), keyring=keyring) as conn:
        answer, tokens, state = conn.execute(
            "SELECT answer, tokens, state FROM reflect.app_requests WHERE id = %s", (rid,)).fetchone()
    assert state == "succeeded" and tokens <= 4 and isinstance(answer, str)


def test_apps_see_only_their_own_requests(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        rid = c.submit("mine")
    with db.admin() as conn:
        conn.execute("SELECT reflect.ensure_login_role_v1('other_app', 'reflect_app')")
    with connect(db.cluster.dsn(user="other_app", dbname=db.name), keyring=keyring) as conn:
        assert conn.execute("SELECT count(*) FROM reflect.app_requests").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM reflect.app_requests WHERE id = %s", (rid,)).fetchone()[0] == 0


def test_notify_on_insert_and_on_completion_carries_only_the_id(db: Database, keyring: Keyring) -> None:
    with psycopg.connect(db.dsn("app"), autocommit=True) as listener:
        listener.execute("LISTEN needs_inference")
        listener.execute("LISTEN request_done")
        with client(db, keyring) as c:
            rid = c.submit("secret words in the prompt", params={"max_tokens": 2})
        drain(db, keyring)
        seen = {(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=2)}
    assert seen == {("needs_inference", str(rid)), ("request_done", str(rid))}


def test_idempotency_key_two_inserts_one_request_one_answer(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        first = c.submit("Name a colour.", idempotency_key="order-42", params={"max_tokens": 3})
        second = c.submit("Name a colour.", idempotency_key="order-42", params={"max_tokens": 3})
        assert first == second
        drain(db, keyring)
        third = c.submit("Name a colour.", idempotency_key="order-42")
        assert third == first
        assert c.get(first)["state"] == "succeeded"
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 1
    assert db.scalar("SELECT count(*) FROM reflect.answers") == 1
    assert db.scalar("SELECT count(*) FROM reflect.request_events WHERE event = 'claimed'") == 1


def test_concurrent_inserts_with_one_idempotency_key_make_one_request(db: Database, keyring: Keyring) -> None:
    ids: list[int] = []
    barrier = threading.Barrier(8)

    def submit() -> None:
        with client(db, keyring) as c:
            barrier.wait()
            ids.append(c.submit("same", idempotency_key="race"))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 1


def test_key_and_prompt_are_not_in_pg_stat_activity(db: Database, keyring: Keyring) -> None:
    prompt = "activity canary 9d41e0"
    with connect(db.dsn("app"), keyring=keyring) as conn:
        pid = conn.info.backend_pid
        conn.execute("INSERT INTO reflect.app_requests (prompt) VALUES (%s)", (prompt,))
        with db.admin() as admin:
            seen = admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]
            conn.execute(query("use_key"), {"key_id": keyring.current, "key": keyring.keys[keyring.current],
                                            "current": True})
            after_key = admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]
    assert "$1" in seen and "9d41e0" not in seen
    assert "reflect.use_key_v1($1, $2, $3)" in after_key
    for key in keyring.keys.values():
        assert key not in after_key


def test_a_version_with_a_full_queue_refuses_more_until_it_drains(db: Database, keyring: Keyring) -> None:
    """max_queued_per_version: the request past the limit is refused with QueueFull and nothing is written;
    another version is not affected; once one is claimed there is room again; analysts see depth and limit."""
    from pgreflect.errors import QueueFull

    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '3' WHERE key = 'max_queued_per_version'")
    with client(db, keyring) as c:
        for i in range(3):
            c.submit(f"question {i}")
        with pytest.raises(QueueFull, match=r'^model version "tiny" already has 3 requests waiting, its limit: retry'):
            c.submit("one too many")
        assert db.scalar("SELECT count(*) FROM reflect.requests") == 3
        c.submit("for another version", model_version="noop")
        with connect(db.dsn("worker"), keyring=keyring) as w:
            w.execute(query("claim"), {"worker_id": "w", "limit": 1, "lease_seconds": 60,
                                       "model_version_ids": None}).fetchall()
        c.submit("room again")
    with psycopg.connect(db.dsn("analyst")) as conn:
        assert conn.execute("SELECT queued, running, queue_limit FROM reflect.queue_status "
                            "WHERE model_version = 'tiny'").fetchone() == (3, 1, 3)
