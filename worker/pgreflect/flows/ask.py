"""Asking as an app does: submit through the app path, run a worker in this process when none is live,
wait for the answer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pgreflect.client import Client
from pgreflect.db import dsns
from pgreflect.worker import InlineWorker, Worker, WorkerConfig


def inline_worker_config(base: WorkerConfig | None, model_version: str | None, followups: bool = False
                         ) -> WorkerConfig:
    """A short-lived in-process worker: the asked version only; follow-ups are left to long-running workers
    unless asked for (evaluation waits for them), and fine-tunes always are."""
    cfg = dataclasses.replace(base) if base is not None else WorkerConfig()
    if model_version:
        cfg.model_versions = [model_version]
    cfg.followups = followups
    cfg.train = "off"
    return cfg


def ask(prompt: str, *, system_prompt: str | None = None, params: dict[str, Any] | None = None,
        model_version: str | None = None, idempotency_key: str | None = None, caller: str = "pgreflect-ask",
        timeout: float = 600, inline_worker: str = "auto", worker_config: WorkerConfig | None = None,
        abort: Callable[[], str | None] | None = None) -> dict[str, Any]:
    """The finished request as the app sees it (reflect.app_requests), with its id."""
    d = dsns()
    with Client(d.app, application_name="pgreflect-ask") as client:
        request_id = client.submit(prompt, system_prompt=system_prompt, params=params,
                                   idempotency_key=idempotency_key, caller=caller, model_version=model_version)
        inline = None
        if inline_worker == "always" or (inline_worker == "auto" and client.live_workers(model_version) == 0):
            inline = InlineWorker(Worker(d.worker, inline_worker_config(worker_config, model_version))).start()
            abort = inline.failure
        try:
            row = client.wait(request_id, timeout=timeout, abort=abort)
        finally:
            if inline is not None:
                inline.stop()
    row["id"] = request_id
    return row
