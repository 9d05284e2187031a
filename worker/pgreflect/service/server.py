"""`pgreflect serve`: the OpenAI-compatible HTTP API.

Starlette + uvicorn: Starlette is the small, well-kept ASGI toolkit FastAPI is built on; the server holds no
business rules (the database validates every value and decides every state), so FastAPI's model layer would
add a second, divergent validation and per-request cost against a ≤ 2 ms budget. Every call runs as the
calling key's app login, through the same SQL an app uses (INSERT into reflect.app_requests, feedback_v1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pgreflect.errors import InvalidInput, NotFound, QueueFull, UnknownModel, translate
from pgreflect.service import openai_shape as shape
from pgreflect.service.auth import ApiKeys, FailedAttempts, Identity
from pgreflect.service.connections import AppUnavailable, Connections
from pgreflect.service.notices import Notices
from pgreflect.service.openai_shape import ApiError, ChatRequest, bad_request
from pgreflect.service.web.pages import Pages
from pgreflect.service.web.sessions import Sessions
from pgreflect.sql import query

log = logging.getLogger("pgreflect.serve")

FINAL = ("succeeded", "failed")
PING_S = 10.0  # an SSE comment while a streamed answer is still being generated (keeps proxies from timing out)
# The model name that pins no version: the active one serves it, or its canary for canary_share of the requests.
DEFAULT_MODEL = "default"
# A version seen served by a live worker is taken as served for this long without asking again: one round trip
# less per request (the live-worker check is itself `worker_live_s` stale). "None live" is never remembered.
LIVE_REMEMBER_S = 1.0


@dataclass
class ServeConfig:
    api_dsn: str
    request_timeout: float = 600.0  # seconds an HTTP request waits for its answer before 504
    max_connections_per_app: int = 8


def _sqlstate_error(exc: psycopg.Error) -> ApiError:
    """The HTTP answer to a database error: pgreflect's own errors (errors.translate) by their kind, bad values
    (SQLSTATE classes 22, 23) as 400, an unreachable database as 503, anything else 500 without its text."""
    if isinstance(exc, psycopg.OperationalError) and not exc.sqlstate:
        log.error("database unreachable: %s", type(exc).__name__)
        return ApiError(503, "the database is unreachable; retry", code="database_unavailable")
    ours = translate(exc)
    if isinstance(ours, InvalidInput):
        return ApiError(400, str(ours), code="invalid_request")
    if isinstance(ours, UnknownModel):
        return ApiError(404, str(ours), code="model_not_found", param="model")
    if isinstance(ours, NotFound):
        return ApiError(404, str(ours), code="not_found")
    if isinstance(ours, QueueFull):  # the OpenAI client retries a 429 after a pause
        return ApiError(429, str(ours), code="queue_full", type_="rate_limit_error")
    state = exc.sqlstate or ""
    if state[:2] in ("22", "23"):
        return ApiError(400, exc.diag.message_primary or str(exc), code="invalid_request")
    log.error("database error %s: %s", state, type(exc).__name__)
    return ApiError(500, f"database error (SQLSTATE {state})", code="database_error")


class Api:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.connections = Connections(config.api_dsn, config.max_connections_per_app)
        self.keys: ApiKeys | None = None
        self.failures = FailedAttempts()
        self.sessions = Sessions(config.api_dsn)
        self.notices = Notices(config.api_dsn, self._key_revoked, self._person_revoked)
        self._served_until: dict[str | None, float] = {}  # pinned version (None: the default) -> monotonic time

    def _key_revoked(self, key_id: str) -> None:
        if self.keys is not None:
            self.keys.forget(key_id)

    async def _person_revoked(self, login: str) -> None:
        await self.sessions.close_login(login)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.connections.open()
        assert self.connections.api is not None
        self.keys = ApiKeys(self.connections.api)
        await self.notices.start()
        try:
            yield
        finally:
            await self.notices.stop()
            await self.sessions.close_all()
            await self.connections.close()

    # -- plumbing ------------------------------------------------------------------------------------------
    async def _identity(self, request: Request) -> Identity:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "missing API key: send Authorization: Bearer <key> (pgreflect apikeys create NAME)",
                           code="invalid_api_key")
        assert self.keys is not None
        address = request.client.host if request.client else "?"
        wait = self.failures.blocked_for(address)
        if wait > 0:
            raise ApiError(429, f"too many failed API key checks from this address; retry in {wait:.0f} s",
                           code="rate_limited", type_="rate_limit_error")
        identity = await self.keys.identify(key.strip())
        if identity is None:
            self.failures.failed(address)
            raise ApiError(401, "invalid or revoked API key", code="invalid_api_key")
        return identity

    async def _pool(self, identity: Identity):  # type: ignore[no-untyped-def]
        try:
            return await self.connections.app(identity.app)
        except AppUnavailable as exc:
            raise ApiError(503, str(exc), code="app_unavailable") from None

    @staticmethod
    async def _json(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise bad_request("the request body is not valid JSON") from None

    # -- routes --------------------------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        identity = await self._identity(request)
        pool = await self._pool(identity)
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = await (await cur.execute(query("api_models"))).fetchall()
        data = [{"id": r["name"], "object": "model", "created": int(r["created_at"].timestamp()),
                 "owned_by": "pgreflect", "pgreflect": {"active": r["is_active"], "parent": r["parent"]}}
                for r in rows]
        active = next((d for d in data if d["pgreflect"]["active"]), None)
        if active is not None:  # what an app gets when it pins nothing: the active version, or its canary
            data.insert(0, {**active, "id": DEFAULT_MODEL, "pgreflect": {"alias_of": active["id"]}})
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(self, request: Request) -> Response:
        identity = await self._identity(request)
        chat = shape.parse_chat(await self._json(request))
        pool = await self._pool(identity)
        request_id = await self._submit(pool, chat, request.headers.get("idempotency-key"))
        if chat.stream:
            return StreamingResponse(self._stream(pool, chat, request_id), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        row = await self._wait(pool, request_id)
        return JSONResponse(shape.completion(row, chat.logprobs))

    async def feedback(self, request: Request) -> Response:
        identity = await self._identity(request)
        body = await self._json(request)
        args = shape.parse_feedback(body)
        pool = await self._pool(identity)
        async with pool.connection() as conn:
            try:
                cur = await conn.execute(query("feedback"), args)
            except psycopg.Error as exc:
                raise _sqlstate_error(exc) from None
            (feedback_id,) = await cur.fetchone()  # type: ignore[misc]
        return JSONResponse({"id": feedback_id, "request_id": args["request_id"], "object": "pgreflect.feedback"})

    # -- the request path -------------------------------------------------------------------------------------
    async def _submit(self, pool: Any, chat: ChatRequest, idempotency_key: str | None) -> int:
        pinned = None if chat.model == DEFAULT_MODEL else chat.model
        async with pool.connection() as conn:
            try:
                live = self._served_until.get(pinned, 0.0) > time.monotonic()
                if not live:
                    cur = await conn.execute(query("live_workers"), {"model_version": pinned})
                    (live,) = await cur.fetchone()
                    if live:
                        self._served_until[pinned] = time.monotonic() + LIVE_REMEMBER_S
                if not live:
                    if pinned is not None:
                        cur = await conn.execute(query("model_exists"), {"name": pinned})
                        if await cur.fetchone() is None:
                            raise ApiError(404, f"unknown model version {chat.model!r} (GET /v1/models lists them)",
                                           code="model_not_found", param="model")
                    if idempotency_key is not None:  # a retry of a request already queued: wait for it
                        cur = await conn.execute(query("app_request_by_key"), {"key": idempotency_key})
                        if (known := await cur.fetchone()) is not None:
                            return int(known[0])
                    raise ApiError(503, f"no live worker serves {chat.model}: start one (pgreflect worker "
                                        f"--daemon) and retry; nothing was queued", code="no_worker")
                cur = await conn.execute(query("submit_via_view"), {
                    "prompt": chat.prompt, "system_prompt": chat.system_prompt, "params": json.dumps(chat.params),
                    "idempotency_key": idempotency_key, "caller": chat.caller or "api",
                    "model_version": pinned, "history": json.dumps(chat.history) if chat.history else None})
            except psycopg.Error as exc:
                raise _sqlstate_error(exc) from None
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def _read(self, pool: Any, request_id: int) -> dict[str, Any]:
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = await (await cur.execute(query("app_request"), {"id": request_id})).fetchone()
        if row is None:
            raise self._not_yours(request_id)
        row["id"] = request_id
        return row

    async def _wait(self, pool: Any, request_id: int) -> dict[str, Any]:
        """The finished request; woken by NOTIFY request_done (no polling), re-read after every wake-up."""
        deadline = time.monotonic() + self.config.request_timeout
        with self.notices.waiting_for(request_id) as done:
            while True:
                row = await self._read(pool, request_id)
                if row["state"] in FINAL:
                    return self._answered(row)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timed_out(request_id, row["state"])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), timeout=left)
                done.clear()

    async def _progress(self, pool: Any, request_id: int) -> AsyncIterator[str | None]:
        """A streamed request's text so far, each time NOTIFY request_progress or request_done wakes it (None
        after PING_S without news), until the request is final. Raises ApiError 504 at the request timeout."""
        deadline = time.monotonic() + self.config.request_timeout
        with self.notices.waiting_for(request_id, progress=True) as woke:
            while True:
                async with pool.connection() as conn:
                    row = await (await conn.execute(query("app_request_progress"), {"id": request_id})).fetchone()
                if row is None:
                    raise self._not_yours(request_id)
                state, partial = row
                if state in FINAL:
                    return
                if partial:
                    yield partial
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timed_out(request_id, state)
                try:
                    await asyncio.wait_for(woke.wait(), timeout=min(left, PING_S))
                except TimeoutError:
                    yield None
                woke.clear()

    @staticmethod
    def _not_yours(request_id: int) -> ApiError:
        return ApiError(404, f"request {request_id} is not yours", code="not_found")

    def _timed_out(self, request_id: int, state: str) -> ApiError:
        return ApiError(504, f"request {request_id} is still {state} after {self.config.request_timeout:.0f} s; it "
                             "will still be answered: repeat the call with the same Idempotency-Key to get it",
                        code="timeout", extra={"request_id": request_id, "state": state})

    @staticmethod
    def _answered(row: dict[str, Any]) -> dict[str, Any]:
        if row["state"] == "failed":
            raise ApiError(500, f"request {row['id']} failed: {row.get('last_error') or 'no reason recorded'}",
                           code="generation_failed", extra={"request_id": row["id"]})
        return row

    async def _stream(self, pool: Any, chat: ChatRequest, request_id: int) -> AsyncIterator[str]:
        """Server-sent events in the OpenAI client's format. The text arrives as the worker publishes it
        (params.stream), each event the part not sent yet; the last content event carries the rest of the answer
        (and its logprobs), then the finish event pgreflect's extension. Pings while nothing new comes."""
        created = int(time.time())

        def event(obj: dict[str, Any]) -> str:
            return f"data: {json.dumps(obj, default=str)}\n\n"

        yield event(shape.chunk(request_id, created, chat.model, {"role": "assistant", "content": ""}))
        sent = ""
        try:
            async for text in self._progress(pool, request_id):
                if text is None:
                    yield ": waiting for the answer\n\n"
                elif len(text) > len(sent) and text.startswith(sent):  # else a retry restarted: wait for more
                    yield event(shape.chunk(request_id, created, chat.model, {"content": text[len(sent):]}))
                    sent = text
            row = self._answered(await self._read(pool, request_id))
        except ApiError as exc:
            yield event(exc.body())
            return
        except Exception as exc:  # the status line is sent: the error goes in the stream
            log.error("stream of request %s failed: %s", request_id, type(exc).__name__)
            yield event(ApiError(500, "internal error", code="internal_error").body())
            return
        msg = shape.message(row)
        if msg["content"] is None:
            delta = {"refusal": msg["refusal"]}
        elif msg["content"].startswith(sent):
            delta = {"content": msg["content"][len(sent):]}
        else:  # only after a failed attempt whose text was sent, answered differently by the next one
            yield event(ApiError(500, f"request {request_id} was answered again after a failed attempt, and the "
                                      "answer differs from the text already sent: fetch it whole (stream=false) "
                                      "with the same Idempotency-Key", code="stream_restarted",
                                 extra={"request_id": request_id}).body())
            return
        yield event(shape.chunk(request_id, created, row["model_version"], delta,
                                logprobs=shape.logprobs(row) if chat.logprobs else None))
        ext = shape.extension(row)
        final = shape.chunk(request_id, created, row["model_version"], {},
                            shape.FINISH.get(row.get("finish_reason") or "", "stop"), pgreflect=ext)
        yield event(final)
        if chat.include_usage:
            yield event({**shape.chunk(request_id, created, row["model_version"], {}), "choices": [],
                         "usage": shape.usage(row)})
        yield "data: [DONE]\n\n"


