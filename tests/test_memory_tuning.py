"""Self-tuning of memory retrieval: a random share of requests explores memory policies, every recall records
how far the nearest memory was, and reflect.tune_memory_v1 picks the cutoff and k that labels say work best
(recorded and reversible, like the confidence threshold)."""

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
from helpers import unit_vector

MEMORY = np.asarray(json.loads(unit_vector(4242)))


def _settings(db: Database, **values: object) -> None:
    with db.admin() as conn:
        for key, value in values.items():
            conn.execute("UPDATE reflect.settings SET value = %s WHERE key = %s", (json.dumps(value), key))


def _at_distance(d: float, seed: int) -> str:
    """A unit vector at cosine distance d from MEMORY."""
    u = np.random.default_rng(seed).normal(size=384)
    u -= u.dot(MEMORY) * MEMORY
    u /= np.linalg.norm(u)
    v = (1 - d) * MEMORY + np.sqrt(1 - (1 - d) ** 2) * u
    return "[" + ",".join(f"{x:.7f}" for x in v) + "]"


def _submit(db: Database, keyring: Keyring, n: int, params: dict | None = None) -> list[int]:
    with connect(db.dsn("app"), keyring=keyring) as app:
        return [app.execute(query("submit_via_view"), {
            "prompt": f"question {i}", "system_prompt": None, "params": json.dumps(params) if params else None,
            "idempotency_key": None, "caller": None, "model_version": "noop", "history": None}).fetchone()[0]
            for i in range(n)]


def _answer(db: Database, keyring: Keyring, embeddings: dict[int, str]) -> dict[int, int]:
    """Plays the worker: claim, recall with the given embedding, complete. Returns memories used per request."""
    used = {}
    with connect(db.dsn("worker"), keyring=keyring) as w:
        tokens = {r[0]: r[1] for r in w.execute(query("claim"), {"worker_id": "hand", "limit": len(embeddings),
                                                                 "lease_seconds": 600, "model_version_ids": None})}
        for rid, embedding in embeddings.items():
            used[rid] = len(w.execute(query("recall"), {"request_id": rid, "lease_token": tokens[rid], "model": "test",
                                                        "embedding": embedding, "k": None}).fetchall())
            w.execute(query("complete"), {"request_id": rid, "lease_token": tokens[rid], "answer": "a",
                                          "finish_reason": "stop", "prompt_tokens": 1, "token_logprobs": [-0.1],
                                          "prompt_eval_ms": 1.0, "generation_ms": 1.0, "signals": "{}"})
    return used


def _label(db: Database, keyring: Keyring, labels: dict[int, bool]) -> None:
    with connect(db.dsn("app"), keyring=keyring) as app:
        for rid, y in labels.items():
            app.execute(query("feedback"), {"request_id": rid, "is_correct": y, "rating": None,
                                            "correction": None if y else "the right answer", "source": "human"})


def _params(db: Database, rid: int) -> dict:
    return db.scalar("SELECT params FROM reflect.requests WHERE id = %s", (rid,))


def test_requests_that_leave_memory_to_pgreflect_explore_a_random_policy(db: Database, keyring: Keyring) -> None:
    _settings(db, memory_explore_share=1.0, memory_k_max=3, memory_explore_max_distance=0.6)
    explored = [_params(db, rid) for rid in _submit(db, keyring, 40)]
    assert all(p["memory_explore"] is True and p["memory_max_distance"] == 0.6 for p in explored)
    assert {p["memory_k"] for p in explored} == {0, 1, 2, 3}
    # A request that says anything about memory is never explored.
    for own in ({"memory": True}, {"memory_k": 2}, {"memory_max_distance": 0.2}, {"memory": False}):
        (rid,) = _submit(db, keyring, 1, own)
        assert "memory_explore" not in _params(db, rid)
    _settings(db, memory_explore_share=0.0)
    assert all("memory_explore" not in _params(db, rid) for rid in _submit(db, keyring, 20))


def test_recall_records_the_nearest_memory_even_when_it_is_not_used(db: Database, keyring: Keyring) -> None:
    (mem,) = _submit(db, keyring, 1, {"memory": False})
    _answer(db, keyring, {mem: "[" + ",".join(f"{x:.7f}" for x in MEMORY) + "]"})
    _label(db, keyring, {mem: False})  # a correction: a memory
    near, far, none_drawn = _submit(db, keyring, 3)
    with db.admin() as conn:  # no memory for this one: an explored policy with k = 0
        conn.execute("UPDATE reflect.requests SET params = params || '{\"memory_k\": 0, \"memory_explore\": true}' "
                     "WHERE id = %s", (none_drawn,))
    used = _answer(db, keyring, {near: _at_distance(0.1, 1), far: _at_distance(0.5, 2),
                                 none_drawn: _at_distance(0.1, 3)})
    assert used == {near: 1, far: 0, none_drawn: 0}
    with db.admin() as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT request_id, round(nearest_distance::numeric, 3)::float8, max_distance, k, explored, used "
            "FROM reflect.memory_lookups").fetchall()}
    assert rows[near] == (pytest.approx(0.1, abs=1e-3), 0.38, 3, False, 1)
    assert rows[far] == (pytest.approx(0.5, abs=1e-3), 0.38, 3, False, 0)
    assert rows[none_drawn] == (pytest.approx(0.1, abs=1e-3), 0.38, 0, True, 0)
    assert mem not in rows  # memory off: nothing looked up


