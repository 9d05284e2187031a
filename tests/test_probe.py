"""The hidden-state probe: fitted on labelled answers' states, stored per model version, applied by the database
to every new answer (the `probe` signal), a calibrator feature once active, replaced only by a better one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pgreflect.db import connect
from pgreflect.embeddings import to_pgvector
from pgreflect.errors import InvalidInput
from pgreflect.keys import Keyring
from pgreflect.meta import probe
from pgreflect.sql import query

from conftest import Database
from helpers import client

DIM = 24


def test_the_fit_matches_a_reference_logistic_regression() -> None:
    """Same objective as scikit-learn's L2 logistic regression (C * log-loss + |w|^2 / 2, intercept free) on
    standardised inputs; the returned raw-state weights give the same probabilities."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 10)) * rng.uniform(0.1, 5, size=10) + rng.normal(size=10)
    y = rng.uniform(size=300) < 1 / (1 + np.exp(-(x[:, 0] - x[:, 1])))
    ours = probe.fit_logistic(x, y, c=0.05)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    ref = LogisticRegression(C=0.05, tol=1e-10, max_iter=10_000).fit((x - mu) / sd, y)
    assert np.allclose(probe._sigmoid(ours.logits(x)), ref.predict_proba((x - mu) / sd)[:, 1], atol=1e-4)
    assert probe.auroc(np.array([0.1, 0.9, 0.4]), np.array([False, True, True])) == 1.0


def _states(rng: np.random.Generator, correct: np.ndarray) -> np.ndarray:
    """States whose first dimension carries the label (with noise), the rest noise at other scales."""
    x = rng.normal(size=(len(correct), DIM)) * 3.0
    x[:, 0] = np.where(correct, 1.0, -1.0) + rng.normal(scale=0.8, size=len(correct))
    return x


def _answered_with_states(db: Database, keyring: Keyring, states: np.ndarray, labels: np.ndarray | None,
                          tag: str) -> list[int]:
    """Requests answered as a worker would, each with its hidden state stored under its lease; labelled as
    ground truth when labels are given. Returns the request ids."""
    with client(db, keyring) as c:
        ids = [c.submit(f"probe question {tag}-{i}") for i in range(len(states))]
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        claimed = conn.execute(query("claim"), {"worker_id": "probe", "limit": 1000, "lease_seconds": 600,
                                                "model_version_ids": None}).fetchall()
        tokens = {r[0]: r[1] for r in claimed}
        for rid, s in zip(ids, states, strict=True):
            conn.execute(query("store_state"), {"request_id": rid, "lease_token": tokens[rid],
                                                "state": to_pgvector(s)})
            conn.execute(query("complete"), {
                "request_id": rid, "lease_token": tokens[rid], "answer": "a", "finish_reason": "stop",
                "prompt_tokens": 3, "token_logprobs": [-0.5], "prompt_eval_ms": 1.0, "generation_ms": 1.0,
                "signals": json.dumps({"p_true": 0.5})})
    if labels is not None:
        with connect(db.dsn("app"), keyring=keyring) as conn:
            for rid, y in zip(ids, labels, strict=True):
                conn.execute(query("feedback"), {"request_id": rid, "is_correct": bool(y), "rating": None,
                                                 "correction": None, "source": "ground_truth"})
    return ids


