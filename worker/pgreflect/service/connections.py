"""The server's database connections: one small pool per app login (the identity an API key acts as, read
from the app's credentials file), each session carrying that app's encryption key, and a pool of the server's
own login (reflect_api: it may only verify keys)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from pgreflect import apps
from pgreflect.errors import PgreflectError
from pgreflect.keys import refuse_unsafe_logging
from pgreflect.sql import query


class AppUnavailable(PgreflectError):
    """The server cannot act as this app (no credentials file here, or its login refused)."""


async def check_logging(conn: psycopg.AsyncConnection) -> None:
    """The async twin of keys.check_server_logging: keys go to a server only when it will not log them."""
    cur = await conn.execute(query("logging_settings"))
    refuse_unsafe_logging(dict(await cur.fetchall()))


class Connections:
    def __init__(self, api_dsn: str, max_per_app: int = 8):
        self.api_dsn = api_dsn
        self.max_per_app = max_per_app
        self._pools: dict[str, AsyncConnectionPool] = {}
        self._lock = asyncio.Lock()
        self.api: AsyncConnectionPool | None = None

    async def open(self) -> None:
        self.api = AsyncConnectionPool(self.api_dsn, min_size=1, max_size=4, open=False,
                                       configure=self._configure_api,
                                       kwargs={"autocommit": True, "application_name": "pgreflect-api"})
        await self.api.open(wait=True, timeout=30)

    async def close(self) -> None:
        for pool in [*self._pools.values(), *([self.api] if self.api else [])]:
            await pool.close()
        self._pools.clear()

    @staticmethod
    async def _configure_api(conn: psycopg.AsyncConnection) -> None:
        await check_logging(conn)

    async def app(self, name: str) -> AsyncConnectionPool:
        pool = self._pools.get(name)
        if pool is not None:
            return pool
        async with self._lock:
            pool = self._pools.get(name)
            if pool is None:
                pool = await self._open_app(name)
                self._pools[name] = pool
        return pool

    async def forget_app(self, name: str) -> None:
        """Drops the app's pool (its login was revoked, or its credentials changed)."""
        async with self._lock:
            pool = self._pools.pop(name, None)
        if pool is not None:
            await pool.close()

    async def _open_app(self, name: str) -> AsyncConnectionPool:
        path = apps.credentials_path(name)
        try:
            creds: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            raise AppUnavailable(f"this server has no credentials for app {name} ({path}); re-issue them with "
                                 f"`pgreflect apps add {name}` on the server's machine") from None

        async def configure(conn: psycopg.AsyncConnection) -> None:
            await check_logging(conn)
            await conn.execute(query("use_key"), {"key_id": creds["key_id"], "key": creds["key"], "current": True})

        pool = AsyncConnectionPool(creds["dsn"], min_size=1, max_size=self.max_per_app, open=False,
                                   configure=configure,
                                   kwargs={"autocommit": True, "application_name": f"pgreflect-api-{name}"})
        try:
            await pool.open(wait=True, timeout=15)
        except Exception as exc:
            await pool.close()
            raise AppUnavailable(f"the server cannot connect as app {name}: {type(exc).__name__}") from None
        return pool
