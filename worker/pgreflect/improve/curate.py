"""Curation: training sets are built by reflect.curate_training_set_v1 (db/functions/760_curation.sql); this
module asks for one, queues the fine-tune it feeds, and reports what exists."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgreflect.db import dsns
from pgreflect.errors import translate
from pgreflect.sql import query


def run(owner: str, model_version: str | None = None) -> dict[str, Any]:
    """Curates a training set from `owner`'s history now (whatever the scheduled threshold) and queues a
    fine-tune job for it (NOTIFY needs_finetune). Refuses with InvalidInput when nothing can be trained on."""
    with psycopg.connect(dsns().admin, autocommit=True) as conn:
        try:
            job_id = conn.execute(query("request_finetune"), {"owner": owner,
                                                              "model_version": model_version}).fetchone()[0]
        except psycopg.Error as exc:
            raise translate(exc) from exc
        with conn.cursor(row_factory=dict_row) as cur:
            job = cur.execute(query("job_status"), {"job_id": job_id}).fetchone()
            training_set = cur.execute(query("training_set"), {"id": int(job["payload"]["training_set_id"])}).fetchone()
    return {"job": job, "training_set": training_set}


def status() -> dict[str, Any]:
    """Training sets (numbers, no text) and fine-tune jobs, newest first."""
    with psycopg.connect(dsns().admin, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        return {"training_sets": cur.execute(query("training_sets")).fetchall(),
                "finetune_jobs": cur.execute(query("finetune_jobs")).fetchall()}
