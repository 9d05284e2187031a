from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from pgreflect.backends import Backend, Cancelled, GenerationRequest


@dataclass
class JobRun:
    """A claimed job, as claim_jobs_v1 returns it, with its cancellation state."""

    job_id: int
    lease_token: uuid.UUID
    kind: str
    attempt: int
    request_id: int | None
    model_version_id: int | None
    payload: dict[str, Any]
    checkpoint: dict[str, Any] | None
    cancel: threading.Event = field(default_factory=threading.Event)
    lease_lost: bool = False


@dataclass(frozen=True)
class JobInput:
    prompt: str
    system_prompt: str | None
    answer: str | None
    params: dict[str, Any]
    history: tuple[dict[str, str], ...] = ()  # a conversation's earlier turns

    def request(self, params: dict[str, Any] | None = None) -> GenerationRequest:
        """The question as it was asked (without the memories it was given)."""
        return GenerationRequest(self.prompt, self.system_prompt, params or self.params, history=self.history)


class JobContext(Protocol):
    """What the runtime gives a handler: the model, the job's decrypted input, checkpoints, cancellation."""

    embedder: Any

    def backend(self, model_version_id: int | None) -> Backend: ...

    def input(self) -> JobInput | None:
        """The answer the job works on; None when it did not decrypt (the job has then been failed)."""
        ...

    def serving_mb(self) -> float:
        """About how much memory the worker's loaded models hold (what pausing serving gives back)."""
        ...

    def pause_serving(self, reason: str) -> None:
        """Stops serving requests on this worker (in-flight ones finish) and unloads its models."""
        ...

    def resume_serving(self) -> None:
        """Loads the models again and serves (no-op when not paused)."""
        ...

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Saves progress under the lease; a later claim of this job gets it back in JobRun.checkpoint."""
        ...

    def call(self, query_name: str, **params: Any) -> list[tuple]:
        """Runs a named query that takes this job's id and lease token (and params)."""
        ...


class Handler(Protocol):
    kind: str

    def run(self, ctx: JobContext, job: JobRun) -> dict[str, Any] | None:
        """Does the work and returns the result for complete_job_v1 (None: the job already ended itself).
        Raises Cancelled when job.cancel is set."""
        ...


def check_cancel(job: JobRun) -> None:
    if job.cancel.is_set():
        raise Cancelled()
