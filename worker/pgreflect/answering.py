"""Answering one claimed request: memories in, the generation, its signals, a re-answer where the request asks
for one, reports out.

The worker's runtime claims the request and holds its lease (heartbeat, cancellation, shutdown); this handler
does the model work and reports through the request functions (db/functions/400_lifecycle.sql), re-sending a
finished result while the database is away. Follow-up and training jobs have handlers of their own
(pgreflect.jobs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from pgreflect.backends import Backend, BackendError, Cancelled, GenerationRequest
from pgreflect.embeddings import to_pgvector
from pgreflect.errors import PgreflectError, StaleLease
from pgreflect.privacy import Redactor
from pgreflect.prompts import REANSWER_SYSTEM
from pgreflect.signals import kind_signals, option_signals, p_answer, rule_checks

if TYPE_CHECKING:
    from pgreflect.worker import WorkerConfig, WorkerStats

log = logging.getLogger("pgreflect.worker")


@dataclass
class Job:
    """A claimed request, as claim_v1 returns it, with its cancellation state."""

    request_id: int
    lease_token: uuid.UUID
    attempt: int
    model_version_id: int
    prompt: str
    system_prompt: str | None
    params: dict[str, Any]
    queue_wait_ms: float
    cancel: threading.Event = field(default_factory=threading.Event)
    lease_lost: bool = False


class AnswerHost(Protocol):
    """What the worker's runtime gives the handler: its settings and counters, the loaded models, the
    embedder and redactor (None when memory or redaction is off), and named queries on its connections."""

    config: WorkerConfig
    stats: WorkerStats
    backends: dict[int, Backend]
    embedder: Any
    redactor: Redactor | None

    def call(self, role: str, name: str, params: dict[str, Any], attempts: int = 3) -> list[tuple]: ...


class Answerer:
    def __init__(self, host: AnswerHost):
        self.host = host

    def answer(self, job: Job) -> None:
        """Answers one claimed request and reports the result; never raises for a failure of the request's
        own (a failed attempt is recorded instead)."""
        try:
            backend = self.host.backends[job.model_version_id]
            try:
                request = GenerationRequest(job.prompt, job.system_prompt, job.params, self.recall(job),
                                            self._history(job), on_text=self._publisher(job))
                gen = backend.generate(request, job.cancel)
            except Cancelled:
                if job.lease_lost:
                    self.host.stats.lost += 1
                    log.warning("request %s: lease lost, generation abandoned", job.request_id)
                else:
                    self._report(job, "release", {})
                    self.host.stats.released += 1
                return
            except StaleLease:
                raise
            except BackendError as exc:
                self._fail(job, str(exc), exc.retryable)
                return
            except Exception as exc:  # any model failure becomes a recorded failed attempt
                log.exception("request %s: generation failed", job.request_id)
                self._fail(job, f"{type(exc).__name__}: {exc}"[:500], True)
                return
            signals = self._signals(backend, request, gen)
            if job.params.get("low_confidence") == "reanswer":
                gen, signals = self._maybe_reanswer(job, backend, request, gen, signals)
            if gen.state is not None:
                self._report(job, "store_state", {"state": to_pgvector(gen.state)})
            if job.params.get("logprobs"):
                self._report(job, "store_tokens", {"tokens": json.dumps(gen.token_records())})
            self._report(job, "complete", {
                "answer": gen.text, "finish_reason": gen.finish_reason, "prompt_tokens": gen.prompt_tokens,
                "token_logprobs": gen.token_logprobs, "prompt_eval_ms": gen.prompt_eval_s * 1000,
                "generation_ms": gen.generation_s * 1000, "signals": json.dumps(signals),
            })
            self.host.stats.succeeded += 1
        except StaleLease as exc:
            self.host.stats.lost += 1
            log.warning("request %s: %s", job.request_id, exc)
        except psycopg.OperationalError as exc:
            log.error("request %s: the database stayed unreachable for %.0f s; the lease will expire and the "
                      "request will be retried (%s)", job.request_id, self.host.config.report_retry_s, exc)
        except Exception as exc:
            # The database refused the report itself: give the request back at once rather than leave it to
            # lease expiry.
            log.exception("request %s: the result was refused; failing this attempt", job.request_id)
            with contextlib.suppress(Exception):
                self._fail(job, f"the worker's report was refused: {type(exc).__name__}: {exc}"[:500], True)

    def _maybe_reanswer(self, job: Job, backend: Backend, request: GenerationRequest, gen: Any,
                        signals: dict[str, float]) -> tuple[Any, dict[str, float]]:
        """Low confidence and action 'reanswer': answer again with retrieved corrections as evidence and keep
        the more confident attempt (the database scores and stores both). The model's own critique is never
        used to rewrite an answer."""
        def record(g: Any, s: dict[str, float], evidence: list[int]) -> tuple[float, bool]:
            (row,) = self.host.call("job", "record_candidate", {
                "request_id": job.request_id, "lease_token": job.lease_token, "answer": g.text,
                "token_logprobs": g.token_logprobs, "signals": json.dumps(s), "evidence": evidence})
            return row[1], row[2]

        first_conf, again = record(gen, signals, [])
        if not again:
            return gen, signals
        rows = self.host.call("job", "evidence", {"request_id": job.request_id, "lease_token": job.lease_token,
                                                  "k": job.params.get("memory_k") or 3})
        if not rows:
            return gen, signals
        system = "\n".join(filter(None, [request.system_prompt, REANSWER_SYSTEM]))
        second_request = GenerationRequest(job.prompt, system, job.params,
                                           tuple((self._redact(p), self._redact(a)) for _id, p, a in rows if p and a),
                                           request.history)
        second = backend.generate(second_request, job.cancel)
        second_signals = self._signals(backend, second_request, second)
        second_conf, _ = record(second, second_signals, [r[0] for r in rows])
        log.info("request %s: re-answered with %d piece(s) of evidence: confidence %.3f -> %.3f",
                 job.request_id, len(rows), first_conf, second_conf)
        return (second, second_signals) if second_conf > first_conf else (gen, signals)

    def recall(self, job: Job) -> tuple[tuple[str, str], ...]:
        """Stores the prompt's embedding and fetches memories to use as few-shot examples."""
        if self.host.embedder is None:
            return ()
        vector = self.host.embedder.embed([job.prompt])[0]
        rows = self.host.call("job", "recall", {
            "request_id": job.request_id, "lease_token": job.lease_token, "model": self.host.embedder.name,
            "embedding": to_pgvector(vector), "k": None})
        return tuple((self._redact(prompt), self._redact(correction or answer))
                     for _id, _kind, _dist, prompt, answer, correction in rows if prompt and (correction or answer))

    def _history(self, job: Job) -> tuple[dict[str, str], ...]:
        """A conversation's earlier turns (only requests with params.history_turns have them)."""
        if not job.params.get("history_turns"):
            return ()
        rows = self.host.call("job", "request_history", {"request_id": job.request_id, "lease_token": job.lease_token})
        return tuple(rows[0][0] or ()) if rows else ()

    def _redact(self, text: str) -> str:
        return self.host.redactor.redact(text) or "" if self.host.redactor is not None else text

    def _signals(self, backend: Backend, request: GenerationRequest, gen: Any) -> dict[str, float]:
        signals = rule_checks(request.prompt, gen.text, gen.finish_reason) | kind_signals(request.prompt, gen.text)
        if gen.option_probs:
            signals.update(option_signals(gen.option_probs))
        p_ans = p_answer(gen.token_texts, gen.token_logprobs, gen.text) if gen.token_texts else None
        if p_ans is not None:
            signals["p_answer"] = p_ans
        if self.host.config.p_true and len(gen.token_logprobs) >= self.host.config.p_true_min_tokens:
            try:
                p = backend.p_true(request, gen)
            except Exception as exc:  # a failed measurement must not lose the answer
                log.warning("P(True) failed: %s", exc)
                p = None
            if p is not None:
                signals["p_true"] = p
        return signals

    def _report(self, job: Job, name: str, params: dict[str, Any]) -> list[tuple]:
        """Sends a finished result. When the database is unreachable it keeps trying (the job stays in flight,
        so the heartbeat extends its lease as soon as the database is back) until the report goes through,
        the lease is lost, or report_retry_s passes: a computed answer is not thrown away, and the request is
        not left waiting for its lease to expire."""
        delay = 0.5
        deadline = time.monotonic() + self.host.config.report_retry_s
        while True:
            try:
                return self._finish(job, name, params)
            except psycopg.OperationalError as exc:
                # Shutdown cancels in-flight work after its grace period: give up then, the lease expires.
                if job.lease_lost or job.cancel.is_set() or time.monotonic() + delay > deadline:
                    raise
                log.warning("request %s: could not report (%s); retrying in %.1f s", job.request_id, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _publisher(self, job: Job) -> Callable[[str], None] | None:
        """For a streamed request whose answer will be shown whatever its confidence (reflect.report_partial_v1
        says which): publishes the text so far, at most every stream_interval_s. A publish that fails is
        skipped, never the answer: the reader then gets the text with the next publish or with the answer."""
        if not job.params.get("stream") or job.params.get("low_confidence") not in ("answer", "flag"):
            return None
        last = {"at": float("-inf"), "text": ""}

        def publish(text: str) -> None:
            now = time.monotonic()
            if text == last["text"] or now - last["at"] < self.host.config.stream_interval_s:
                return
            last["at"], last["text"] = now, text
            try:
                self.host.call("job", "report_partial", {"request_id": job.request_id, "lease_token": job.lease_token,
                                                         "text": text}, attempts=1)
            except StaleLease:
                job.cancel.set()  # the request is someone else's now; the generation stops at its next token
                job.lease_lost = True
            except (psycopg.Error, PgreflectError) as exc:
                log.debug("request %s: partial answer not published (%s)", job.request_id, type(exc).__name__)

        return publish

    def _fail(self, job: Job, error: str, retryable: bool) -> None:
        state = self._report(job, "fail", {"error": error, "retryable": retryable})[0][0]
        if state == "queued":
            self.host.stats.retried += 1
        else:
            self.host.stats.failed += 1
        log.warning("request %s attempt %s failed (%s): %s", job.request_id, job.attempt,
                    "will retry" if state == "queued" else "final", error)

    def _finish(self, job: Job, name: str, params: dict[str, Any]) -> list[tuple]:
        return self.host.call("job", name, {"request_id": job.request_id, "lease_token": job.lease_token, **params})
