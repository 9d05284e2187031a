"""One LISTEN connection for the whole server: `request_done` wakes the HTTP requests waiting for those ids
(no polling, and no connection held per waiting request), `request_progress` wakes the streams reading a
request's text so far, `api_key_revoked` makes the server forget a key at
once, `person_revoked` signs a person out. After a lost connection every waiter is woken to re-read its request,
so no completion is missed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator

import psycopg

from pgreflect.sql import query

log = logging.getLogger("pgreflect.serve")


class Notices:
    def __init__(self, dsn: str, on_key_revoked: Callable[[str], None],
                 on_person_revoked: Callable[[str], Awaitable[None]]):
        self.dsn = dsn
        self.on_key_revoked = on_key_revoked
        self.on_person_revoked = on_person_revoked
        self._waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._readers: dict[int, set[asyncio.Event]] = defaultdict(set)  # streams: woken by progress too
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pgreflect-notices")
        await asyncio.wait_for(self.listening.wait(), timeout=30)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def waiting_for(self, request_id: int, progress: bool = False) -> Iterator[asyncio.Event]:
        """An event set whenever request `request_id` may have finished (with `progress`, also whenever its
        text so far changed). Register before reading the request's state: a change after the registration
        sets it, one before shows in what is read."""
        event = asyncio.Event()
        registries = (self._waiters, self._readers) if progress else (self._waiters,)
        for registry in registries:
            registry[request_id].add(event)
        try:
            yield event
        finally:
            for registry in registries:
                events = registry.get(request_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del registry[request_id]

    def _wake(self, registry: dict[int, set[asyncio.Event]], payload: str) -> None:
        with contextlib.suppress(ValueError):
            for event in registry.get(int(payload), ()):
                event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.dsn, autocommit=True, application_name="pgreflect-api-listen") as conn:
                    await conn.execute(query("listen_api"))
                    self.listening.set()
                    self._wake_all()  # anything that finished while we were not listening
                    delay = 0.5
                    async for note in conn.notifies():
                        if note.channel == "request_done":
                            self._wake(self._waiters, note.payload)
                        elif note.channel == "request_progress":
                            self._wake(self._readers, note.payload)
                        elif note.channel == "api_key_revoked":
                            self.on_key_revoked(note.payload)
                        elif note.channel == "person_revoked":
                            await self.on_person_revoked(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost connection: listen again, then wake everyone to re-read
                self.listening.clear()
                log.warning("listening connection lost (%s); reconnecting in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
