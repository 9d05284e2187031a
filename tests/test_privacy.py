"""PII redaction: the recognisers on a labelled corpus and on clean text, memories redacted before they enter
another prompt, and people's views of stored text redacted and audited."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pgreflect.db import connect
from pgreflect.keys import Keyring
from pgreflect.privacy import KINDS, Redactor, redact
from pgreflect.privacy.corpus import generate
from pgreflect.sql import query
from pgreflect.worker import Job

from conftest import Database
from helpers import client, drain, use_noop, worker


def test_every_supported_kind_is_caught_in_the_corpus() -> None:
    r = Redactor()
    for s in generate(60, seed=11):
        out = r.redact(s.text)
        assert s.value not in out, (s.kind, s.text, out)
        assert f"[{s.kind.upper()}]" in out, (s.kind, s.text, out)


@pytest.mark.parametrize("text", [
    "In 1969, 600 million people watched; the answer is 42 and 3.14159 rounds to 3.14.",
    "Version 2.10 of the library was released on 2024-05-01 with 1,024 tests.",
    "Order 1234567812345670 is not a card: it fails Luhn? No, but it has no issuer prefix either.",
    "A. 1749-1945 B. 1052-1616 C. 1641 D. 1517",
    "print(b[::2]) and x = a[1:3]",
    "The token count is 4096 and the key insight is that the password policy matters.",
])
def test_clean_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_only_the_configured_kinds_are_redacted() -> None:
    text = "mail a@example.com from 10.0.0.1"
    assert Redactor(kinds=("email",)).redact(text) == "mail [EMAIL] from 10.0.0.1"
    with pytest.raises(ValueError, match="unknown PII kinds"):
        Redactor(kinds=("names",))
    assert set(KINDS) == {"email", "phone", "card", "iban", "ip", "secret"}


def test_memories_are_redacted_before_they_enter_another_prompt(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    w = worker(db, keyring, backend="noop", memory="on")
    w.load_embedder()
    with client(db, keyring) as c:
        first = c.submit("My e-mail is jane.doe@example.com: which plan am I on?")
    drain(db, keyring, backend="noop", memory="on")  # stores the prompt's embedding
    with connect(db.dsn("app"), keyring=keyring) as conn:
        conn.execute(query("feedback"), {"request_id": first, "is_correct": False, "rating": None, "source": "human",
                                         "correction": "Gold plan; card 4111 1111 1111 1111 on file."})
    with client(db, keyring) as c:
        second = c.submit("Which plan am I on? My e-mail is jane.doe@example.com.")
    rows = w.call("main", "claim", {"worker_id": "w", "limit": 1, "lease_seconds": 60, "model_version_ids": None})
    job = Job(*rows[0][:6], params=rows[0][6], queue_wait_ms=rows[0][7])
    assert job.request_id == second
    examples = w.answerer.recall(job)
    assert len(examples) == 1
    (question, answer), = examples
    assert "jane.doe" not in question + answer and "4111" not in answer
    assert "[EMAIL]" in question and "[CARD]" in answer and "Gold plan" in answer


def _cli(db: Database, keyring: Keyring, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgreflect.cli", *args], env=db.env(keyring), capture_output=True,
                          text=True, timeout=120)


def test_requests_show_redacts_and_audits(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    with client(db, keyring) as c:
        rid = c.submit("Call me on +44 20 7946 0958 or at sam@example.org")
    drain(db, keyring, backend="noop")
    out = _cli(db, keyring, "requests", "show", str(rid), "--purpose", "user reported a wrong answer", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["prompt"] == "Call me on [PHONE] or at [EMAIL]"
    out = _cli(db, keyring, "requests", "show", str(rid), "--purpose", "legal hold export", "--unredacted", "--json")
    assert json.loads(out.stdout)["prompt"] == "Call me on +44 20 7946 0958 or at sam@example.org"
    missing = _cli(db, keyring, "requests", "show", str(rid), "--purpose", " ")
    assert missing.returncode == 2 and "say why" in missing.stderr
    with db.admin() as conn:
        log = conn.execute("SELECT by_login, request_id, purpose, redacted FROM reflect.decryption_log ORDER BY id"
                           ).fetchall()
    assert log == [("postgres", rid, "user reported a wrong answer", True),
                   ("postgres", rid, "legal hold export", False)]


def test_training_export_is_one_apps_redacted_history(db: Database, keyring: Keyring, tmp_path) -> None:
    use_noop(db)
    with client(db, keyring) as c:
        corrected = c.submit("What is the support line? Mine is 415-555-0132.")
        confirmed = c.submit("What is 2 + 2?")
        c.submit("never labelled")
    drain(db, keyring, backend="noop")
    with connect(db.dsn("app"), keyring=keyring) as conn:
        conn.execute(query("feedback"), {"request_id": corrected, "is_correct": False, "rating": None,
                                         "correction": "Call +1 415-555-0199.", "source": "human"})
        conn.execute(query("feedback"), {"request_id": confirmed, "is_correct": True, "rating": None,
                                         "correction": None, "source": "human"})
    from pgreflect.reveal import export_training

    out = tmp_path / "train.jsonl"
    with connect(db.dsn(), keyring=keyring) as conn, out.open("w") as f, open("/dev/null", "w") as nowhere:
        n = export_training(conn, "pgreflect_app", "fine-tune v2", Redactor(), f)
        assert export_training(conn, "app_nobody", "fine-tune v2", Redactor(), nowhere) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == 2 and [r["request_id"] for r in rows] == [corrected, confirmed]
    assert rows[0]["completion"] == "Call [PHONE]." and rows[0]["source"] == "correction"
    assert rows[1]["completion"] == "ok" and rows[1]["source"] == "confirmed"
    assert db.scalar("SELECT count(*) FROM reflect.decryption_audit WHERE purpose = 'fine-tune v2'") == 2
