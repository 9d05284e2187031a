"""Self-tuning: the confidence threshold per model version is chosen from labels (fitted on the older ones,
checked on the newer ones), recorded with its evidence, applied to new requests that set none, and reverted."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import psycopg
import pytest

from pgreflect.db import connect
from pgreflect.keys import Keyring
from pgreflect.sql import query

from conftest import Database
from helpers import NOOP, use_noop


def _labelled_answers(db: Database, keyring: Keyring, n: int = 150) -> list[tuple[float, bool]]:
    """n answers of the noop version with mean log-probabilities spread over [-3, 0] in random order; right when
    above -1.5,
    with every 10th label flipped (noise). Returns (confidence, right) per answer."""
    use_noop(db)
    with connect(db.dsn("app"), keyring=keyring) as app, connect(db.dsn("worker"), keyring=keyring) as w:
        ids = [app.execute(query("submit_via_view"), {"prompt": f"q{i}", "system_prompt": None,
                                                      "params": json.dumps({"memory": False}), "idempotency_key": None,
                                                      "caller": None, "model_version": NOOP,
                                                      "history": None}).fetchone()[0]
               for i in range(n)]
        rows = w.execute(query("claim"), {"worker_id": "hand", "limit": n, "lease_seconds": 60,
                                          "model_version_ids": None}).fetchall()
        order = np.random.default_rng(0).permutation(n)  # confidence unrelated to age (the split is by age)
        lps = {rid: -3 + 3 * int(order[i]) / (n - 1) for i, rid in enumerate(ids)}
        for row in rows:
            w.execute(query("complete"), {"request_id": row[0], "lease_token": row[1], "answer": "a",
                                          "finish_reason": "stop", "prompt_tokens": 1,
                                          "token_logprobs": [lps[row[0]]] * 3, "prompt_eval_ms": 1.0,
                                          "generation_ms": 1.0, "signals": "{}"})
        out = []
        for i, rid in enumerate(ids):
            right = (lps[rid] > -1.5) != (i % 10 == 0)
            app.execute(query("feedback"), {"request_id": rid, "is_correct": right, "rating": None,
                                            "correction": None, "source": "human"})
            conf = app.execute("SELECT confidence FROM reflect.app_requests WHERE id = %s", (rid,)).fetchone()[0]
            out.append((float(conf), right))
    return out


def _submit(db: Database, keyring: Keyring, params: dict) -> dict:
    with connect(db.dsn("app"), keyring=keyring) as app:
        rid = app.execute(query("submit_via_view"), {"prompt": "new", "system_prompt": None,
                                                     "params": json.dumps(params), "idempotency_key": None,
                                                     "caller": None, "model_version": None,
                                                     "history": None}).fetchone()[0]
        return app.execute("SELECT params FROM reflect.app_requests WHERE id = %s", (rid,)).fetchone()[0]


def test_threshold_is_tuned_from_labels_recorded_applied_and_reverted(db: Database, keyring: Keyring) -> None:
    answers = _labelled_answers(db, keyring)
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '0.9' WHERE key = 'tuning_target_accuracy'")
        threshold = conn.execute(query("tune_threshold"), {"model_version": NOOP, "target": None}).fetchone()[0]
        (change,) = conn.execute(query("tuning_history")).fetchall()
    # The threshold lets through answers that are right at least 90% of the time on the labels that chose it.
    passed = [right for conf, right in answers if conf >= threshold]
    assert threshold != 0.5 and len(passed) >= 10 and sum(passed) / len(passed) >= 0.85
    change_id, version, knob, old, new, reason, evidence, _by, _at, reverted, in_force = change
    assert (version, knob, old, new, reverted, in_force) == (NOOP, "confidence_threshold", 0.5, threshold, None, True)
    assert evidence["labels"] == 150 and evidence["check_labels"] == 45 and evidence["expected_accuracy"] >= 0.8
    assert "accuracy" in reason
    # New requests to that version get it; a request's own threshold wins.
    assert _submit(db, keyring, {})["confidence_threshold"] == pytest.approx(threshold)
    assert _submit(db, keyring, {"confidence_threshold": 0.2})["confidence_threshold"] == 0.2
    with db.admin() as conn:
        assert conn.execute(query("revert_tuning"), {"change_id": change_id}).fetchone()[0] == 0.5
        with pytest.raises(psycopg.Error, match="no tuning change"):
            conn.execute(query("revert_tuning"), {"change_id": change_id})
    assert _submit(db, keyring, {})["confidence_threshold"] == 0.5


def test_tuning_refuses_without_enough_labels_or_a_reachable_target(db: Database, keyring: Keyring) -> None:
    _labelled_answers(db, keyring, n=40)
    with db.admin() as conn, pytest.raises(psycopg.Error, match="40 labelled answers; tuning needs 100"):
        conn.execute(query("tune_threshold"), {"model_version": NOOP, "target": None})
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '20' WHERE key = 'tuning_min_labels'")
        conn.execute("UPDATE reflect.settings SET value = '0.8' WHERE key = 'tuning_target_accuracy'")
        assert conn.execute("SELECT reflect.tune_when_ready_v1()").fetchone()[0] == 1  # the scheduled path
        assert conn.execute("SELECT reflect.tune_when_ready_v1()").fetchone()[0] == 0  # no new labels since
    with connect(db.dsn("app"), keyring=keyring) as app:  # every answer relabelled wrong
        for (rid,) in app.execute("SELECT id FROM reflect.app_requests").fetchall():
            app.execute(query("feedback"), {"request_id": rid, "is_correct": False, "rating": None,
                                            "correction": None, "source": "human"})
    with db.admin() as conn:
        with pytest.raises(psycopg.Error, match=r"no confidence threshold reaches 0\.8 accuracy"):
            conn.execute(query("tune_threshold"), {"model_version": NOOP, "target": None})
        assert conn.execute("SELECT reflect.tune_when_ready_v1()").fetchone()[0] == 0  # a NOTICE, no change


def test_tune_status_and_revert_from_the_cli(db: Database, keyring: Keyring) -> None:
    _labelled_answers(db, keyring)
    env = db.env(keyring)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pgreflect.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    tuned = cli("improve", "tune", "--target", "0.85")  # the active version (noop here)
    assert tuned.returncode == 0, tuned.stderr
    assert tuned.stdout.startswith(f"{NOOP}: confidence threshold ")
    status = cli("improve", "status")
    assert "tuning change 1 of noop: confidence_threshold 0.5 ->" in status.stdout and "(in force)" in status.stdout
    reverted = cli("improve", "revert-tuning", "1")
    assert reverted.returncode == 0 and "value in force is 0.5000" in reverted.stdout
    again = cli("improve", "revert-tuning", "1")
    assert again.returncode != 0 and "no tuning change 1 in force" in again.stderr
