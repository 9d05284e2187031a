"""The improvement loop as flows the CLI (and the web app) call: queue a fine-tune and follow it to the gate's
decision, show where everything stands, and let a person promote, reject or roll back. The work itself
happens in the database and the workers (pgreflect.jobs.finetune, pgreflect.jobs.gate)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row
from tqdm import tqdm

from pgreflect.db import dsns
from pgreflect.errors import translate
from pgreflect.improve import curate
from pgreflect.sql import query


def _admin() -> psycopg.Connection:
    return psycopg.connect(dsns().admin, autocommit=True, row_factory=dict_row)


def _one(conn: psycopg.Connection, query_name: str, /, **params: Any) -> dict[str, Any] | None:
    try:
        return conn.execute(query(query_name), params).fetchone()
    except psycopg.Error as exc:
        raise translate(exc) from exc


def follow(job_id: int, timeout: float = 7200, progress: bool = True,
           poll: float = 1.0, abort: Callable[[], str | None] | None = None) -> dict[str, Any]:
    """Waits for a fine-tune job and then its gate: returns {"job", "candidate", "decision"} (decision None
    when the fine-tune failed). Shows the training progress as a bar."""
    deadline = time.monotonic() + timeout
    bar = None
    with _admin() as conn:
        try:
            while True:
                job = _one(conn, "job_status", job_id=job_id)
                status = conn.execute(query("training_status")).fetchall()
                mine = next((s for s in status if s["job_id"] == job_id), None)
                if progress and mine and mine["total_steps"]:
                    bar = bar or tqdm(total=mine["total_steps"], desc=f"fine-tune {job_id}", unit="step")
                    bar.n = mine["step"] or 0
                    bar.set_postfix(loss=f"{mine['loss']:.3f}" if mine["loss"] is not None else "-")
                    bar.refresh()
                if job["state"] == "failed":
                    return {"job": job, "candidate": None, "decision": None}
                gate = (job.get("result") or {}).get("gate_job_id")
                if gate is not None:
                    decision = _one(conn, "gate_decision", job_id=gate)
                    if decision is not None:
                        return {"job": job, "candidate": decision["candidate"], "decision": decision}
                    gate_job = _one(conn, "job_status", job_id=gate)
                    if gate_job and gate_job["state"] == "failed":
                        return {"job": job, "candidate": job["result"].get("candidate"), "decision": None,
                                "gate_error": gate_job["last_error"]}
                reason = abort() if abort else None
                if reason:
                    raise RuntimeError(reason)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fine-tune job {job_id} has no decision after {timeout:.0f} s (it goes on)")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()


def run(owner: str, model_version: str | None = None, wait: bool = False, timeout: float = 7200,
        progress: bool = True) -> dict[str, Any]:
    out = curate.run(owner, model_version)
    if wait:
        out.update(follow(out["job"]["id"], timeout=timeout, progress=progress))
    return out


def status() -> dict[str, Any]:
    out = curate.status()
    with _admin() as conn:
        out["training"] = conn.execute(query("training_status")).fetchall()
        out["models"] = conn.execute(query("model_states")).fetchall()
        out["canaries"] = conn.execute(query("canary_status")).fetchall()
        out["tuning"] = conn.execute(query("tuning_history")).fetchall()
    return out


def models() -> list[dict[str, Any]]:
    with _admin() as conn:
        return conn.execute(query("model_states")).fetchall()


def decide(version: str, decision: str, reason: str | None = None) -> int:
    with _admin() as conn:
        row = _one(conn, "decide_model_version", name=version, decision=decision, reason=reason)
    return row["decide_model_version_v1"]


def rollback(reason: str | None = None) -> str:
    with _admin() as conn:
        return _one(conn, "rollback_model_version", reason=reason)["rollback_model_version_v1"]


def _version_or_active(conn: psycopg.Connection, model_version: str | None) -> str:
    if model_version is not None:
        return model_version
    return next((m["name"] for m in conn.execute(query("model_states")) if m["state"] == "active"), "")


def tune(model_version: str | None = None, target: float | None = None) -> tuple[str, float]:
    """Tunes a version's (default: the active one's) confidence threshold from its labels
    (reflect.tune_confidence_threshold_v1); returns the version and the threshold in force."""
    with _admin() as conn:
        model_version = _version_or_active(conn, model_version)
        row = _one(conn, "tune_threshold", model_version=model_version, target=target)
    return model_version, row["tune_confidence_threshold_v1"]


def tune_memory(model_version: str | None = None) -> tuple[str, dict[str, Any]]:
    """Tunes a version's memory cutoff and k from its labelled explored answers (reflect.tune_memory_v1);
    returns the version and {max_distance, k, changed, evidence}."""
    with _admin() as conn:
        model_version = _version_or_active(conn, model_version)
        row = _one(conn, "tune_memory", model_version=model_version)
    return model_version, row["tune_memory_v1"]


def revert_tuning(change_id: int) -> float:
    with _admin() as conn:
        return _one(conn, "revert_tuning", change_id=change_id)["revert_tuning_v1"]