def create_app(config: ServeConfig) -> Starlette:
    api = Api(config)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status)

    async def on_other_error(request: Request, exc: Exception) -> Response:
        from psycopg_pool import PoolTimeout

        if isinstance(exc, PoolTimeout):
            error = ApiError(503, "all database connections of this app are busy; retry", code="busy")
        else:  # the type only: a message could quote a request's text
            log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
            error = ApiError(500, "internal error", code="internal_error")
        if not request.url.path.startswith("/v1/"):  # a person's page
            return HTMLResponse(f"<!doctype html><title>Error</title><p>{error.message} ({error.status}). "
                                '<a href="/">Back</a></p>', status_code=error.status)
        return JSONResponse(error.body(), status_code=error.status)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found").body(),
                            status_code=404)

    routes = [
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/feedback", api.feedback, methods=["POST"]),
        Route("/healthz", lambda r: JSONResponse({"ok": True}), methods=["GET"]),
        *Pages(api.sessions, api.connections).routes(),
    ]
    app = Starlette(routes=routes, lifespan=api.lifespan,
                    exception_handlers={ApiError: on_api_error, 404: not_found, Exception: on_other_error})
    app.state.api = api
    return app


def serve(config: ServeConfig, host: str, port: int) -> None:
    import uvicorn

    from pgreflect.service.access_log import AccessLog, start_writer

    writer = start_writer()
    try:
        uvicorn.run(AccessLog(create_app(config)), host=host, port=port, log_level="info", access_log=False,
                    server_header=False, date_header=True)
    finally:
        writer.stop()
