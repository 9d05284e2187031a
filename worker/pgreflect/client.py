"""The app side: submit through the same path apps use (INSERT into reflect.app_requests) and wait."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgreflect.db import connect
from pgreflect.errors import InvalidInput, NotFound, translate
from pgreflect.keys import Keyring
from pgreflect.sql import query

FINAL_STATES = ("succeeded", "failed")


class Client:
    def __init__(self, dsn: str, keyring: Keyring | None = None, application_name: str = "pgreflect-app"):
        self.dsn = dsn
        self.conn = connect(dsn, application_name=application_name, keyring=keyring)
        self._listener: psycopg.Connection | None = None

    def close(self) -> None:
        self.conn.close()
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, prompt: str, *, system_prompt: str | None = None, params: dict[str, Any] | None = None,
               idempotency_key: str | None = None, caller: str | None = None,
               model_version: str | None = None, history: list[dict[str, str]] | None = None) -> int:
        """Queues a question; `history` holds a conversation's earlier turns (user, assistant, ...)."""
        for label, value in (("prompt", prompt), ("system prompt", system_prompt),
                             ("idempotency key", idempotency_key), ("caller", caller)):
            if value is not None and "\x00" in value:
                raise InvalidInput(f"{label} contains a NUL byte (0x00), which PostgreSQL text cannot store")
        self._ensure_listening()
        try:
            row = self.conn.execute(query("submit_via_view"), {
                "prompt": prompt, "system_prompt": system_prompt,
                "params": json.dumps(params) if params is not None else None,
                "idempotency_key": idempotency_key, "caller": caller, "model_version": model_version,
                "history": json.dumps(history) if history else None,
            }).fetchone()
        except psycopg.Error as exc:
            raise translate(exc) from exc
        assert row is not None
        return int(row[0])

    def get(self, request_id: int) -> dict[str, Any]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(query("app_request"), {"id": request_id}).fetchone()
        if row is None:
            raise NotFound(f"request {request_id} does not exist or was not submitted by this role")
        return row

    def _ensure_listening(self) -> None:
        if self._listener is None or self._listener.closed:
            self._listener = psycopg.connect(self.dsn, autocommit=True, application_name="pgreflect-wait")
            self._listener.execute(query("listen_done"))

    def wait(self, request_id: int, timeout: float = 600.0, poll: float = 1.0,
             abort: Callable[[], str | None] | None = None) -> dict[str, Any]:
        """Blocks until the request is final (NOTIFY request_done wakes it; polling backs it up).
        `abort` is checked on every wake-up; a message from it stops the wait with that error."""
        self._ensure_listening()
        assert self._listener is not None
        deadline = time.monotonic() + timeout
        while True:
            row = self.get(request_id)
            if row["state"] in FINAL_STATES:
                return row
            reason = abort() if abort is not None else None
            if reason:
                raise RuntimeError(f"request {request_id} is still {row['state']}: {reason}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"request {request_id} is still {row['state']} after {timeout:.0f} s")
            for _ in self._listener.notifies(timeout=min(poll, left), stop_after=1):
                pass  # any completion: re-read the state

    def live_workers(self, model_version: str | None = None) -> int:
        row = self.conn.execute(query("live_workers"), {"model_version": model_version}).fetchone()
        return int(row[0]) if row else 0
