"""The job runtime: one table, one lease protocol for every kind, checkpoints that survive SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import psycopg
import pytest

from pgreflect.db import connect
from pgreflect.keys import Keyring
from pgreflect.sql import query

from conftest import Database
from helpers import client, drain, spawn_worker, use_noop, wait_for


def _agreement_only(db: Database, samples: int = 3) -> None:
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '0' WHERE key = 'critique_fraction'")
        conn.execute("UPDATE reflect.settings SET value = '1' WHERE key = 'agreement_fraction'")
        conn.execute("UPDATE reflect.settings SET value = to_jsonb(%s::int) WHERE key = 'agreement_samples'",
                     (samples,))


def _claim(conn: psycopg.Connection, kinds: list[str], lease: int = 60) -> list[tuple]:
    return conn.execute(query("claim_jobs"), {"worker_id": "w", "kinds": kinds, "limit": 5, "lease_seconds": lease,
                                              "model_version_ids": None}).fetchall()


def test_lease_protocol_is_compare_and_set(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    _agreement_only(db)
    with client(db, keyring) as c:
        rid = c.submit("q")
    drain(db, keyring, backend="noop", followups=False)
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        assert _claim(conn, ["critique"]) == []  # only the kinds asked for
        (job,) = _claim(conn, ["agreement"])
        job_id, token, kind, attempt, request_id, _mv, payload, checkpoint = job
        assert (kind, attempt, request_id, checkpoint) == ("agreement", 1, rid, None)
        assert payload == {"samples": 3, "temperature": 0.7}
        stale = {"job_id": job_id, "lease_token": uuid.uuid4()}
        for name, extra in (("complete_job", {"result": "{}"}),
                            ("checkpoint_job", {"checkpoint": "{}", "lease_seconds": 60}),
                            ("fail_job", {"error": "x", "retryable": True, "release": False})):
            with pytest.raises(psycopg.Error, match="stale lease"):
                conn.execute(query(name), {**stale, **extra})
        with pytest.raises(psycopg.Error, match="checkpoint must be a JSON object"):
            conn.execute(query("checkpoint_job"), {"job_id": job_id, "lease_token": token, "checkpoint": "[1]",
                                                   "lease_seconds": 60})
        conn.execute(query("checkpoint_job"), {"job_id": job_id, "lease_token": token,
                                               "checkpoint": '{"texts": ["ok"]}', "lease_seconds": 60})
        # A release gives the attempt back; the next claim gets the checkpoint.
        assert conn.execute(query("fail_job"), {"job_id": job_id, "lease_token": token, "error": "shutdown",
                                                "retryable": True, "release": True}).fetchone()[0] == "queued"
        (again,) = _claim(conn, ["agreement"])
        assert again[0] == job_id and again[3] == 1 and again[7] == {"texts": ["ok"]}
        out = conn.execute(query("complete_job"), {"job_id": job_id, "lease_token": again[1],
                                                   "result": '{"signals": {"agreement": 0.5}}'}).fetchone()[0]
        assert 0 < out["confidence"] <= 1
        with pytest.raises(psycopg.Error, match="stale lease"):  # a second completion is stale too
            conn.execute(query("complete_job"), {"job_id": job_id, "lease_token": again[1], "result": "{}"})
    assert db.scalar("SELECT value FROM reflect.answer_signals WHERE request_id = %s AND name = 'agreement'",
                     (rid,)) == 0.5


def test_failures_retry_then_fail_and_expired_leases_are_reaped(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    _agreement_only(db)
    with client(db, keyring) as c:
        c.submit("q")
    drain(db, keyring, backend="noop", followups=False)
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '0' WHERE key = 'retry_base_s'")
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        (job,) = _claim(conn, ["agreement"])
        assert conn.execute(query("fail_job"), {"job_id": job[0], "lease_token": job[1], "error": "boom",
                                                "retryable": True, "release": False}).fetchone()[0] == "queued"
        (job,) = _claim(conn, ["agreement"], lease=1)
        time.sleep(1.2)
        assert conn.execute(query("reap_expired")).fetchone()[0] == 1
    with db.admin() as conn:
        state, attempts, error = conn.execute("SELECT state, attempts, last_error FROM reflect.jobs").fetchone()
    assert (state, attempts) == ("failed", 2) and "lease of worker w expired on attempt 2" in error


def test_a_job_killed_with_sigkill_resumes_from_its_checkpoint(db: Database, keyring: Keyring, tmp_path) -> None:
    use_noop(db)
    _agreement_only(db, samples=4)
    with client(db, keyring) as c:
        rid = c.submit("q")
    drain(db, keyring, backend="noop", followups=False)
    # Each noop sample takes 1.5 s; the worker is killed after its first checkpoint.
    victim = spawn_worker(db, keyring, "--backend", "noop", "--noop-delay", "1.5", "--lease-seconds", "2",
                          "--poll-interval", "0.2", "--worker-id", "victim", log_path=tmp_path / "victim.log")
    try:
        checkpoint = wait_for(lambda: db.scalar("SELECT checkpoint FROM reflect.jobs"), timeout=30,
                              what="the first checkpoint")
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    saved = len(checkpoint["texts"])
    assert 1 <= saved < 4
    time.sleep(2.2)  # the victim's lease runs out
    with db.admin() as conn:
        assert conn.execute(query("reap_expired")).fetchone()[0] == 1
    drain(db, keyring, backend="noop")
    with db.admin() as conn:
        state, attempts, result = conn.execute("SELECT state, attempts, result FROM reflect.jobs").fetchone()
    assert state == "succeeded" and attempts == 2
    assert result["resumed_from"] >= saved  # the samples drawn before the kill were not drawn again
    assert result["signals"] == {"agreement": 1.0} and json.loads(json.dumps(result))["confidence"] > 0
    assert db.scalar("SELECT value FROM reflect.answer_signals WHERE request_id = %s AND name = 'agreement'",
                     (rid,)) == 1.0


def test_a_job_on_an_undecryptable_answer_fails_alone(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    _agreement_only(db)
    with client(db, keyring) as c:
        ids = [c.submit(f"q{i}") for i in range(2)]
    drain(db, keyring, backend="noop", followups=False)
    with db.admin() as conn:
        conn.execute("UPDATE reflect.answers SET answer_enc = public.pgp_sym_encrypt('x', 'another key entirely!!"
                     "!!!!!!!!!!') WHERE request_id = %s", (ids[0],))
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        jobs = _claim(conn, ["agreement"])
        inputs = {j[4]: conn.execute(query("job_input"), {"job_id": j[0], "lease_token": j[1]}).fetchall()
                  for j in jobs}
    assert inputs[ids[0]] == [] and inputs[ids[1]][0][:3] == ("q1", None, "ok")
    with db.admin() as conn:
        states = dict(conn.execute("SELECT request_id, state FROM reflect.jobs").fetchall())
    assert states == {ids[0]: "failed", ids[1]: "running"}
