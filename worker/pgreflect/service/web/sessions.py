"""Signed-in people. A session is a random id in an HttpOnly, SameSite=Strict cookie naming an entry in this
server's memory (a restart signs everyone out): the person's login, role, CSRF token and a small connection pool
as that login. Reviewer sessions carry the keyring's keys, so the audited reveal can decrypt."""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from pgreflect.keys import load_keyring
from pgreflect.service.connections import check_logging
from pgreflect.sql import query

COOKIE = "pgreflect_session"
IDLE_S = 8 * 3600  # a session unused this long is closed


@dataclass
class Session:
    id: str
    name: str
    login: str
    role: str
    pool: AsyncConnectionPool
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    seen: float = field(default_factory=time.monotonic)

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf)


class Sessions:
    def __init__(self, api_dsn: str):
        self.api_dsn = api_dsn
        self._sessions: dict[str, Session] = {}
        self._lock = asyncio.Lock()

    def person_dsn(self, login: str) -> str:
        """The server's own connection string as `login`: same host, port and database, no password (the local
        cluster's socket trusts who can reach it; elsewhere the DBA lets the server's host in as person logins)."""
        params = {k: v for k, v in conninfo_to_dict(self.api_dsn).items() if k not in ("user", "password")}
        return make_conninfo(**params, user=login)

    async def open(self, name: str, login: str, role: str) -> Session:
        async def configure(conn: psycopg.AsyncConnection) -> None:
            await check_logging(conn)
            if role == "reviewer":
                ring = load_keyring()
                for key_id, key in ring.keys.items():
                    await conn.execute(query("use_key"), {"key_id": key_id, "key": key,
                                                          "current": key_id == ring.current})

        await self._sweep()
        pool = AsyncConnectionPool(self.person_dsn(login), min_size=1, max_size=2, open=False, configure=configure,
                                   kwargs={"autocommit": True, "application_name": "pgreflect-web"})
        try:
            await pool.open(wait=True, timeout=15)
        except BaseException:
            await pool.close()
            raise
        session = Session(secrets.token_urlsafe(32), name, login, role, pool)
        async with self._lock:
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > IDLE_S:
            asyncio.get_running_loop().create_task(self.close(session.id))
            return None
        session.seen = now
        return session

    async def _sweep(self) -> None:
        """Closes the sessions idle past IDLE_S (each holds a database connection)."""
        now = time.monotonic()
        for sid in [s.id for s in self._sessions.values() if now - s.seen > IDLE_S]:
            await self.close(sid)

    async def close(self, session_id: str) -> None:
        async with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            await session.pool.close()

    async def close_login(self, login: str) -> None:
        """Signs a revoked person out everywhere."""
        for sid in [s.id for s in self._sessions.values() if s.login == login]:
            await self.close(sid)

    async def close_all(self) -> None:
        for sid in list(self._sessions):
            await self.close(sid)
