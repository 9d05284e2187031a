from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pgreflect.client import Client
from pgreflect.db import connect
from pgreflect.keys import Keyring
from pgreflect.sql import query
from pgreflect.worker import Worker, WorkerConfig, WorkerStats

from conftest import Database

NOOP = "noop"  # the model version only the noop backend serves (registered in the template database)


def worker(db: Database, keyring: Keyring, **config: Any) -> Worker:
    config.setdefault("poll_interval", 0.2)
    config.setdefault("model_versions", [NOOP] if config.get("backend") == "noop" else ["tiny"])
    config.setdefault("n_threads", 2)
    # The tiny model's answers are a few tokens long; the tests of what P(True) feeds want it after every answer
    # (test_p_true_waits_for_long_answers tests the worker's default).
    config.setdefault("p_true_min_tokens", 0)
    return Worker(db.dsn("worker"), WorkerConfig(**config), keyring=keyring)


def drain(db: Database, keyring: Keyring, **config: Any) -> WorkerStats:
    """Runs a worker in this thread until no claimable work is left."""
    return worker(db, keyring, once=True, **config).run()


class BackgroundWorker:
    def __init__(self, w: Worker):
        self.worker = w
        self.stats: WorkerStats | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.stats = self.worker.run()

    def __enter__(self) -> BackgroundWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=60)


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def client(db: Database, keyring: Keyring) -> Client:
    return Client(db.dsn("app"), keyring=keyring)


GREEDY = {"temperature": 0}


def use_noop(db: Database) -> None:
    """Makes the noop version the active one, so requests that name no version go to the noop backend."""
    with db.admin() as conn:
        conn.execute("SELECT reflect.activate_model_version_v1(%s)", (NOOP,))


def spawn_worker(db: Database, keyring: Keyring, *args: str, log_path=None,  # type: ignore[no-untyped-def]
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "pgreflect.cli", "worker", *args],
                            env={**db.env(keyring), **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


SECOND_APP = "pgreflect_app_two"


def second_app(db: Database) -> str:
    with db.admin() as conn:
        conn.execute(query("ensure_login_role"), {"login": SECOND_APP, "group_role": "reflect_app"})
    return db.cluster.dsn(user=SECOND_APP, dbname=db.name)


def unit_vector(seed: int) -> str:
    v = np.random.default_rng(seed).normal(size=384)
    return "[" + ",".join(f"{x:.6f}" for x in v / np.linalg.norm(v)) + "]"


def answer_with_embedding(db: Database, keyring: Keyring, app_dsn: str, prompt: str, embedding: str) -> tuple:
    """Submits as an app, then plays the worker by hand: claim, recall (stores the embedding), evidence (what
    a re-answer would use), complete. Returns (request id, recalled memory ids); the evidence must agree."""
    with connect(app_dsn, keyring=keyring) as app:
        rid = app.execute(query("submit_via_view"), {"prompt": prompt, "system_prompt": None, "params": None,
                                                      "idempotency_key": None, "caller": None,
                                                      "model_version": "noop", "history": None}).fetchone()[0]
    with connect(db.dsn("worker"), keyring=keyring) as w:
        (row,) = w.execute(query("claim"), {"worker_id": "hand", "limit": 1, "lease_seconds": 60,
                                            "model_version_ids": None}).fetchall()
        recalled = [r[0] for r in w.execute(query("recall"), {"request_id": rid, "lease_token": row[1],
                                                              "model": "test", "embedding": embedding, "k": 5})]
        evidence = [r[0] for r in w.execute(query("evidence"), {"request_id": rid, "lease_token": row[1], "k": 5})]
        assert evidence == recalled
        w.execute(query("complete"), {"request_id": rid, "lease_token": row[1], "answer": f"answer to {prompt}",
                                      "finish_reason": "stop", "prompt_tokens": 1, "token_logprobs": [-0.1],
                                      "prompt_eval_ms": 1.0, "generation_ms": 1.0, "signals": "{}"})
    return rid, recalled


def kind_signals(kinds: tuple[str, ...], i: int) -> dict[str, float]:
    """The worker's kind-of-question signals for the i-th answer of a synthetic batch (none without kinds)."""
    if not kinds:
        return {}
    return {f"kind_{k}": float(kinds[i % len(kinds)] == k) for k in ("choice", "number", "long")}


def synthetic_labelled_answers(db: Database, keyring: Keyring, n: int, seed: int, slope: float = 3.0,
                                training_side_only: bool = False, shift: float = 0.0,
                                kinds: tuple[str, ...] = ()) -> np.ndarray:
    """n answers whose only informative signal is the log-prob: P(correct) = sigmoid(slope (x + 1.5) + shift).
    p_true is noise. training_side_only: label only the answers the calibrator fit trains on (request id
    hash not 0 mod 5), leaving its held-out answers as they were. kinds: the kinds of question the answers
    report in turn (choice, number, long or short), none when empty. Returns the true probabilities."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 0, size=n)
    truth = 1 / (1 + np.exp(-(slope * (x + 1.5) + shift)))
    labels = rng.uniform(size=n) < truth
    with client(db, keyring) as c:
        ids = [c.submit(f"synthetic question {seed}-{i}") for i in range(n)]
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        claimed = conn.execute(query("claim"), {"worker_id": "synthetic", "limit": 1000, "lease_seconds": 600,
                                                "model_version_ids": None}).fetchall()
        tokens = {r[0]: r[1] for r in claimed}
        for i, (rid, xi, noise) in enumerate(zip(ids, x, rng.uniform(size=n), strict=True)):
            conn.execute(query("complete"), {
                "request_id": rid, "lease_token": tokens[rid], "answer": "a", "finish_reason": "stop",
                "prompt_tokens": 3, "token_logprobs": [float(xi)], "prompt_eval_ms": 1.0, "generation_ms": 1.0,
                "signals": json.dumps({"p_true": float(noise), "rule_format": 0.0, **kind_signals(kinds, i)})})
    with db.admin() as conn:
        heldout = {r for (r,) in conn.execute(
            "SELECT id FROM unnest(%s::bigint[]) id WHERE abs(hashtext(id::text)) %% 5 = 0", (ids,)).fetchall()}
    with connect(db.dsn("app"), keyring=keyring) as conn:
        for rid, y in zip(ids, labels, strict=True):
            if training_side_only and rid in heldout:
                continue
            conn.execute(query("feedback"), {"request_id": rid, "is_correct": bool(y), "rating": None,
                                             "correction": None, "source": "ground_truth"})
    return truth
