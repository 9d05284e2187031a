"""State machine: retries with backoff, final failure, expired leases (pg_cron job and worker backstop),
heartbeats, graceful shutdown."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from pgreflect.db import connect
from pgreflect.errors import InvalidInput, StaleLease, translate
from pgreflect.keys import Keyring
from pgreflect.migrate import migrate
from pgreflect.sql import query

from conftest import CRON_DB, Database
from helpers import BackgroundWorker, client, drain, use_noop, wait_for, worker


def _claim(conn: psycopg.Connection, lease: int = 60) -> list[tuple]:
    return conn.execute(query("claim"), {"worker_id": "w-test", "limit": 10, "lease_seconds": lease,
                                         "model_version_ids": None}).fetchall()


def test_failed_attempts_retry_with_backoff_then_fail_with_reason(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        rid = c.submit("hello")
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        for attempt in (1, 2):
            (row,) = _claim(conn)
            assert row[2] == attempt
            state = conn.execute(query("fail"), {"request_id": rid, "lease_token": row[1],
                                                 "error": "model exploded", "retryable": True}).fetchone()[0]
            assert state == "queued"
            delay = db.scalar("SELECT extract(epoch FROM run_after - now()) FROM reflect.requests WHERE id = %s",
                              (rid,))
            assert 5 * 2 ** (attempt - 1) - 1 < delay <= 5 * 2 ** (attempt - 1) + 1
            assert _claim(conn) == []  # held back by the backoff
            db.scalar("UPDATE reflect.requests SET run_after = now() WHERE id = %s RETURNING id", (rid,))
        (row,) = _claim(conn)
        assert row[2] == 3
        state = conn.execute(query("fail"), {"request_id": rid, "lease_token": row[1],
                                             "error": "model exploded", "retryable": True}).fetchone()[0]
    assert state == "failed"
    with client(db, keyring) as c:
        final = c.get(rid)
    assert final["state"] == "failed"
    assert final["last_error"] == "gave up after 3 attempts: model exploded"
    events = [r[0] for r in db.admin().execute(
        "SELECT event FROM reflect.request_events WHERE request_id = %s ORDER BY id", (rid,))]
    assert events == ["submitted", "claimed", "retry", "claimed", "retry", "claimed", "failed"]


def test_non_retryable_failure_is_final_at_once(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        rid = c.submit("word " * 6000, params={"max_tokens": 8})  # longer than the tiny model's 4096 context
    stats = drain(db, keyring)
    assert stats.failed == 1
    with client(db, keyring) as c:
        row = c.get(rid)
    assert row["state"] == "failed" and row["attempts"] == 1
    assert "this model version's context is 4096" in row["last_error"]


def test_reaper_requeues_expired_leases_and_fails_exhausted_ones(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        a = c.submit("a")
        b = c.submit("b")
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        assert len(_claim(conn, lease=1)) == 2
        db.scalar("UPDATE reflect.requests SET attempts = max_attempts WHERE id = %s RETURNING id", (b,))
        assert conn.execute(query("reap_expired")).fetchone()[0] == 0  # not expired yet
        time.sleep(1.2)
        assert conn.execute(query("reap_expired")).fetchone()[0] == 2
    with db.admin() as conn:
        rows = dict(conn.execute("SELECT id, state FROM reflect.requests").fetchall())
        assert rows == {a: "queued", b: "failed"}
        err = conn.execute("SELECT last_error FROM reflect.requests WHERE id = %s", (b,)).fetchone()[0]
    assert err == "gave up after 3 attempts: lease of worker w-test expired"


def test_heartbeat_keeps_a_long_generation_leased(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    with client(db, keyring) as c:
        rid = c.submit("slow")
    # Lease 2 s, generation 5 s, the reaper running every 0.2 s (as pg_cron would, only faster): without
    # heartbeats the lease would expire mid-generation and the request would be re-queued.
    slow = worker(db, keyring, backend="noop", noop_delay_s=5, lease_seconds=2, heartbeat_interval=0.25)
    stop = threading.Event()
    reaped: list[int] = []

    def reap() -> None:
        with db.admin() as conn:
            while not stop.wait(0.2):
                reaped.append(conn.execute(query("reap_expired")).fetchone()[0])

    reaper = threading.Thread(target=reap)
    reaper.start()
    try:
        with BackgroundWorker(slow):
            wait_for(lambda: db.scalar("SELECT state FROM reflect.requests WHERE id = %s", (rid,)) == "succeeded",
                     timeout=30, what="completion")
    finally:
        stop.set()
        reaper.join()
    assert len(reaped) > 10 and sum(reaped) == 0
    assert db.scalar("SELECT attempts FROM reflect.requests WHERE id = %s", (rid,)) == 1
    assert db.scalar("SELECT worker_id FROM reflect.answers WHERE request_id = %s", (rid,)) == slow.config.worker_id


def test_graceful_shutdown_releases_unfinished_work(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    with client(db, keyring) as c:
        rid = c.submit("slow")
    w = worker(db, keyring, backend="noop", noop_delay_s=30, shutdown_timeout=0.5)
    with BackgroundWorker(w) as bg:
        wait_for(lambda: db.scalar("SELECT state FROM reflect.requests WHERE id = %s", (rid,)) == "running",
                 what="claim")
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 10
    assert bg.stats is not None and bg.stats.released == 1
    with db.admin() as conn:
        state, attempts = conn.execute("SELECT state, attempts FROM reflect.requests WHERE id = %s", (rid,)).fetchone()
    assert (state, attempts) == ("queued", 0)
    assert drain(db, keyring, backend="noop").succeeded == 1


def test_graceful_shutdown_lets_short_work_finish(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    with client(db, keyring) as c:
        rid = c.submit("quick enough")
    w = worker(db, keyring, backend="noop", noop_delay_s=1.0, shutdown_timeout=10)
    with BackgroundWorker(w):
        wait_for(lambda: db.scalar("SELECT state FROM reflect.requests WHERE id = %s", (rid,)) == "running",
                 what="claim")
    assert db.scalar("SELECT state FROM reflect.requests WHERE id = %s", (rid,)) == "succeeded"


@pytest.mark.slow
def test_pg_cron_job_requeues_expired_leases(cluster, keyring: Keyring, template_db: str) -> None:
    """The real pg_cron schedule, in the cluster's cron database (waits for the next minute tick)."""
    from pgreflect.db import LOGIN_ROLES

    from conftest import register

    cluster.ensure_database(CRON_DB)
    dsn = cluster.dsn(dbname=CRON_DB)
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for login, group in LOGIN_ROLES.values():
            conn.execute(query("ensure_login_role"), {"login": login, "group_role": group})
        jobs = conn.execute("SELECT jobname, schedule, command, username FROM cron.job ORDER BY jobname").fetchall()
        assert jobs == [
            ("pgreflect-canary-step", "*/5 * * * *", "SELECT reflect.canary_step_v1()", "postgres"),
            ("pgreflect-finetune-when-ready", "*/15 * * * *", "SELECT reflect.finetune_when_ready_v1()", "postgres"),
            ("pgreflect-purge-answer-states", "41 3 * * *", "SELECT reflect.purge_answer_states_v1()", "postgres"),
            ("pgreflect-reap-expired-leases", "* * * * *", "SELECT reflect.reap_expired_v1()", "postgres"),
            ("pgreflect-refit-calibrators", "*/5 * * * *", "SELECT reflect.refit_calibrators_v1()", "postgres"),
            ("pgreflect-tune-thresholds", "17 * * * *", "SELECT reflect.tune_when_ready_v1()", "postgres")]
        path = conn.execute("SELECT gguf_path FROM reflect.model_versions LIMIT 1").fetchone()
        if path is None:
            from tiny_model import smollm2_path

            register(conn, "smollm2", smollm2_path(), activate=True)
    with connect(cluster.dsn(user="pgreflect_app", dbname=CRON_DB), keyring=keyring) as conn:
        rid = conn.execute("SELECT reflect.submit_v1('cron test')").fetchone()[0]
    with connect(cluster.dsn(user="pgreflect_worker", dbname=CRON_DB), keyring=keyring) as conn:
        assert any(r[0] == rid for r in _claim(conn, lease=1))
    with psycopg.connect(dsn, autocommit=True) as conn:
        wait_for(lambda: conn.execute("SELECT state FROM reflect.requests WHERE id = %s", (rid,)).fetchone()[0]
                 == "queued", timeout=75, interval=1, what="pg_cron to re-queue the request")
        ok = conn.execute("SELECT count(*) FROM cron.job_run_details WHERE command LIKE '%reap_expired_v1%'"
                          " AND status = 'succeeded'").fetchone()[0]
    assert ok >= 1


