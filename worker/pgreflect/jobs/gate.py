"""The gate job: first the parent rewords each corrected prompt (pgreflect.improve.rephrase checks the
rewordings), then the candidate and its parent answer the same items through the request path (memory off,
greedy); the answers are scored here against their references, and the database applies the decision rule
and records it (reflect._finish_gate). While answers are still being generated the job gives its slot back
and looks again later (snooze), so the gate never holds a worker the answers need."""

from __future__ import annotations

import json
from typing import Any

from pgreflect.improve import rephrase
from pgreflect.jobs.base import JobContext, JobRun, check_cancel
from pgreflect.prompts import REPHRASE_MAX_TOKENS, REPHRASE_SYSTEM
from pgreflect.scoring import is_correct

FINAL = ("succeeded", "failed")


class GateHandler:
    kind = "gate"

    def run(self, ctx: JobContext, job: JobRun) -> dict[str, Any] | None:
        rephrasings: list[dict[str, Any]] = []
        if not (job.checkpoint or {}).get("items"):  # once the items are in, the rewordings are not read again
            rewordings = ctx.call("gate_rephrase", instruction=REPHRASE_SYSTEM, max_tokens=REPHRASE_MAX_TOKENS)
            pending = sum(1 for r in rewordings if r[1] not in FINAL)
            if pending:
                return self._snooze(ctx, job, {"rewordings": len(rewordings), "pending": pending})
            rephrasings = rephrase.accepted(rewordings)
        items = ctx.call("gate_submit", rephrasings=json.dumps(rephrasings))[0][0]
        check_cancel(job)
        rows = ctx.call("gate_answers")
        pending = sum(1 for r in rows if r[3] not in FINAL or r[5] not in FINAL)
        if pending:
            return self._snooze(ctx, job, {"items": items, "pending": pending})

        def correct(state: str, answer: str | None, reference: str | None) -> bool:
            return state == "succeeded" and reference is not None and is_correct(answer or "", reference)

        return {"scores": [{"candidate_request_id": r[0], "part": r[1], "candidate_correct": correct(r[3], r[4], r[2]),
                            "parent_correct": correct(r[5], r[6], r[2])} for r in rows]}

    @staticmethod
    def _snooze(ctx: JobContext, job: JobRun, progress: dict[str, int]) -> None:
        ctx.call("snooze_job", seconds=float(job.payload.get("poll_s", 5)), checkpoint=json.dumps(progress))
