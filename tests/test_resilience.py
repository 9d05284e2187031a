"""Crashes, concurrency and lost connections: no request lost, none answered twice."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pgreflect.keys import Keyring

from conftest import Database
from helpers import BackgroundWorker, client, spawn_worker, use_noop, wait_for, worker


def _state(db: Database, rid: int) -> tuple:
    return db.admin().execute("SELECT state, worker_id, attempts FROM reflect.requests WHERE id = %s",
                              (rid,)).fetchone()


@pytest.mark.faults
def test_worker_killed_mid_generation_request_answered_once_by_another(
        db: Database, keyring: Keyring, tmp_path) -> None:
    common = ["--model-version", "smollm2", "--lease-seconds", "3", "--poll-interval", "0.2",
              "--reap-interval", "1", "--threads", "1"]
    a = spawn_worker(db, keyring, *common, "--worker-id", "victim", log_path=tmp_path / "a.log")
    try:
        with client(db, keyring) as c:
            rid = c.submit("Write a long story about a lighthouse keeper and a storm.", model_version="smollm2",
                           params={"max_tokens": 300, "temperature": 0})
        wait_for(lambda: _state(db, rid)[:2] == ("running", "victim"), timeout=60, what="victim to claim")
        time.sleep(1.0)  # ~50 tokens into a 300-token generation
        assert _state(db, rid)[:2] == ("running", "victim"), "generation finished before the kill"
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        assert db.scalar("SELECT count(*) FROM reflect.answers") == 0
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)

    b = spawn_worker(db, keyring, *common, "--worker-id", "rescuer", log_path=tmp_path / "b.log")
    try:
        wait_for(lambda: _state(db, rid)[0] == "succeeded", timeout=180, interval=0.2,
                 what=f"rescue; log: {(tmp_path / 'b.log').read_text() if (tmp_path / 'b.log').exists() else ''}")
    finally:
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=60) == 0
    assert _state(db, rid) == ("succeeded", "rescuer", 2)
    with db.admin() as conn:
        answers = conn.execute("SELECT worker_id, completion_tokens FROM reflect.answers WHERE request_id = %s",
                               (rid,)).fetchall()
        events = conn.execute("SELECT event, worker_id FROM reflect.request_events WHERE request_id = %s ORDER BY id",
                              (rid,)).fetchall()
    assert len(answers) == 1 and answers[0][0] == "rescuer" and answers[0][1] > 0
    assert events == [("submitted", None), ("claimed", "victim"), ("lease_expired", "victim"),
                      ("claimed", "rescuer"), ("succeeded", "rescuer")]


@pytest.mark.faults
def test_several_worker_processes_complete_thousands_of_requests_exactly_once(
        db: Database, keyring: Keyring, tmp_path) -> None:
    use_noop(db)
    n_workers, n_requests = 3, 3000
    procs = [spawn_worker(db, keyring, "--backend", "noop", "--concurrency", "4", "--poll-interval", "0.5",
                           "--worker-id", f"w{i}", log_path=tmp_path / f"w{i}.log") for i in range(n_workers)]
    try:
        def submit(start: int, count: int) -> None:
            with client(db, keyring) as c:
                for i in range(start, start + count):
                    c.submit(f"request {i}", idempotency_key=f"k{i}")

        threads = [threading.Thread(target=submit, args=(i * 1000, 1000)) for i in range(n_requests // 1000)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: db.scalar("SELECT count(*) FROM reflect.requests WHERE state = 'succeeded'") == n_requests,
                 timeout=300, interval=0.5, what="all requests to succeed")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
    assert codes == [0] * n_workers
    with db.admin() as conn:
        row = conn.execute("""
            SELECT count(*), count(DISTINCT r.id), count(a.request_id), count(*) FILTER (WHERE r.attempts <> 1),
                   count(DISTINCT a.worker_id)
            FROM reflect.requests r LEFT JOIN reflect.answers a ON a.request_id = r.id""").fetchone()
        claims = conn.execute("SELECT count(*) FROM reflect.request_events WHERE event = 'claimed'").fetchone()[0]
    total, distinct, answered, retried, workers = row
    assert (total, distinct, answered, retried) == (n_requests, n_requests, n_requests, 0)
    assert claims == n_requests
    assert workers == n_workers


def _listener_pids(db: Database) -> list[int]:
    return [r[0] for r in db.admin().execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name LIKE 'pgreflect-listener:%%'",
        (db.name,))]


@pytest.mark.faults
def test_requests_are_picked_up_by_polling_while_the_listener_is_down(db: Database, keyring: Keyring,
                                                                       monkeypatch) -> None:
    use_noop(db)
    w = worker(db, keyring, backend="noop", poll_interval=0.5)
    monkeypatch.setattr(w, "_listen_loop", lambda: None)  # a listener that never connects
    with BackgroundWorker(w), client(db, keyring) as c:
        time.sleep(0.3)
        rid = c.submit("hello")
        t0 = time.monotonic()
        wait_for(lambda: c.get(rid)["state"] == "succeeded", timeout=10, what="polling pick-up")
        assert time.monotonic() - t0 < 5


@pytest.mark.faults
def test_listener_reconnects_and_listens_again_after_its_connection_is_killed(db: Database,
                                                                              keyring: Keyring) -> None:
    use_noop(db)
    # Poll every 60 s: a pick-up within a few seconds can only come from a NOTIFY.
    w = worker(db, keyring, backend="noop", poll_interval=60)
    with BackgroundWorker(w), client(db, keyring) as c:
        wait_for(w.listener_connected.is_set, what="listener")
        first = wait_for(lambda: _listener_pids(db), what="listener backend")
        with db.admin() as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (first,))
        wait_for(lambda: _listener_pids(db) and _listener_pids(db) != first, timeout=15, what="re-LISTEN")
        time.sleep(0.5)
        rid = c.submit("after reconnect")
        wait_for(lambda: c.get(rid)["state"] == "succeeded", timeout=10, what="NOTIFY pick-up after reconnect")


@pytest.mark.faults
def test_worker_survives_its_work_connections_being_killed(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    w = worker(db, keyring, backend="noop", poll_interval=0.3)
    with BackgroundWorker(w), client(db, keyring) as c:
        rid = c.submit("one")
        wait_for(lambda: c.get(rid)["state"] == "succeeded", what="first answer")
        with db.admin() as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                         " AND application_name LIKE 'pgreflect-%%' AND application_name NOT LIKE 'pgreflect-app%%'"
                         " AND application_name NOT LIKE 'pgreflect-wait%%'", (db.name,))
        rid2 = c.submit("two")
        wait_for(lambda: c.get(rid2)["state"] == "succeeded", timeout=20, what="answer after reconnect")
