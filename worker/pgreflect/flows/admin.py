"""Administrative flows: status, feedback, calibration, dataset export, key rotation and usage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from pgreflect import __version__
from pgreflect.db import connect, dsns
from pgreflect.errors import translate
from pgreflect.sql import query

QUEUE_COLUMNS = ["model_version", "is_active", "queued", "waiting_retry", "running", "lease_expired", "succeeded",
                 "failed", "oldest_queued_at"]
WORKER_COLUMNS = ["worker_id", "hostname", "pid", "model_versions", "started_at", "last_seen_at", "live"]


def status() -> dict[str, Any]:
    """Cluster, queue per model version, workers; an `error` key when the database cannot be reached."""
    d = dsns()
    out: dict[str, Any] = {"version": __version__}
    if d.local:
        from pgreflect.cluster import LocalCluster

        c = LocalCluster()
        out["cluster"] = {"directory": str(c.directory), "running": c.running(), "port": c.port}
    try:
        with psycopg.connect(d.admin, autocommit=True, connect_timeout=5) as conn:
            out["queue"] = [dict(zip(QUEUE_COLUMNS, r, strict=True)) for r in conn.execute(query("queue_status"))]
            out["workers"] = [dict(zip(WORKER_COLUMNS, r, strict=True)) for r in conn.execute(query("workers"))]
    except psycopg.Error as exc:
        out["error"] = str(exc).strip()
    return out


def give_feedback(request_id: int, *, is_correct: bool | None, rating: int | None, correction: str | None,
                  source: str = "human") -> int:
    """Records feedback as the app that owns the request; returns the feedback id."""
    with connect(dsns().app, application_name="pgreflect-feedback") as conn:
        try:
            return int(conn.execute(query("feedback"), {
                "request_id": request_id, "is_correct": is_correct, "rating": rating, "correction": correction,
                "source": source}).fetchone()[0])
        except psycopg.Error as exc:
            raise translate(exc) from exc


def calibrate(model_version: str | None) -> dict[str, dict[str, Any] | None]:
    """Fits a calibrator per model version now; None for a version without enough labels."""
    out: dict[str, dict[str, Any] | None] = {}
    with psycopg.connect(dsns().admin, autocommit=True) as conn:
        names = [model_version] if model_version else [r[1] for r in conn.execute(query("list_models"))]
        for name in names:
            cal_id = conn.execute(query("fit_calibrator"), {"model_version": name}).fetchone()[0]
            out[name] = None if cal_id is None else {
                "calibrator": cal_id, "metrics": conn.execute(query("calibrator"), {"id": cal_id}).fetchone()[0]}
    return out


def fit_probe(model_version: str) -> dict[str, Any]:
    """Fits the version's hidden-state probe on its labelled answers (pgreflect.meta.probe)."""
    from pgreflect.meta import probe

    with psycopg.connect(dsns().admin, autocommit=True) as conn:
        try:
            return probe.fit(conn, model_version)
        except psycopg.Error as exc:
            raise translate(exc) from exc


def export_calibrator(model_version: str, out: Path) -> dict[str, Any]:
    """Writes a version's active calibrator as a portable document (format pgreflect-calibrator-1)."""
    from pgreflect.errors import NotFound

    with psycopg.connect(dsns().admin, autocommit=True) as conn:
        doc = conn.execute(query("export_calibrator"), {"model_version": model_version}).fetchone()[0]
    if doc is None:
        raise NotFound(f"model version {model_version!r} does not exist or has no active calibrator")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def install_calibrator(model_version: str, path: Path) -> int:
    """Installs a calibrator document into a version fitted on the same model bytes; its id."""
    from pgreflect.errors import InvalidInput

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: not a readable JSON calibrator document ({exc})") from None
    with connect(dsns().admin, application_name="pgreflect-calibrate") as conn:
        return conn.execute(query("install_calibrator"), {"model_version": model_version,
                                                          "document": json.dumps(doc)}).fetchone()[0]


def export_dataset(name: str, split: str, limit: int | None, seed: int, out: Path) -> tuple[int, int]:
    """Writes a packaged dataset's questions as JSONL and stores their fixed split (as the administrator:
    the split is shared by every app). Returns (items written, items new to reflect.eval_items)."""
    from pgreflect import datasets

    chosen = datasets.select(name, split, limit, seed)
    with connect(dsns().admin, application_name="pgreflect-datasets") as conn:
        added = conn.execute(query("register_eval_items"), {
            "dataset": name, "item_ids": [it["id"] for it in chosen],
            "splits": [it["split"] for it in chosen]}).fetchone()[0]
    with out.open("w") as f:
        for it in chosen:
            f.write(json.dumps(it) + "\n")
    return len(chosen), int(added)


def rotate_key(from_key_id: str, batch: int = 500) -> int:
    """Re-encrypts every encrypted column from `from_key_id` to the keyring's current key, batch by batch."""
    total = 0
    with connect(dsns().admin, application_name="pgreflect-rotate") as conn:
        while n := conn.execute(query("rotate_key"), {"from_key_id": from_key_id, "batch": batch}).fetchone()[0]:
            total += n
    return total


def key_usage() -> list[tuple[str, str, int]]:
    with connect(dsns().admin, application_name="pgreflect-keys") as conn:
        return [tuple(r) for r in conn.execute(query("key_usage"))]  # type: ignore[misc]
