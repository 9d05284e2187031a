"""Calibrators shipped with pgreflect, one JSON document per GGUF sha256 (format pgreflect-calibrator-1, as
reflect.export_calibrator_v1 writes it), installed by set-up for the exact model bytes they were fitted on,
so that a fresh install answers with a calibrated confidence from its first answer. A version's own labels
refine it later: a refit replaces it only when it calibrates the held-out answers better
(reflect.fit_calibrator_v1). The fit behind each document, with its data, sizes and held-out numbers, is in
the document ("fit") and in bench/results/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psycopg

from pgreflect.sql import query

HERE = Path(__file__).resolve().parent / "calibrators"


def directory() -> Path:
    return Path(os.environ.get("PGREFLECT_CALIBRATORS_DIR", HERE))


def document(gguf_sha256: str) -> dict[str, Any] | None:
    path = directory() / f"{gguf_sha256}.json"
    return json.loads(path.read_text()) if path.exists() else None


def install(admin_dsn: str, model_version: str, gguf_sha256: str) -> int | None:
    """Installs the shipped calibrator for this GGUF into the version, if one ships; its id, else None."""
    doc = document(gguf_sha256)
    if doc is None:
        return None
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return conn.execute(query("install_calibrator"), {"model_version": model_version,
                                                          "document": json.dumps(doc)}).fetchone()[0]
