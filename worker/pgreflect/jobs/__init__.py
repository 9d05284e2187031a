"""Background jobs: one handler per kind, run by the worker's job runtime. The database owns the queue,
the lease protocol and what a finished job means (db/functions/450_jobs.sql, reflect._finish_job); a handler
only does the model work and returns a result."""

from pgreflect.jobs.base import Handler, JobContext, JobRun
from pgreflect.jobs.finetune import FinetuneHandler
from pgreflect.jobs.followups import AgreementHandler, CritiqueHandler
from pgreflect.jobs.gate import GateHandler

HANDLERS: dict[str, Handler] = {h.kind: h for h in (CritiqueHandler(), AgreementHandler(), FinetuneHandler(),
                                                     GateHandler())}
FOLLOWUP_KINDS = ("critique", "agreement")
# Kinds that run in the worker's training lane (one at a time, beside the request slots), never in a slot.
TRAIN_KINDS = ("finetune",)

__all__ = ["FOLLOWUP_KINDS", "HANDLERS", "TRAIN_KINDS", "Handler", "JobContext", "JobRun"]
