"""Every kind of bad input gets a clear error, and nothing is written."""

from __future__ import annotations

import math
import uuid

import psycopg
import pytest

from pgreflect.db import connect
from pgreflect.errors import InvalidInput, MissingKey, StaleLease, UnknownModel, translate
from pgreflect.keys import Keyring
from pgreflect.sql import query

from conftest import Database
from helpers import client, drain, use_noop


def _counts(db: Database) -> tuple[int, int, int]:
    with db.admin() as conn:
        return conn.execute("SELECT (SELECT count(*) FROM reflect.requests), (SELECT count(*) FROM reflect.answers),"
                            " (SELECT count(*) FROM reflect.request_events)").fetchone()


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"prompt": ""}, InvalidInput, "prompt must not be empty"),
    ({"prompt": " \n\t "}, InvalidInput, "prompt must not be empty"),
    ({"prompt": "x" * 32769}, InvalidInput, "prompt is 32769 characters long; the limit is 32768"),
    ({"prompt": "ok", "system_prompt": "y" * 40000}, InvalidInput, "system prompt is 40000 characters"),
    ({"prompt": "a\x00b"}, InvalidInput, "NUL byte"),
    ({"prompt": "ok", "system_prompt": "\x00"}, InvalidInput, "NUL byte"),
    ({"prompt": "ok", "params": {"temprature": 0.5}}, InvalidInput, 'unknown generation parameter "temprature"'),
    ({"prompt": "ok", "params": {"temperature": 5}}, InvalidInput, "temperature must be between 0 and 2"),
    ({"prompt": "ok", "params": {"temperature": "hot"}}, InvalidInput, "temperature must be a number"),
    ({"prompt": "ok", "params": {"max_tokens": 0}}, InvalidInput, "max_tokens must be between 1 and 4096"),
    ({"prompt": "ok", "params": {"max_tokens": 2.5}}, InvalidInput, "max_tokens must be an integer"),
    ({"prompt": "ok", "params": {"max_tokens": 100000}}, InvalidInput, "max_tokens must be between"),
    ({"prompt": "ok", "params": {"top_p": 0}}, InvalidInput, "top_p must be between"),
    ({"prompt": "ok", "params": {"stop": ["a", "b", "c", "d", "e"]}}, InvalidInput, "stop must be"),
    ({"prompt": "ok", "params": {"stop": [""]}}, InvalidInput, "stop must be"),
    ({"prompt": "ok", "params": {"stop": [1]}}, InvalidInput, "stop must be"),
    ({"prompt": "ok", "params": {"memory": "yes"}}, InvalidInput, "memory must be true or false"),
    ({"prompt": "ok", "params": {"stream": 1}}, InvalidInput, "stream must be true or false"),
    ({"prompt": "ok", "params": {"low_confidence": "panic"}}, InvalidInput, "low_confidence must be answer, flag"),
    ({"prompt": "ok", "params": {"confidence_threshold": 1.5}}, InvalidInput, "confidence_threshold must be between"),
    ({"prompt": "ok", "model_version": "no-such-model"}, UnknownModel, 'unknown model version "no-such-model"'),
    ({"prompt": "ok", "idempotency_key": "k" * 201}, InvalidInput, "idempotency key must be 1 to 200"),
])
def test_submit_rejects_bad_input(db: Database, keyring: Keyring, kwargs: dict, error: type, message: str) -> None:
    before = _counts(db)
    with client(db, keyring) as c, pytest.raises(error, match=message.replace("(", r"\(")):
        c.submit(**kwargs)
    assert _counts(db) == before


def test_raw_sql_with_a_nul_byte_is_refused_by_the_driver(db: Database, keyring: Keyring) -> None:
    with connect(db.dsn("app"), keyring=keyring) as conn, pytest.raises(psycopg.DataError, match="NUL"):
        conn.execute("INSERT INTO reflect.app_requests (prompt) VALUES (%s)", ("a\x00b",))
    assert _counts(db)[0] == 0


