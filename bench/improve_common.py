"""What both improvement benchmarks share: a scratch cluster with the default model, one in-process worker
(serving and training), asking through the public app path, running `improve run` to its decision, and the
report's gate and cost tables."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from pgreflect.client import Client
from pgreflect.db import connect
from pgreflect.improve import retention
from pgreflect.models import DEFAULT_MODEL, packaged_path, verified_sha256
from pgreflect.sql import query
from pgreflect.worker import Worker, WorkerConfig

from bench_cluster import keyring, no_followups, pgreflect_database, register, start_cluster


def bootstrap(values: list[float], seed: int = 0, n: int = 2000) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), size=(n, len(a)))].mean(axis=1)
    return float(a.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def fmt(ci: tuple[float, float, float]) -> str:
    return f"{ci[0]:.2f} [{ci[1]:.2f}, {ci[2]:.2f}]"


class ImproveBench:
    """A scratch cluster, the default model registered and active, the retention set loaded, `settings`
    applied, and a worker (request slots + training lane) in a thread. Close it to stop everything."""

    def __init__(self, settings: dict[str, Any], retention_size: int) -> None:
        os.environ.setdefault("PGREFLECT_IMPROVE_DIR", str(Path.home() / ".cache" / "pgreflect-bench-improve"))
        self.started = time.time()
        model = packaged_path(DEFAULT_MODEL)
        self.cluster = start_cluster()
        try:
            self.dsn = pgreflect_database(self.cluster)
            register(self.dsn, DEFAULT_MODEL, str(model), verified_sha256(model))
            no_followups(self.dsn)
            self.ring = keyring()
            self.app_dsn = self.cluster.dsn(user="pgreflect_app")
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for key, value in {"gate_retention_size": retention_size, **settings}.items():
                    conn.execute("UPDATE reflect.settings SET value = %s WHERE key = %s", (json.dumps(value), key))
            retention.load(self.dsn, retention_size)
            connect(self.dsn, keyring=self.ring).close()  # registers the key's verifier
            self.worker = Worker(self.cluster.dsn(user="pgreflect_worker"),
                                 WorkerConfig(poll_interval=0.5, train="on", model_refresh_s=5), keyring=self.ring)
            self.thread = threading.Thread(target=self.worker.run, daemon=True)
            self.thread.start()
        except BaseException:
            self.cluster.destroy()
            raise

    def close(self) -> None:
        try:
            self.worker.request_stop()
            self.thread.join(timeout=120)
        finally:
            self.cluster.destroy()

    def ask(self, prompts: list[str], params: dict[str, Any], version: str | None,
            system_prompt: str | None = None) -> list[dict[str, Any]]:
        """Submits every prompt, then waits for each; returns the app's view of each request."""
        with Client(self.app_dsn, keyring=self.ring) as c:
            ids = [c.submit(p, system_prompt=system_prompt, params=params, model_version=version) for p in prompts]
            rows = []
            for rid in ids:
                c.wait(rid, timeout=3600)
                rows.append(c.get(rid))
            return rows

    def feedback(self, request_id: int, is_correct: bool, correction: str | None) -> None:
        with Client(self.app_dsn, keyring=self.ring) as c:
            c.conn.execute(query("feedback"), {"request_id": request_id, "is_correct": is_correct, "rating": None,
                                               "correction": correction, "source": "human"})

    def improve_run(self) -> tuple[tuple, str, dict]:
        """`improve run` for the app's history; waits for the gate's decision. Returns (decision row,
        candidate name, training metrics)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            job = conn.execute(query("request_finetune"), {"owner": "pgreflect_app", "model_version": DEFAULT_MODEL}
                               ).fetchone()[0]
            decision = None
            while decision is None:
                time.sleep(5)
                state, result, error = conn.execute(
                    "SELECT state::text, result, last_error FROM reflect.jobs WHERE id = %s", (job,)).fetchone()
                if state == "failed":
                    raise SystemExit(f"fine-tune failed: {error}")
                if result and result.get("gate_job_id"):
                    decision = conn.execute(query("gate_decision"), {"job_id": result["gate_job_id"]}).fetchone()
            candidate, training = conn.execute("SELECT name, training_metrics FROM reflect.model_versions "
                                               "WHERE finetune_job_id = %s", (job,)).fetchone()
        return decision, candidate, training


def gate_lines(decision: tuple) -> list[str]:
    _id, _cand, _parent, verdict, reason, numbers, rule, _at = decision
    lines = [
        f"Decision: **{verdict}** ({reason}).",
        "",
        "| part | n | parent | candidate | paired difference | one-sided 95% bounds |",
        "|---|---|---|---|---|---|",
    ]
    for part in ("corrected", "rephrased", "learned", "heldout", "retention"):
        p = numbers.get(part) or {}
        if p.get("n"):
            lines.append(f"| {part} | {p['n']} | {p['parent_accuracy']:.3f} | {p['candidate_accuracy']:.3f} | "
                         f"{p['difference']:+.3f} | [{p['lower_bound']:+.3f}, {p['upper_bound']:+.3f}] |")
    cal = numbers.get("calibration") or {}
    if cal.get("parent"):
        skill = cal.get("skill") or {}
        lines += ["", "Calibration on the gate's held-out and retention items (each version cross-fitted on its "
                  "own gate answers; served = the confidence the answer carried):", "",
                  "| version | n | accuracy | Brier skill | Brier | ECE | AUROC (wrong) | served Brier | served ECE |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for version in ("parent", "candidate"):
            c = cal[version]
            served = c.get("served") or c.get("raw") or {}
            lines.append(f"| {version} | {c.get('n')} | {_num(c.get('accuracy'))} | {_num(skill.get(version))} | "
                         f"{_num(c.get('brier'))} | {_num(c.get('ece'))} | {_num(c.get('auroc_wrong'))} | "
                         f"{_num(served.get('brier'))} | {_num(served.get('ece'))} |")
        if skill:
            lines += ["", f"Brier skill, candidate − parent (paired): {skill['difference']:+.3f}, one-sided bounds "
                      f"[{skill['lower_bound']:+.3f}, {skill['upper_bound']:+.3f}]."]
    lines += ["", f"Rule: `{json.dumps(rule)}`."]
    return lines


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def cost_lines(training: dict, phases: list[tuple[str, float]]) -> list[str]:
    lines = [
        "| | value |",
        "|---|---|",
        f"| training steps | {training.get('steps')} ({training.get('examples')} examples, "
        f"{training.get('replay')} of them replayed confirmed answers) |",
        f"| seconds per step | {training.get('s_per_step')} |",
        f"| peak RSS of training (twin build included when it ran) | {training.get('peak_rss_mb')} MB |",
    ]
    lines += [f"| {label} | {seconds:.0f} s |" for label, seconds in phases]
    return [*lines, "", f"Training metrics: `{json.dumps(training)}`"]
