"""The server's access log (uvicorn's own is off): one line per HTTP request with client address, method, path,
status and milliseconds, never a header or a body, so no key reaches it. Lines leave the event loop through a
queue and a background thread writes them."""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

log = logging.getLogger("pgreflect.access")


def start_writer() -> logging.handlers.QueueListener:
    """Routes pgreflect.access through a queue to standard error; returns the running listener (stop it last)."""
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    out = logging.StreamHandler(sys.stderr)
    out.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    listener = logging.handlers.QueueListener(q, out)
    log.handlers[:] = [logging.handlers.QueueHandler(q)]
    log.setLevel(logging.INFO)
    log.propagate = False
    listener.start()
    return listener


class AccessLog:
    """Pure ASGI middleware (no per-request objects beyond a closure)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            client = scope.get("client")
            log.info('%s "%s %s" %d %.1f ms', f"{client[0]}:{client[1]}" if client else "-", scope["method"],
                     scope["path"], status or 500, (time.perf_counter() - t0) * 1000)