def test_params_must_be_an_object(db: Database, keyring: Keyring) -> None:
    with connect(db.dsn("app"), keyring=keyring) as conn, pytest.raises(psycopg.Error, match="JSON object"):
        conn.execute("SELECT reflect.submit_v1('ok', NULL, '[1, 2]'::jsonb)")
    assert _counts(db)[0] == 0


def test_params_defaults_are_filled_in_by_the_database(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        rid = c.submit("ok", params={"stop": "END"})
    params = db.scalar("SELECT params FROM reflect.requests WHERE id = %s", (rid,))
    assert params == {"max_tokens": 256, "temperature": 0, "top_p": 1, "top_k": 0, "seed": None, "stop": ["END"],
                      "logprobs": False, "top_logprobs": 0, "stream": False,
                      "memory": True, "memory_k": 3, "memory_max_distance": 0.38, "low_confidence": "answer",
                      "confidence_threshold": 0.5}


def test_submit_without_a_key_is_refused(db: Database) -> None:
    with psycopg.connect(db.dsn("app"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="no encryption key loaded in this session"):
            conn.execute("SELECT reflect.submit_v1('hello')")
        with pytest.raises(psycopg.Error, match="at least 32 characters"):
            conn.execute(query("use_key"), {"key_id": "short", "key": "tooshort", "current": True})
    assert _counts(db)[0] == 0


def test_inserting_server_side_columns_into_the_view_is_refused(db: Database, keyring: Keyring) -> None:
    with connect(db.dsn("app"), keyring=keyring) as conn, pytest.raises(psycopg.Error, match="only prompt"):
        conn.execute("INSERT INTO reflect.app_requests (prompt, answer) VALUES ('q', 'forged answer')")
    assert _counts(db)[0] == 0


def test_completing_with_a_stale_lease_raises_and_changes_nothing(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        rid = c.submit("hello", params={"max_tokens": 2})
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        claimed = conn.execute(query("claim"), {"worker_id": "w1", "limit": 1, "lease_seconds": 60,
                                                "model_version_ids": None}).fetchall()
        assert [r[0] for r in claimed] == [rid]
        token = claimed[0][1]
        before = _counts(db)
        args = {"request_id": rid, "answer": "forged", "finish_reason": "stop", "prompt_tokens": 1,
                "token_logprobs": [-0.1], "prompt_eval_ms": 1.0, "generation_ms": 1.0, "signals": "{}"}
        with pytest.raises(psycopg.Error, match="stale lease") as info:
            conn.execute(query("complete"), {**args, "lease_token": uuid.uuid4()})
        assert info.value.sqlstate == "PR002"
        for name, extra in (("fail", {"error": "x", "retryable": True}), ("release", {})):
            with pytest.raises(psycopg.Error, match="stale lease"):
                conn.execute(query(name), {"request_id": rid, "lease_token": uuid.uuid4(), **extra})
        assert _counts(db) == before
        # Bad completion payloads are refused before the lease is touched.
        for bad, message in (({"token_logprobs": [0.5]}, "finite and <= 0"),
                             ({"token_logprobs": [float("nan")]}, "finite and <= 0"),
                             ({"finish_reason": "done"}, "finish reason must be"),
                             ({"answer": None}, "answer must not be NULL"),
                             ({"prompt_tokens": -1}, "must be non-negative"),
                             ({"signals": '{"p_true": "high"}'}, 'signal "p_true" must be'),
                             ({"signals": '{"Bad Name": 1}'}, 'signal "Bad Name" must be'),
                             ({"signals": "[1]"}, "signals must be a JSON object")):
            with pytest.raises(psycopg.Error, match=message):
                conn.execute(query("complete"), {**args, "lease_token": token, **bad})
        assert db.scalar("SELECT state FROM reflect.requests WHERE id = %s", (rid,)) == "running"
        conn.execute(query("complete"), {**args, "lease_token": token})
        with pytest.raises(psycopg.Error, match="stale lease"):  # a second completion is stale too
            conn.execute(query("complete"), {**args, "lease_token": token})
    assert db.scalar("SELECT count(*) FROM reflect.answers") == 1


def test_worker_maps_stale_lease_to_exception(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    from helpers import worker

    w = worker(db, keyring, backend="noop")
    with client(db, keyring) as c:
        rid = c.submit("hello")
    rows = w.call("main", "claim", {"worker_id": "w", "limit": 1, "lease_seconds": 60, "model_version_ids": None})
    assert rows[0][0] == rid
    with pytest.raises(StaleLease):
        w.call("main", "release", {"request_id": rid, "lease_token": uuid.uuid4()})


def test_claim_skips_requests_whose_key_the_worker_lacks(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    from pgreflect.keys import Keyring as KR
    from pgreflect.keys import new_key

    with client(db, keyring) as c:
        c.submit("encrypted with the first key", params={"max_tokens": 1})
    other = KR(current="other", keys={"other": new_key()})
    stats = drain(db, other, backend="noop")
    assert stats.claimed == 0
    assert drain(db, keyring, backend="noop").succeeded == 1


def test_missing_key_error_names_the_key_id_not_the_key(db: Database, keyring: Keyring) -> None:
    with connect(db.dsn(), keyring=keyring) as conn, \
            pytest.raises(psycopg.Error, match="no encryption key loaded for key id nokey") as info:
        conn.execute("SELECT reflect.rotate_key_v1('nokey')")
    err = translate(info.value)
    assert isinstance(err, MissingKey)
    assert "nokey" in str(err)
    for key in keyring.keys.values():
        assert key not in str(err)


def test_complete_v1_still_works_for_older_workers(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        rid = c.submit("hello")
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        (row,) = conn.execute(query("claim"), {"worker_id": "old", "limit": 1, "lease_seconds": 60,
                                               "model_version_ids": None}).fetchall()
        conn.execute(query("complete_v1"), {"request_id": rid, "lease_token": row[1], "answer": "hi",
                                            "finish_reason": "stop", "prompt_tokens": 1,
                                            "token_logprobs": [-0.5], "prompt_eval_ms": 1.0, "generation_ms": 1.0})
    with client(db, keyring) as c:
        got = c.get(rid)
    assert got["state"] == "succeeded" and got["calibrated"] is False
    assert got["confidence"] == pytest.approx(math.exp(-0.5))


@pytest.mark.parametrize("register", [
    "SELECT reflect.register_model_version_v2(%(name)s, '/m.gguf', repeat('a', 64), 'path', 4096, %(parent)s)",
    "SELECT reflect.register_remote_model_version_v1(%(name)s, 'http://127.0.0.1:1/v1', 'm', 4096, %(parent)s)",
])
def test_registering_a_version_checks_its_name_and_parent_whatever_serves_it(db: Database, register: str) -> None:
    with db.admin() as conn:
        before = conn.execute("SELECT count(*) FROM reflect.model_versions").fetchone()[0]
        for name, parent, sqlstate, message in [("bad name", None, "PR001", "model version name must match"),
                                                ("", None, "PR001", "model version name must match"),
                                                ("fine", "no-such-version", "PR003", 'unknown parent model version')]:
            with pytest.raises(psycopg.Error, match=message) as err:
                conn.execute(register, {"name": name, "parent": parent})
            assert err.value.sqlstate == sqlstate
        assert conn.execute("SELECT count(*) FROM reflect.model_versions").fetchone()[0] == before
        conn.execute(register, {"name": "child-of-tiny", "parent": "tiny"})
        assert conn.execute("SELECT p.name FROM reflect.model_versions c JOIN reflect.model_versions p "
                            "ON p.id = c.parent_id WHERE c.name = 'child-of-tiny'").fetchone()[0] == "tiny"