def test_tuning_finds_the_cutoff_where_memories_stop_helping(db: Database, keyring: Keyring) -> None:
    """Synthetic truth: a memory within 0.3 makes an answer right 90% of the time, one farther away 10%,
    none 50%. From 800 explored labelled answers the tuner should move the cutoff from 0.38 to about 0.3,
    record it with its evidence, apply it to new requests, and undo it on revert."""
    (mem,) = _submit(db, keyring, 1, {"memory": False})
    _answer(db, keyring, {mem: "[" + ",".join(f"{x:.7f}" for x in MEMORY) + "]"})
    _label(db, keyring, {mem: False})
    _settings(db, memory_tuning_min_labels=100)
    rng = np.random.default_rng(7)
    ids = _submit(db, keyring, 800)
    with db.admin() as conn:  # the policies submit_v1 would draw at random, drawn here in turn (reproducible)
        conn.execute("UPDATE reflect.requests SET params = params || jsonb_build_object('memory_k', id %% 4, "
                     "'memory_max_distance', 0.6, 'memory_explore', true) WHERE id = ANY (%s)", (ids,))
    distances = dict(zip(ids, rng.uniform(0.0, 0.6, size=len(ids)), strict=True))
    used = _answer(db, keyring, {rid: _at_distance(d, i) for i, (rid, d) in enumerate(distances.items())})
    p = {rid: (0.9 if distances[rid] <= 0.3 else 0.1) if used[rid] else 0.5 for rid in ids}
    _label(db, keyring, {rid: bool(rng.uniform() < p[rid]) for rid in ids})

    tuned = subprocess.run([sys.executable, "-m", "pgreflect.cli", "improve", "tune", "--memory", "--model-version",
                            "noop"], env=db.env(keyring), capture_output=True, text=True, timeout=120)
    assert tuned.returncode == 0, tuned.stderr
    with db.admin() as conn:
        out = conn.execute("SELECT reflect.tune_memory_v1('noop')").fetchone()[0]  # again: nothing new to change
        changes = conn.execute("SELECT id, knob, old_value, new_value, reason, evidence FROM reflect.tuning_changes "
                               "ORDER BY id").fetchall()
    assert out["changed"] is False and 0.2 <= out["max_distance"] <= 0.4 and out["max_distance"] != 0.38
    assert tuned.stdout.strip() == f"noop: memory cutoff {out['max_distance']:.2f}, k {out['k']} (changed)"
    cutoff = [c for c in changes if c[1] == "memory_max_distance"]
    assert len(cutoff) == 1 and cutoff[0][2] == 0.38 and cutoff[0][3] == out["max_distance"]
    evidence = cutoff[0][5]
    assert evidence["labels"] == 800 and evidence["fit_labels"] + evidence["check_labels"] == 800
    assert evidence["chosen"]["fit_accuracy"] > evidence["in_force"]["fit_accuracy"]
    assert "labelled explored answers" in cutoff[0][4]
    # New requests that leave memory to pgreflect get the tuned policy; a request's own cutoff still wins.
    (rid,) = _submit(db, keyring, 1)
    assert _params(db, rid)["memory_max_distance"] == out["max_distance"]
    assert _params(db, rid)["memory_k"] == out["k"]
    (own,) = _submit(db, keyring, 1, {"memory_max_distance": 0.5})
    assert _params(db, own)["memory_max_distance"] == 0.5

    with db.admin() as conn:
        for change_id, *_ in changes:
            conn.execute(query("revert_tuning"), {"change_id": change_id})
    (rid,) = _submit(db, keyring, 1)
    assert (_params(db, rid)["memory_max_distance"], _params(db, rid)["memory_k"]) == (0.38, 3)


def test_tuning_memory_needs_enough_explored_labels(db: Database, keyring: Keyring) -> None:
    with db.admin() as conn, pytest.raises(psycopg.Error, match="labelled explored answers") as err:
        conn.execute("SELECT reflect.tune_memory_v1('noop')")
    assert err.value.sqlstate == "PR001"
    with db.admin() as conn, pytest.raises(psycopg.Error, match="unknown model version") as err:
        conn.execute("SELECT reflect.tune_memory_v1('nope')")
    assert err.value.sqlstate == "PR003"
