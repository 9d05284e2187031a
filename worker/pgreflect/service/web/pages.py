"""The web pages: sign-in, the review queue and one queued answer. Every page runs as the signed-in person's own
login: a reviewer reads an answer's text only through reflect.reveal_request_v1 (audited: who, which request,
when, why) and judges it with reflect.review_v1; an analyst's login cannot decrypt, so the same pages show them
numbers only."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import psycopg
from jinja2 import Environment, FileSystemLoader, select_autoescape
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from pgreflect.errors import translate
from pgreflect.privacy import Redactor
from pgreflect.service.auth import FailedAttempts
from pgreflect.service.web import charts
from pgreflect.service.web.sessions import COOKIE, Session, Sessions
from pgreflect.sql import query

log = logging.getLogger("pgreflect.serve")
HERE = Path(__file__).parent
LOGIN_CSRF = "pgreflect_login_csrf"
REVEAL_PURPOSE = "review queue (web)"
MEMORY_PURPOSE = "memory given to a queued answer (web review)"
GATE_PARTS = ("corrected", "rephrased", "learned", "heldout", "retention")
HEADERS = {  # no framing, no inline script, nothing cached, no referrer carrying a request id elsewhere
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


class Pages:
    def __init__(self, sessions: Sessions, connections: Any):
        self.sessions = sessions
        self.connections = connections  # .api: the server's own login, which only checks passwords
        self.failures = FailedAttempts(limit=10, window_s=300)
        self.redactor = Redactor()
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
        self.static = {name: (HERE / "static" / name).read_bytes() for name in ("app.css", "review.js")}

    def routes(self) -> list[Route]:
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/review", self.queue, methods=["GET"]),
            Route("/dashboard", self.dashboard, methods=["GET"]),
            Route("/models", self.models, methods=["GET"]),
            Route("/requests/{request_id:int}", self.request_detail, methods=["GET"]),
            Route("/review/{request_id:int}", self.item, methods=["GET"]),
            Route("/review/{request_id:int}", self.judge, methods=["POST"]),
            Route("/static/{name}", self.static_file, methods=["GET"]),
        ]

    # -- plumbing ----------------------------------------------------------------------------------------------
    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    @staticmethod
    def to_login() -> Response:
        return RedirectResponse("/login", status_code=303)

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.static:
            return Response(status_code=404)
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(self.static[name], media_type=kind, headers={"Cache-Control": "max-age=300"})

    # -- signing in and out --------------------------------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login()
        return RedirectResponse("/review" if session.role == "reviewer" else "/dashboard", status_code=303)

    async def login_form(self, request: Request, error: str | None = None, status: int = 200) -> Response:
        token = secrets.token_urlsafe(32)  # double-submit: the form's copy must match the cookie's
        response = self.render("login.html", status, csrf=token, error=error)
        response.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="strict", path="/login")
        return response

    async def login(self, request: Request) -> Response:
        form = await request.form()
        cookie = request.cookies.get(LOGIN_CSRF)
        if not cookie or not secrets.compare_digest(cookie, str(form.get("csrf", ""))):
            return await self.login_form(request, "the form expired; sign in again", 403)
        address = request.client.host if request.client else "?"
        if (wait := self.failures.blocked_for(address)) > 0:
            return await self.login_form(request, f"too many failed sign-ins; try again in {wait:.0f} s", 429)
        name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))
        async with self.connections.api.connection() as conn:
            row = await (await conn.execute(query("verify_person"), {"name": name, "password": password})).fetchone()
        if row is None:
            self.failures.failed(address)
            return await self.login_form(request, "wrong name or password", 401)
        try:
            session = await self.sessions.open(name, *row)
        except Exception as exc:  # the server cannot connect as the person's login
            log.error("sign-in of %s: cannot connect as %s: %s", name, row[0], type(exc).__name__)
            return await self.login_form(request, "the server cannot open your database session; ask an "
                                                  "administrator (see docs/configuration.md, users)", 503)
        response = RedirectResponse("/review" if session.role == "reviewer" else "/dashboard", status_code=303)
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        response.delete_cookie(LOGIN_CSRF, path="/login")
        return response

    async def logout(self, request: Request) -> Response:
        session = self.session(request)
        form = await request.form()
        if session is not None:
            if not session.csrf_ok(str(form.get("csrf", ""))):
                return Response("CSRF token missing or wrong", status_code=403)
            await self.sessions.close(session.id)
        response = self.to_login()
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- the dashboard ---------------------------------------------------------------------------------------
    async def dashboard(self, request: Request) -> Response:
        """One model version's numbers, read from the analyst views (the same rows an analyst gets in SQL)."""
        session = self.session(request)
        if session is None:
            return self.to_login()
        async with session.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            queue = await (await cur.execute(query("dashboard_queue"))).fetchall()  # every version, active first
            names = [q["model_version"] for q in queue]
            chosen = request.query_params.get("model") or (names[0] if names else None)
            if chosen not in names:
                return self.render("message.html", 404, session=session, message="No such model version.")
            which = {"model_version": chosen}
            data = {name: await (await cur.execute(query(f"dashboard_{name}"), which)).fetchall()
                    for name in ("reliability", "calibration", "signals", "traffic", "reviews")}
            data["queue"] = queue
            data["workers"] = await (await cur.execute(query("dashboard_workers"))).fetchall()
            data["versions"] = await (await cur.execute(query("dashboard_versions"))).fetchall()
        days = [r["day"].strftime("%m-%d") for r in data["calibration"]]
        every_day = sorted({r["day"] for r in data["versions"]})
        per_version: dict[str, dict[Any, dict[str, Any]]] = {}
        for r in data["versions"]:
            per_version.setdefault(r["model_version"], {})[r["day"]] = r

        def across_versions(metric: str, title: str) -> Any:
            return charts.lines([d.strftime("%m-%d") for d in every_day],
                                {v: [(by_day.get(d) or {}).get(metric) for d in every_day]
                                 for v, by_day in per_version.items()}, title)

        pictures = {
            "reliability": charts.reliability(data["reliability"]),
            "calibration": charts.lines(days, {"ECE": [r["ece"] for r in data["calibration"]],
                                               "Brier": [r["brier"] for r in data["calibration"]],
                                               "AUROC": [r["auroc_confidence"] for r in data["calibration"]]},
                                        "Calibration per day"),
            "rates": charts.lines(days, {"accuracy": [r["accuracy"] for r in data["calibration"]],
                                         "memory on": [r["accuracy_memory_on"] for r in data["calibration"]],
                                         "memory off": [r["accuracy_memory_off"] for r in data["calibration"]],
                                         "review": [r["review_rate"] for r in data["calibration"]]},
                                  "Accuracy and review rate per day"),
            "signals": charts.bars([(r["signal"], r["auroc_wrong"]) for r in data["signals"]],
                                   "AUROC of each signal for wrong answers"),
            "versions_ece": across_versions("ece", "ECE per day, every model version"),
            "versions_auroc": across_versions("auroc_confidence", "AUROC per day, every model version"),
        }
        return self.render("dashboard.html", session=session, chosen=chosen, data=data,
                           pictures=pictures)

    # -- models and requests ---------------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        """Every version with its parent, state and the gate's last decision and numbers; canaries."""
        session = self.session(request)
        if session is None:
            return self.to_login()
        async with session.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            versions = await (await cur.execute(query("web_models"))).fetchall()
            canaries = await (await cur.execute(query("web_canaries"))).fetchall()
        for v in versions:  # the gate's parts (reflect.gate_decision_v1's numbers), in the order it judges them
            numbers = v.get("numbers") or {}
            v["parts"] = [(part, numbers[part]) for part in GATE_PARTS if (numbers.get(part) or {}).get("n")]
        return self.render("models.html", session=session, versions=versions, canaries=canaries)

    async def request_detail(self, request: Request) -> Response:
        """One request's numbers and the timeline of its events (attempts, workers, timings); no text."""
        session = self.session(request)
        if session is None:
            return self.to_login()
        which = {"request_id": request.path_params["request_id"]}
        async with session.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = await (await cur.execute(query("web_request"), which)).fetchone()
            events = await (await cur.execute(query("web_request_events"), which)).fetchall()
        if row is None:
            return self.render("message.html", 404, session=session, message="No such request.")
        return self.render("request.html", session=session, row=row, events=events)

    # -- the queue -------------------------------------------------------------------------------------------
    async def queue(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login()
        q = request.query_params
        try:
            max_confidence = float(q["max_confidence"]) if q.get("max_confidence") else None
        except ValueError:
            max_confidence = None
        filters = {"model_version": q.get("model") or None, "caller": q.get("caller") or None,
                   "max_confidence": max_confidence, "judged": q.get("judged") == "1"}
        async with session.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = await (await cur.execute(query("review_queue"), filters)).fetchall()
        return self.render("queue.html", session=session, rows=rows, filters=filters)

    async def _item(self, session: Session, request_id: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The queued answer's numbers and the memories its prompt was given, and for a reviewer the text of both
        (each decryption audited, the text redacted)."""
        async with session.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = await (await cur.execute(query("review_item"), {"request_id": request_id})).fetchone()
            if row is None:
                return None, None
            row["memories"] = await (await cur.execute(query("review_memories"), {"request_id": request_id})
                                     ).fetchall()
            if session.role != "reviewer":
                return row, None
            text = await self._reveal(cur, request_id, REVEAL_PURPOSE)
            for memory in row["memories"]:
                memory["text"] = await self._reveal(cur, memory["memory_request_id"], MEMORY_PURPOSE)
        return row, text

    async def _reveal(self, cur: Any, request_id: int, purpose: str) -> dict[str, Any]:
        try:
            text = await (await cur.execute(query("reveal_request"), {
                "request_id": request_id, "purpose": purpose, "redacted": True})).fetchone()
        except psycopg.Error as exc:
            raise translate(exc) from exc
        assert text is not None
        for name in ("prompt", "system_prompt", "answer", "critique"):
            text[name] = self.redactor.redact(text[name])
        text["corrections"] = [self.redactor.redact(c) for c in text["corrections"] or []]
        return text

    async def item(self, request: Request, error: str | None = None) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login()
        row, text = await self._item(session, request.path_params["request_id"])
        if row is None:
            return self.render("message.html", 404, session=session, message="That answer is not in the review queue.")
        signals = sorted((row.get("signals") or {}).items())
        return self.render("item.html", 200 if error is None else 400, session=session, row=row, text=text,
                           signals=signals, error=error)

    async def judge(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login()
        form = await request.form()
        if not session.csrf_ok(str(form.get("csrf", ""))):
            return Response("CSRF token missing or wrong", status_code=403)
        if session.role != "reviewer":
            return Response("only reviewers judge answers", status_code=403)
        request_id = request.path_params["request_id"]
        verdict = form.get("verdict")
        correction = str(form.get("correction", "")).strip() or None
        rating = str(form.get("critique_rating", "")).strip()
        async with session.pool.connection() as conn:
            try:
                if rating:
                    await conn.execute(query("rate_critique"), {"request_id": request_id, "rating": int(rating)})
                if verdict in ("correct", "wrong"):
                    await conn.execute(query("review"), {"request_id": request_id, "is_correct": verdict == "correct",
                                                         "correction": correction if verdict == "wrong" else None})
            except (psycopg.Error, ValueError) as exc:
                message = translate(exc) if isinstance(exc, psycopg.Error) else "rating must be 1 to 5"
                return await self.item(request, error=str(message))
        return RedirectResponse(await self._next(session, request_id), status_code=303)

    async def _next(self, session: Session, after: int) -> str:
        """The next answer still to judge, else the queue."""
        async with session.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            everything = {"model_version": None, "caller": None, "max_confidence": None, "judged": False}
            rows = await (await cur.execute(query("review_queue"), everything)).fetchall()
        following = [r["request_id"] for r in rows if r["request_id"] != after]
        return f"/review/{following[0]}" if following else "/review"
