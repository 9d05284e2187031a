"""Which app an API key acts as. The database checks the key against its bcrypt hash
(reflect.verify_api_key_v1, ~20 ms at the default cost); the server then remembers the verified key by its
SHA-256 for `remember_s`, so a request pays a dictionary lookup, not a bcrypt, and forgets it at once when the
key or its app is revoked (NOTIFY api_key_revoked)."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from pgreflect.sql import query


@dataclass(frozen=True)
class Identity:
    key_id: str
    app: str
    login: str


class ApiKeys:
    def __init__(self, pool: AsyncConnectionPool, remember_s: float = 300.0):
        self.pool = pool
        self.remember_s = remember_s
        self._known: dict[bytes, tuple[Identity, float]] = {}

    async def identify(self, key: str) -> Identity | None:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        hit = self._known.get(digest)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self.remember_s:
            return hit[0]
        if len(key) > 200:
            return None
        async with self.pool.connection() as conn:
            cur = await conn.execute(query("verify_api_key"), {"key": key})
            row = await cur.fetchone()
        if row is None:
            self._known.pop(digest, None)
            return None
        identity = Identity(*row)
        self._known[digest] = (identity, now)
        return identity

    def forget(self, key_id: str) -> None:
        for digest, (identity, _) in list(self._known.items()):
            if identity.key_id == key_id:
                del self._known[digest]


class FailedAttempts:
    """Failed key checks per client address in a sliding window: past `limit`, that address is refused (429)
    before its keys reach the database, so guessing keys costs the guesser time, not the server bcrypt work."""

    def __init__(self, limit: int = 20, window_s: float = 60.0):
        self.limit = limit
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._seen[address]
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def blocked_for(self, address: str) -> float:
        """Seconds until this address may try again (0: it may now)."""
        now = time.monotonic()
        times = self._recent(address, now)
        if len(times) < self.limit:
            if not times:
                self._seen.pop(address, None)
            return 0.0
        return self.window_s - (now - times[0])

    def failed(self, address: str) -> None:
        now = time.monotonic()
        self._recent(address, now).append(now)
