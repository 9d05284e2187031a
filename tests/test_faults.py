"""Fault injection: every failure found so far, so none can come back. `pytest -m faults` runs the set
(with the SIGKILL mid-generation and killed-listener tests in test_resilience.py).

- a poison row (text that does not decrypt with its key) between good rows
- a wrong key loaded under a known key id, by an app or by SET
- two apps sharing the default key id with different keys
- PostgreSQL stopped with -m immediate and restarted under load
- a worker whose report fails while the database is away
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import psycopg
import pytest

from pgreflect.cluster import pg_bin
from pgreflect.db import connect
from pgreflect.errors import MissingKey
from pgreflect.keys import Keyring, new_key

from conftest import Database
from helpers import BackgroundWorker, client, drain, spawn_worker, use_noop, wait_for, worker

pytestmark = pytest.mark.faults


def _poison(db: Database, keyring: Keyring) -> int:
    """A queued request under the real key id whose ciphertext was made with another key: what a wrong key
    loaded before key verifiers existed (or corrupt storage) leaves behind."""
    with db.admin() as conn:
        return conn.execute("""
            INSERT INTO reflect.requests (key_id, prompt_enc, params, submitted_by, model_version_id, max_attempts)
            SELECT %s, public.pgp_sym_encrypt('poison', %s), reflect._normalize_params('{}'), 'pgreflect_app',
                   (SELECT id FROM reflect.model_versions WHERE name = 'noop'), 3
            RETURNING id""", (keyring.current, new_key())).fetchone()[0]


def test_a_poison_row_between_good_rows_fails_alone(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    with client(db, keyring) as c:
        before = c.submit("good one")
        poison = _poison(db, keyring)
        after = c.submit("good two")
    stats = drain(db, keyring, backend="noop")
    assert stats.succeeded == 2
    with db.admin() as conn:
        rows = dict(conn.execute("SELECT id, state FROM reflect.requests").fetchall())
        error = conn.execute("SELECT last_error FROM reflect.requests WHERE id = %s", (poison,)).fetchone()[0]
        events = [r[0] for r in conn.execute(
            "SELECT event FROM reflect.request_events WHERE request_id = %s ORDER BY id", (poison,))]
    assert rows == {before: "succeeded", poison: "failed", after: "succeeded"}
    assert "cannot decrypt this request" in error and keyring.current in error
    assert events == ["submitted", "claimed", "undecryptable"]
    for key in keyring.keys.values():
        assert key not in error


def test_a_poison_follow_up_fails_alone(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '1' WHERE key = 'agreement_fraction'")
    with client(db, keyring) as c:
        ids = [c.submit(f"q{i}") for i in range(3)]
    drain(db, keyring, backend="noop", followups=False)
    with db.admin() as conn:  # the middle answer's ciphertext is replaced by one made with another key
        conn.execute("UPDATE reflect.answers SET answer_enc = public.pgp_sym_encrypt('x', %s) WHERE request_id = %s",
                     (new_key(), ids[1]))
    drain(db, keyring, backend="noop")
    with db.admin() as conn:
        states = dict(conn.execute("SELECT request_id, state FROM reflect.followups").fetchall())
    assert states == {ids[0]: "succeeded", ids[1]: "failed", ids[2]: "succeeded"}


def test_a_wrong_key_under_a_known_id_is_refused_when_loaded(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        c.submit("registers the real key's verifier")
    wrong = Keyring(current=keyring.current, keys={keyring.current: new_key()})
    with pytest.raises(MissingKey, match="wrong key for key id"):
        connect(db.dsn("app"), keyring=wrong)
    # Bypassing use_key_v1 with SET does not get a wrong key used either.
    with psycopg.connect(db.dsn("app"), autocommit=True) as conn:
        conn.execute(f"SET reflect.key_{keyring.current} = '{new_key()}'")
        conn.execute(f"SET reflect.current_key_id = '{keyring.current}'")
        with pytest.raises(psycopg.Error, match="not the one registered"):
            conn.execute("INSERT INTO reflect.app_requests (prompt) VALUES ('smuggled')")
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 1


def test_two_apps_with_different_keys_under_the_default_key_id(db: Database) -> None:
    first = Keyring(current="env", keys={"env": new_key()})
    second = Keyring(current="env", keys={"env": new_key()})
    with client(db, first) as c:
        c.submit("first app")
    with pytest.raises(MissingKey, match="another key is registered"):
        client(db, second)
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 1


def test_rows_from_before_verifiers_accept_only_a_key_that_reads_them(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        c.submit("old row")
    with db.admin() as conn:  # as a database upgraded from 0002 has it: rows, no verifier
        conn.execute("DELETE FROM reflect.key_verifiers")
    with pytest.raises(MissingKey, match="does not decrypt the rows already stored"):
        connect(db.dsn("app"), keyring=Keyring(current=keyring.current, keys={keyring.current: new_key()}))
    connect(db.dsn("app"), keyring=keyring).close()
    assert db.scalar("SELECT count(*) FROM reflect.key_verifiers") == 1


def test_immediate_postgres_restart_under_load_loses_and_duplicates_nothing(db: Database, keyring: Keyring,
                                                                           tmp_path) -> None:
    use_noop(db)
    with db.admin() as conn:  # the test cluster runs with synchronous_commit off; a real one does not
        conn.execute(f'ALTER DATABASE "{db.name}" SET synchronous_commit = on')
    n = 300
    procs = [spawn_worker(db, keyring, "--backend", "noop", "--concurrency", "2", "--poll-interval", "0.3",
                          "--lease-seconds", "5", "--reap-interval", "1", "--noop-delay", "0.01",
                          "--worker-id", f"r{i}", log_path=tmp_path / f"r{i}.log") for i in range(2)]
    submitted: list[int] = []

    def submit() -> None:
        i = 0
        while i < n:
            try:
                with client(db, keyring) as c:
                    while i < n:
                        submitted.append(c.submit(f"load {i}", idempotency_key=f"load-{i}"))
                        i += 1
            except psycopg.OperationalError:
                time.sleep(0.3)  # the server is restarting: reconnect and resubmit (idempotent)

    try:
        t = threading.Thread(target=submit)
        t.start()
        wait_for(lambda: db.scalar("SELECT count(*) FROM reflect.answers") >= 50, timeout=60, what="load")
        data_dir = str(db.cluster.data_dir)
        subprocess.run(["runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "-D", data_dir, "-m", "immediate",
                        "-w", "stop"], check=True, capture_output=True)
        time.sleep(1)
        db.cluster.start()
        t.join(timeout=120)
        assert not t.is_alive(), f"the submitter is stuck after {len(submitted)} requests"
        wait_for(lambda: db.scalar("SELECT count(*) FROM reflect.requests WHERE state = 'succeeded'") == n,
                 timeout=120, interval=0.5,
                 what=f"every request answered after the restart ({len(submitted)} submitted)")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
    with db.admin() as conn:
        total, distinct_keys, answers = conn.execute("""
            SELECT count(*), count(DISTINCT idempotency_key), (SELECT count(*) FROM reflect.answers)
            FROM reflect.requests""").fetchone()
    assert (total, distinct_keys, answers) == (n, n, n)


def test_a_report_that_fails_while_the_database_is_away_is_sent_again(db: Database, keyring: Keyring,
                                                                      monkeypatch) -> None:
    use_noop(db)
    w = worker(db, keyring, backend="noop")
    real_finish = w.answerer._finish
    failures = {"left": 2}

    def flaky_finish(job, name, params):  # type: ignore[no-untyped-def]
        if name == "complete" and failures["left"]:
            failures["left"] -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real_finish(job, name, params)

    monkeypatch.setattr(w.answerer, "_finish", flaky_finish)
    with client(db, keyring) as c:
        rid = c.submit("answer me once")
        t0 = time.monotonic()
        with BackgroundWorker(w):
            wait_for(lambda: c.get(rid)["state"] == "succeeded", timeout=20, what="the re-sent report")
        # Re-sent within seconds, not after the 60 s lease expired; one attempt, one answer.
        assert time.monotonic() - t0 < 15
    assert failures["left"] == 0
    assert db.scalar("SELECT attempts FROM reflect.requests WHERE id = %s", (rid,)) == 1
    assert db.scalar("SELECT count(*) FROM reflect.request_events WHERE event = 'lease_expired'") == 0


def test_a_refused_report_gives_the_request_back_at_once(db: Database, keyring: Keyring, monkeypatch) -> None:
    use_noop(db)
    w = worker(db, keyring, backend="noop")
    real_finish = w.answerer._finish

    def refusing_finish(job, name, params):  # type: ignore[no-untyped-def]
        if name == "complete":
            return real_finish(job, name, {**params, "finish_reason": "exploded"})  # the database refuses it
        return real_finish(job, name, params)

    monkeypatch.setattr(w.answerer, "_finish", refusing_finish)
    with client(db, keyring) as c:
        rid = c.submit("refused")
    w.config.once = True
    w.run()
    with db.admin() as conn:
        state, error = conn.execute("SELECT state, last_error FROM reflect.requests WHERE id = %s",
                                    (rid,)).fetchone()
    assert state == "queued" and "report was refused" in error and "finish reason" in error

