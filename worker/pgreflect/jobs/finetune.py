"""The fine-tune job: train a LoRA adapter on a training set, convert it to a GGUF LoRA, hand it to the
database, which registers the candidate version and queues its gate (reflect._finish_finetune).

Before training, the job fits the run into memory (pgreflect.improve.memory_guard): beside serving, with
gradient checkpointing, or with this worker's serving paused until training ends; or it refuses with the
numbers. While it trains, a watch pauses serving too if memory runs low all the same.

Training (and, once per GGUF, building the twin, the memory-hungry part) runs in a child process
(pgreflect.improve.train) that dies with the worker (PR_SET_PDEATHSIG):
a worker killed with SIGKILL leaves no orphan, and the next claim of the job resumes from the child's last
checkpoint in the job's work folder. The job runs in the worker's training lane, never in a request slot.
"""

from __future__ import annotations

import ctypes
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgreflect.backends import BackendError
from pgreflect.improve import memory_guard
from pgreflect.improve.convert import convert
from pgreflect.improve.twin import TWIN_ERROR_EXIT, twin_dir
from pgreflect.jobs.base import JobContext, JobRun, check_cancel
from pgreflect.models import verify_file
from pgreflect.paths import improve_dir

log = logging.getLogger("pgreflect.improve")

PROGRESS_EVERY_S = 1.0
DEFAULT_MEMORY_POLICY = {"reserve_mb": 1536.0, "gradient_checkpointing": "auto", "pause_serving": "auto"}


def _trainer_preexec() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG: dies with the worker
    memory_guard.oom_first()


def work_dir(job: JobRun) -> Path:
    # work_id (a uuid queued with the job): job ids alone repeat across databases sharing a home
    return improve_dir() / "jobs" / str(job.payload.get("work_id") or f"job-{job.job_id}")


