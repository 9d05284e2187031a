"""Background jobs: one handler per kind, run by the worker's job runtime. The database owns the queue,
the lease protocol and what a finished job means (db/functions/450_jobs.sql, reflect._finish_job); a handler
only does the model work and returns a result."""

from pgreflect.jobs.base import Handler, JobContext, JobRun
from pgreflect.jobs.followups import AgreementHandler, CritiqueHandler

HANDLERS: dict[str, Handler] = {h.kind: h for h in (CritiqueHandler(), AgreementHandler())}
FOLLOWUP_KINDS = ("critique", "agreement")

__all__ = ["FOLLOWUP_KINDS", "HANDLERS", "Handler", "JobContext", "JobRun"]