def test_a_probe_learns_a_known_direction_and_the_database_applies_it(db: Database, keyring: Keyring) -> None:
    rng = np.random.default_rng(5)
    labels = rng.uniform(size=300) < 0.5
    _answered_with_states(db, keyring, _states(rng, labels), labels, "train")
    with db.admin() as conn:
        fitted = probe.fit(conn, "tiny")
        assert fitted["active"] and fitted["n_train"] + fitted["n_heldout"] == 300
        assert fitted["heldout"]["auroc"] > 0.85  # the Bayes AUROC of this data is ~0.92
        weights = np.array(conn.execute(query("active_probe"), {"model_version": "tiny"}).fetchone()[1])
        # the weight sits on the informative dimension
        assert abs(weights[0]) > 5 * np.max(np.abs(weights[1:]))
        # every labelled answer got a probe signal, out of fold on the training side
        n_signals = conn.execute("SELECT count(*) FROM reflect.answer_signals WHERE name = 'probe'").fetchone()[0]
        assert n_signals == 300
        # the calibrator now learns from it
        cal = conn.execute(query("fit_calibrator"), {"model_version": "tiny"}).fetchone()[0]
        features, w = conn.execute("SELECT features, weights FROM reflect.calibrators WHERE id = %s",
                                   (cal,)).fetchone()
        assert "probe" in features and w[1 + features.index("probe")] > 0.5
        # analysts see how well it ranks wrong answers above right ones, beside the other signals
        n, auroc_wrong = conn.execute("SELECT n, auroc_wrong FROM reflect.signal_auroc "
                                      "WHERE model_version = 'tiny' AND signal = 'probe'").fetchone()
        assert n == 300 and auroc_wrong > 0.85
    # a new answer gets the signal from its state when it completes, and a calibrated confidence that follows it
    fresh = np.array([[3.0] + [0.0] * (DIM - 1), [-3.0] + [0.0] * (DIM - 1)])
    right, wrong = _answered_with_states(db, keyring, fresh, None, "new")
    with db.admin() as conn:
        rows = dict(conn.execute("""
            SELECT s.request_id, s.value FROM reflect.answer_signals s
            WHERE s.name = 'probe' AND s.request_id = ANY(%s)""", ([right, wrong],)).fetchall())
        conf = dict(conn.execute("SELECT request_id, confidence FROM reflect.answers WHERE request_id = ANY(%s)",
                                 ([right, wrong],)).fetchall())
    assert rows[right] > 0.9 and rows[wrong] < 0.1
    assert conf[right] > conf[wrong] + 0.3


def test_a_worse_probe_is_stored_but_not_activated(db: Database, keyring: Keyring) -> None:
    rng = np.random.default_rng(8)
    labels = rng.uniform(size=240) < 0.5
    ids = _answered_with_states(db, keyring, _states(rng, labels), labels, "first")
    with db.admin() as conn:
        first = probe.fit(conn, "tiny")
        assert first["active"]
        # The labels change to noise (say, relabelled by a careless reviewer): a refit cannot do better held out
        # than the active probe does on the same answers, so it is kept inactive.
        conn.execute("UPDATE reflect.feedback SET is_correct = NOT is_correct WHERE request_id = ANY(%s) "
                     "AND abs(hashtext(request_id::text)) %% 5 <> 0 AND request_id %% 2 = 0", (ids,))
        second = probe.fit(conn, "tiny")
        active = conn.execute(query("active_probe"), {"model_version": "tiny"}).fetchone()[0]
    assert not second["active"] and active == first["probe"]
    assert second["replaced"]["heldout_log_loss"] < second["heldout"]["log_loss"]


def test_too_few_labelled_states_is_a_clear_error(db: Database, keyring: Keyring) -> None:
    rng = np.random.default_rng(9)
    labels = np.array([True, False] * 5)
    _answered_with_states(db, keyring, _states(rng, labels), labels, "few")
    with db.admin() as conn, pytest.raises(InvalidInput, match="at least 20 of each"):
        probe.fit(conn, "tiny")


def test_unlabelled_states_are_purged_after_the_retention(db: Database, keyring: Keyring) -> None:
    rng = np.random.default_rng(12)
    labels = np.array([True, False, True, False])
    ids = _answered_with_states(db, keyring, _states(rng, labels), None, "old")
    with connect(db.dsn("app"), keyring=keyring) as conn:
        conn.execute(query("feedback"), {"request_id": ids[0], "is_correct": True, "rating": None,
                                         "correction": None, "source": "human"})
    with db.admin() as conn:
        conn.execute("UPDATE reflect.answer_states SET created_at = now() - interval '31 days' "
                     "WHERE request_id = ANY(%s)", (ids[:3],))
        assert conn.execute("SELECT reflect.purge_answer_states_v1()").fetchone()[0] == 2
        kept = {r for (r,) in conn.execute("SELECT request_id FROM reflect.answer_states WHERE request_id = ANY(%s)",
                                           (ids,))}
    assert kept == {ids[0], ids[3]}  # the labelled one, and the recent one (the schedule: test_lifecycle.py)