def test_a_streamed_request_publishes_its_text_so_far_under_its_lease(db: Database, keyring: Keyring) -> None:
    """params.stream: the worker's text so far, encrypted, readable by the app in app_requests.partial_answer
    with NOTIFY request_progress (the id only); refused under a stale lease, for a request that did not ask, and
    for one whose low-confidence action could still withhold or replace the text; gone when the attempt ends."""
    with client(db, keyring) as c:
        streamed = c.submit("tell me a story", params={"stream": True})
        retried = c.submit("tell me another", params={"stream": True, "low_confidence": "flag"})
        withheld = c.submit("tell me a story", params={"stream": True, "low_confidence": "abstain"})
        plain = c.submit("tell me a story")
    with connect(db.dsn("worker"), keyring=keyring) as w, connect(db.dsn("app"), keyring=keyring) as app:
        app.execute("LISTEN request_progress")
        leases = {r[0]: r[1] for r in _claim(w)}

        def publish(rid: int, text: str, token: object = None) -> None:
            try:
                w.execute(query("report_partial"), {"request_id": rid, "lease_token": token or leases[rid],
                                                    "text": text})
            except psycopg.Error as exc:
                raise translate(exc) from exc

        publish(streamed, "Once upon")
        publish(streamed, "Once upon a time")
        publish(retried, "There was")
        assert [n.payload for n in app.notifies(timeout=5, stop_after=3)] == [str(streamed)] * 2 + [str(retried)]
        assert app.execute(query("app_request_progress"), {"id": streamed}).fetchone() == \
            ("running", "Once upon a time")
        assert b"Once upon" not in bytes(db.scalar(
            "SELECT text_enc FROM reflect.partial_answers WHERE request_id = %s", (streamed,)))
        with pytest.raises(StaleLease):
            publish(streamed, "Once upon a time there", "00000000-0000-0000-0000-000000000000")
        for rid in (withheld, plain):
            with pytest.raises(InvalidInput, match="publishes no partial answer"):
                publish(rid, "Once")

        w.execute(query("complete"), {
            "request_id": streamed, "lease_token": leases[streamed], "answer": "Once upon a time.",
            "finish_reason": "stop", "prompt_tokens": 3, "token_logprobs": [-0.1], "prompt_eval_ms": 1.0,
            "generation_ms": 1.0, "signals": json.dumps({})})
        assert w.execute(query("fail"), {"request_id": retried, "lease_token": leases[retried],
                                         "error": "model exploded", "retryable": True}).fetchone()[0] == "queued"
        assert app.execute(query("app_request_progress"), {"id": streamed}).fetchone() == ("succeeded", None)
        assert app.execute(query("app_request_progress"), {"id": retried}).fetchone() == ("queued", None)
    assert db.scalar("SELECT count(*) FROM reflect.partial_answers") == 0