class FinetuneHandler:
    kind = "finetune"
    lane = "train"

    def run(self, ctx: JobContext, job: JobRun) -> dict[str, Any] | None:
        plan = ctx.call("finetune_plan")[0][0]
        base = plan["base"]
        if base["backend"] != "llama":
            raise BackendError(f"{base['name']} runs on the {base['backend']} backend; only GGUF models are trained",
                               retryable=False)
        gguf = Path(base["gguf_path"])
        verify_file(gguf, base["sha256"])
        examples = [dict(zip(("request_id", "source", "split", "system_prompt", "prompt", "completion"), row,
                             strict=True)) for row in ctx.call("finetune_examples")]
        if not any(e["split"] == "train" for e in examples):
            raise BackendError(f"training set {plan['training_set_id']} has no decryptable training examples",
                               retryable=False)
        check_cancel(job)
        twin = twin_dir(base["sha256"])  # built (once per GGUF) by the child, where its memory is given back
        work = work_dir(job)
        done = work / "done.json"
        if done.exists() and (twin / "config.json").exists():  # trained by an earlier attempt; convert only
            metrics = json.loads(done.read_text())
        else:
            hp = plan["hyperparameters"]
            try:
                fit = self._fit_in_memory(ctx, job, gguf, base["sha256"], examples, hp,
                                          plan.get("memory") or DEFAULT_MEMORY_POLICY)
                spec = {"gguf": str(gguf), "sha256": base["sha256"], "work_dir": str(work), "examples": examples,
                        "hyperparameters": hp, "gradient_checkpointing": fit.gradient_checkpointing}
                metrics, fit = self._train(ctx, job, spec, work, fit)
            finally:
                ctx.resume_serving()  # whatever happened (a no-op when serving was not paused)
            metrics["memory"] = {"decision": fit.decision, "estimate_mb": fit.estimate.total_mb,
                                 "available_mb": round(fit.available_mb), "serving_paused": fit.pause_serving}
            ctx.call("training_memory", **memory_guard.describe(fit), peak_rss_mb=metrics.get("peak_rss_mb"))
            done.write_text(json.dumps(metrics))
        check_cancel(job)
        path, digest = convert(work / "adapter", twin)
        for old in work.glob("ckpt-*"):
            shutil.rmtree(old, ignore_errors=True)
        log.info("job %s: adapter %s (%s steps, final loss %s)", job.job_id, path.name, metrics.get("steps"),
                 metrics.get("final_loss"))
        return {"adapter_path": str(path), "adapter_sha256": digest, "base_sha256": base["sha256"],
                "hyperparameters": plan["hyperparameters"], "metrics": metrics}

    def _fit_in_memory(self, ctx: JobContext, job: JobRun, gguf: Path, sha256: str, examples: list[dict[str, Any]],
                       hp: dict[str, Any], policy: dict[str, Any]) -> memory_guard.Decision:
        read: list[memory_guard.Inputs] = []  # read on first use only (the tokenizer pass takes seconds)

        def estimate_for(checkpointing: bool) -> memory_guard.Estimate:
            if not read:
                read.append(memory_guard.inputs(gguf, sha256, examples, hp))
            return memory_guard.estimate_from(read[0], checkpointing)

        fit = memory_guard.decide(policy, estimate_for, memory_guard.available_mb(), ctx.serving_mb())
        if fit.pause_serving:
            ctx.pause_serving(fit.detail)
            after = memory_guard.available_mb()
            freed = f"; pausing gave back {after - fit.available_mb:.0f} MB"
            again = memory_guard.decide({**policy, "pause_serving": "never"}, estimate_for, after, 0.0)
            if again.decision == "refused":
                ctx.resume_serving()
                fit = replace(again, detail=again.detail + freed + ", serving again")
            else:
                fit = replace(again, decision="paused_serving", pause_serving=True, detail=fit.detail + freed)
        ctx.call("training_memory", **memory_guard.describe(fit), peak_rss_mb=None)
        (log.info if fit.decision in ("alongside", "checkpointing") else log.warning)("job %s: %s", job.job_id,
                                                                                     fit.detail)
        if fit.decision == "refused":  # a matter of settings or of this machine: another attempt would not fit
            raise BackendError(fit.detail, retryable=False)
        return fit

    def _train(self, ctx: JobContext, job: JobRun, spec: dict[str, Any], work: Path,
               fit: memory_guard.Decision) -> tuple[dict[str, Any], memory_guard.Decision]:
        work.mkdir(parents=True, exist_ok=True)
        with (work / "train.log").open("a") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "pgreflect.improve.train"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=_trainer_preexec)
        stop_watch = threading.Event()
        state = {"fit": fit}

        def watch() -> None:
            # Cancellation (shutdown, lost lease) stops the child; its checkpoint stays. Memory running low all
            # the same (an estimate too low, another process) pauses serving, once.
            while not stop_watch.wait(0.2):
                if job.cancel.is_set():
                    proc.kill()
                    return
                current = state["fit"]
                if not current.pause_serving and memory_guard.available_mb() < current.reserve_mb / 2:
                    low = memory_guard.available_mb()
                    detail = (f"memory ran low while training ({low:.0f} MB available, under half the "
                              f"{current.reserve_mb:.0f} MB reserve): this worker stops serving until training ends")
                    ctx.pause_serving(detail)
                    state["fit"] = replace(current, decision="paused_serving", pause_serving=True,
                                           detail=f"{current.detail}; then {detail}")
                    ctx.call("training_memory", **memory_guard.describe(state["fit"]), peak_rss_mb=None)

        threading.Thread(target=watch, daemon=True).start()
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(spec))
            proc.stdin.close()
            metrics: dict[str, Any] | None = None
            last = 0.0
            for line in proc.stdout:
                event = json.loads(line)
                kind = event.pop("event")
                if kind == "step" and (time.monotonic() - last >= PROGRESS_EVERY_S
                                       or event["step"] == event["total_steps"]):
                    ctx.call("training_progress", **{k: event.get(k) for k in (
                        "step", "total_steps", "epoch", "loss", "tokens_per_s", "eta_s", "rss_mb")})
                    last = time.monotonic()
                elif kind == "checkpoint":
                    ctx.checkpoint({"step": event["step"]})
                elif kind == "start":
                    log.info("job %s: training %s steps on %s examples (resumed from step %s)", job.job_id,
                             event["total_steps"], event["examples"], event["resumed_from"])
                elif kind == "done":
                    metrics = event["metrics"]
            rc = proc.wait()
        finally:
            stop_watch.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        check_cancel(job)
        if rc != 0 or metrics is None:
            tail = (work / "train.log").read_text()[-600:]
            if rc == TWIN_ERROR_EXIT:  # this architecture cannot be trained here: another attempt cannot help
                raise BackendError(f"no usable training twin: {tail.strip().splitlines()[-1]}", retryable=False)
            if rc == -signal.SIGKILL:
                raise RuntimeError(f"the trainer was killed (SIGKILL: the kernel's out-of-memory killer, most likely; "
                                   f"{state['fit'].detail}); the next attempt resumes from the last checkpoint")
            raise RuntimeError(f"training failed (exit {rc}): {tail}")
        return metrics, state["fit"]
