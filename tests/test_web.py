"""The web pages as people use them: Debian's Chromium driven by Playwright (headless, the system browser) against
`pgreflect serve` in its own process. A reviewer signs in, reads a queued answer (audited), corrects it with the
keyboard, and the correction is in the database as the app's feedback; an analyst sees numbers and no text;
forms refuse a missing CSRF token; sign-ins are rate-limited. Screenshots of each page go to
.pytest-artifacts/web/ (look at them)."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from pathlib import Path

import httpx2 as httpx
import psycopg
import pytest

from pgreflect.keys import Keyring
from pgreflect.sql import query

from conftest import Database
from helpers import client, drain, use_noop
from serving import Served, served

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / ".pytest-artifacts" / "web"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed "
                                "(scripts/test.sh installs it)")


def _person(s: Served, role: str) -> tuple[str, str]:
    name = f"{role[:3]}_{uuid.uuid4().hex[:8]}"  # logins are cluster-wide; each test gets new people
    out = s.cli("users", "add", name, "--role", role, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["password"] not in out.stderr
    return name, info["password"]


def _queued(db: Database, keyring: Keyring) -> list[int]:
    """Two flagged answers to review; the first was given an earlier, corrected answer as a memory."""
    use_noop(db)
    with client(db, keyring) as c:
        ids = [c.submit(q, params={"low_confidence": "flag", "confidence_threshold": 1.0})
               for q in ("What is the capital of Peru?", "How many legs has a spider?")]
        earlier = c.submit("Capital of Peru?", params={"confidence_threshold": 0.0})
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '0' WHERE key = 'review_sample_share'")
    drain(db, keyring, backend="noop")
    with db.admin() as conn:
        conn.execute("INSERT INTO reflect.prompt_embeddings (request_id, model, embedding) "
                     "SELECT %s, 'test', array_fill(0.1, ARRAY[384])::vector", (earlier,))
        conn.execute("INSERT INTO reflect.answer_memories (request_id, memory_request_id, rank, distance) "
                     "VALUES (%s, %s, 1, 0.12)", (ids[0], earlier))
        # and the second has a critique (as the critique follow-up stores it) for the reviewer to rate
        conn.execute("SELECT reflect.use_key_v1(%s, %s)", (keyring.current, keyring.keys[keyring.current]))
        conn.execute("INSERT INTO reflect.critiques (request_id, key_id, critique_enc, verdict, n_issues) "
                     "SELECT %s, %s, reflect._encrypt(%s, %s), 'incorrect', 0", (
                         ids[1], keyring.current, '{"verdict": "incorrect", "issues": [], "suggested_fix": "8"}',
                         keyring.current))
    with client(db, keyring) as c:
        c.conn.execute(query("feedback"), {"request_id": earlier, "is_correct": False, "rating": None,
                                           "correction": "Lima is the capital of Peru.", "source": "human"})
    return ids


def _table(page, selector: str) -> list[list[str]]:  # type: ignore[no-untyped-def]
    return [row.locator("td").all_inner_texts() for row in page.locator(f"{selector} tbody tr").all()]


def _sign_in(page, base: str, name: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(base + "/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_a_reviewer_corrects_an_answer_and_an_analyst_sees_only_numbers(db: Database, keyring: Keyring,
                                                                        tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    ids = _queued(db, keyring)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with served(db, keyring, tmp_path) as s, sync_playwright() as p:
        base = s.base_url.removesuffix("/v1")
        reviewer, analyst = _person(s, "reviewer"), _person(s, "analyst")
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})

        _sign_in(page, base, reviewer[0], "not the password")
        assert "wrong name or password" in page.inner_text(".error")
        page.screenshot(path=str(ARTIFACTS / "login.png"))
        _sign_in(page, base, *reviewer)
        page.wait_for_url(re.compile(r"/review$"))
        assert [f"#{i}" for i in ids] == sorted(page.locator("table.queue a").all_inner_texts(),
                                                key=lambda t: ids.index(int(t[1:])))
        page.screenshot(path=str(ARTIFACTS / "queue.png"), full_page=True)

        page.goto(base + "/dashboard?model=noop")
        assert _table(page, "#reviews") == [["flagged", "2", "2"]]
        assert [r[1] for r in _table(page, "#calibration")] == ["1"]  # the memory's own label so far
        page.goto(base + "/review")
        page.click(f"a[href='/review/{ids[0]}']")
        assert page.inner_text("#question") == "What is the capital of Peru?"
        assert page.inner_text("#answer") == "ok"  # the noop backend's answer
        assert _table(page, "#memories") == [["1", "#3", "0.120", "correction", "Capital of Peru?",
                                              "Lima is the capital of Peru."]]
        page.screenshot(path=str(ARTIFACTS / "item.png"), full_page=True)
        page.keyboard.press("w")  # write a correction, then Ctrl+Enter: wrong
        page.keyboard.type("Lima.")
        page.keyboard.press("Control+Enter")
        page.wait_for_url(re.compile(rf"/review/{ids[1]}$"))  # on to the next answer to judge
        assert "suggested_fix" in page.inner_text("main")  # its critique
        page.keyboard.press("4")  # rate the critique 4
        page.keyboard.press("c")  # correct
        page.wait_for_url(re.compile(r"/review$"))
        assert "Nothing to review" in page.inner_text("main")

        feedback = db.scalar("SELECT jsonb_agg(jsonb_build_object('id', request_id, 'ok', is_correct, 'source', "
                             "source, 'by', given_by, 'correction', correction_enc IS NOT NULL) ORDER BY request_id) "
                             "FROM reflect.feedback")
        login = f"person_{reviewer[0]}"
        assert feedback[:2] == [{"id": ids[0], "ok": False, "source": "review", "by": login, "correction": True},
                                {"id": ids[1], "ok": True, "source": "review", "by": login, "correction": False}]
        with db.admin() as conn:
            conn.execute("SELECT reflect.use_key_v1(%s, %s)", (keyring.current, keyring.keys[keyring.current]))
            assert conn.execute("SELECT reflect._decrypt(correction_enc, key_id) FROM reflect.feedback "
                                "WHERE request_id = %s", (ids[0],)).fetchone()[0] == "Lima."
        assert db.scalar("SELECT jsonb_build_object('rating', rating, 'by', rated_by) FROM reflect.critiques"
                         ) == {"rating": 4, "by": login}
        # each text shown was audited: the two answers and the memory shown with the first
        assert db.scalar("SELECT count(*) FROM reflect.decryption_audit WHERE by_login = %s", (login,)) == 3
        with client(db, keyring) as c:  # the app sees the reviewer's verdict on its own answer
            assert c.get(ids[0])["is_correct"] is False

        # The dashboard changed, and its numbers are the analyst view's.
        page.goto(base + "/dashboard?model=noop")
        assert _table(page, "#reviews") == [["flagged", "2", "0"]]
        with psycopg.connect(db.dsn("analyst")) as conn:
            day, labelled, accuracy, ece, brier, flagged = conn.execute(
                "SELECT day, labelled, accuracy, ece, brier, review_rate FROM reflect.calibration_daily "
                "WHERE model_version = 'noop'").fetchone()
        row = _table(page, "#calibration")[0]
        assert row[:2] == [day.strftime("%Y-%m-%d"), str(labelled)] and labelled == 3
        assert [row[2], row[4], row[5], row[9]] == [f"{float(v):.3f}" for v in (accuracy, ece, brier, flagged)]
        with psycopg.connect(db.dsn("analyst")) as conn:  # every version's calibration, beside the chosen one's
            every = conn.execute("SELECT day, model_version, labelled, ece, brier, auroc_confidence "
                                 "FROM reflect.calibration_daily ORDER BY day DESC, model_version DESC").fetchall()
        assert _table(page, "#versions") == [
            [d.strftime("%Y-%m-%d"), v, str(n), *("–" if x is None else f"{float(x):.3f}" for x in (e, b, a))]
            for d, v, n, e, b, a in every] and every
        assert page.locator("svg.chart").count() == 6
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # The models page shows each version's state and the gate's numbers; a request's timeline its events.
        with db.admin() as conn:  # a decision as the gate records it (reflect._decide), for smollm2 against tiny
            conn.execute("""INSERT INTO reflect.promotion_decisions (candidate_id, parent_id, decision, decided_by,
                                reason, numbers)
                            SELECT c.id, p.id, 'reject', 'gate', 'retention accuracy dropped by 0.133', %s
                            FROM reflect.model_versions c, reflect.model_versions p
                            WHERE c.name = 'smollm2' AND p.name = 'tiny'""",
                         (json.dumps({"retention": {"n": 60, "parent_accuracy": 0.333, "candidate_accuracy": 0.2,
                                                    "difference": -0.133, "lower_bound": -0.277,
                                                    "upper_bound": 0.01}}),))
        page.goto(base + "/models")
        states = {r[0]: r[1] for r in _table(page, "#models") if len(r) > 2}
        assert states["tiny"] == "registered" and states["noop"] == "active"
        assert ["retention", "60", "0.333", "0.200", "-0.133", "[-0.277, +0.010]"] in _table(page, "table.gate")
        page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)
        page.goto(base + f"/requests/{ids[0]}")
        assert [r[1] for r in _table(page, "#events")] == ["submitted", "claimed", "succeeded"]
        page.screenshot(path=str(ARTIFACTS / "request.png"), full_page=True)

        other = browser.new_context().new_page()
        _sign_in(other, base, *analyst)
        other.wait_for_url(re.compile(r"/dashboard$"))
        other.goto(base + "/review?judged=1")
        assert len(other.locator("table.queue a").all()) == 2
        other.goto(base + f"/review/{ids[0]}")
        assert "Numbers only" in other.inner_text("main") and "Peru" not in other.content()
        assert other.locator("form#judge").count() == 0
        other.screenshot(path=str(ARTIFACTS / "item-analyst.png"), full_page=True)
        browser.close()
    assert db.scalar("SELECT count(*) FROM reflect.decryption_audit WHERE by_login = %s",
                     (f"person_{analyst[0]}",)) == 0


def test_sessions_csrf_and_sign_in_limits(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    ids = _queued(db, keyring)
    with served(db, keyring, tmp_path) as s:
        base = s.base_url.removesuffix("/v1")
        name, password = _person(s, "reviewer")
        web = httpx.Client(base_url=base)
        form = web.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        # without the login form's cookie (another site's form), the sign-in is refused
        assert httpx.post(base + "/login", data={"csrf": csrf, "name": name, "password": password}).status_code == 403
        signed = web.post("/login", data={"csrf": csrf, "name": name, "password": password})
        assert signed.status_code == 303 and signed.headers["location"] == "/review"
        cookie = next(h for h in signed.headers.get_list("set-cookie") if h.startswith("pgreflect_session="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and password not in cookie
        page = web.get(f"/review/{ids[0]}")
        assert page.status_code == 200 and "Peru" in page.text
        assert page.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in page.headers[
            "content-security-policy"]
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        for bad in ({}, {"csrf": "forged"}):
            refused = web.post(f"/review/{ids[0]}", data={**bad, "verdict": "correct"})
            assert refused.status_code == 403
        assert db.scalar("SELECT count(*) FROM reflect.feedback WHERE source = 'review'") == 0
        assert web.post(f"/review/{ids[0]}", data={"csrf": token, "verdict": "correct"}).status_code == 303
        assert db.scalar("SELECT count(*) FROM reflect.feedback WHERE source = 'review'") == 1

        # a revoked person is signed out at once (NOTIFY person_revoked)
        assert s.cli("users", "revoke", name).returncode == 0
        gone = web.get("/review")
        for _ in range(50):
            if gone.status_code == 303:
                break
            time.sleep(0.1)
            gone = web.get("/review")
        assert gone.status_code == 303 and gone.headers["location"] == "/login"

        # ten failed sign-ins from one address, then it waits
        codes = []
        for _ in range(11):
            f = web.get("/login")
            t = re.search(r'name="csrf" value="([^"]+)"', f.text).group(1)  # type: ignore[union-attr]
            codes.append(web.post("/login", data={"csrf": t, "name": name, "password": "guess"}).status_code)
        assert codes == [401] * 10 + [429]
    assert password not in s.log.read_text()
