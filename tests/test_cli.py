"""The CLI as a user runs it, against the test cluster; one end-to-end run of the real default model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pgreflect.keys import Keyring
from pgreflect.models import DEFAULT_MODEL, packaged_path

from conftest import Database, register
from helpers import spawn_worker


def cli(db: Database, keyring: Keyring, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgreflect.cli", *args], env=db.env(keyring), capture_output=True,
                          text=True, timeout=timeout)


def test_ask_json_runs_its_own_worker_when_none_is_live(db: Database, keyring: Keyring) -> None:
    out = cli(db, keyring, "ask", "--json", "--max-tokens", "5", "--model-version", "tiny", "Say hello")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert {"id", "answer", "model_version", "tokens", "tokens_per_s", "logprob_mean"} <= answer.keys()
    assert answer["model_version"] == "tiny" and answer["tokens"] == 5 and answer["tokens_per_s"] > 0
    assert db.scalar("SELECT caller FROM reflect.requests WHERE id = %s", (answer["id"],)) == "pgreflect-ask"
    # It went through the app's path: the request was submitted by the app login role.
    assert db.scalar("SELECT submitted_by FROM reflect.requests WHERE id = %s", (answer["id"],)) == "pgreflect_app"


def test_ask_uses_a_running_worker(db: Database, keyring: Keyring, tmp_path) -> None:
    import signal

    w = spawn_worker(db, keyring, "--model-version", "tiny", "--worker-id", "resident", "--poll-interval", "0.2",
                      log_path=tmp_path / "w.log")
    try:
        from helpers import wait_for

        wait_for(lambda: db.scalar("SELECT count(*) FROM reflect.worker_status WHERE live") == 1, timeout=30,
                 what="worker to announce itself")
        out = cli(db, keyring, "ask", "--json", "--max-tokens", "3", "--model-version", "tiny", "hi")
        assert out.returncode == 0, out.stderr
        rid = json.loads(out.stdout)["id"]
        assert db.scalar("SELECT worker_id FROM reflect.answers WHERE request_id = %s", (rid,)) == "resident"
    finally:
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=30) == 0
    assert db.scalar("SELECT count(*) FROM reflect.worker_status WHERE live") == 0


def test_status_and_bad_input_exit_codes(db: Database, keyring: Keyring) -> None:
    out = cli(db, keyring, "status")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert {q["model_version"] for q in status["queue"]} >= {"tiny", "smollm2"}
    bad = cli(db, keyring, "ask", "--max-tokens", "0", "hello")
    assert bad.returncode == 2 and "max_tokens must be between 1 and 4096" in bad.stderr
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 0


@pytest.mark.slow
@pytest.mark.realmodel
def test_real_default_model_answers_a_factual_question(db: Database, keyring: Keyring) -> None:
    with db.admin() as conn:
        register(conn, DEFAULT_MODEL, packaged_path(DEFAULT_MODEL))
    out = cli(db, keyring, "ask", "--json", "--model-version", DEFAULT_MODEL, "--max-tokens", "32",
              "What is the capital of France? Answer in one short sentence.")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert "Paris" in answer["answer"]
    assert answer["model_version"] == DEFAULT_MODEL
    assert answer["confidence"] > 0.5
    assert answer["tokens"] == len(db.scalar("SELECT token_logprobs FROM reflect.answers WHERE request_id = %s",
                                             (answer["id"],)))


def test_ask_fails_fast_when_its_worker_cannot_load_the_model(db: Database, keyring: Keyring, tmp_path) -> None:
    with db.admin() as conn:
        conn.execute("SELECT reflect.register_model_version_v1('ghost', %s, %s, 'path')",
                     (str(tmp_path / "missing.gguf"), "0" * 64))
    out = cli(db, keyring, "ask", "--model-version", "ghost", "--timeout", "120", "hello", timeout=60)
    assert out.returncode == 1
    assert "in-process worker failed" in out.stderr and "does not exist" in out.stderr


def test_models_commands_refuse_bad_input_with_one_line(db: Database, keyring: Keyring, tmp_path) -> None:
    """The database's refusals reach the user as `error: ...` and exit 2, never as a traceback; nothing changes."""
    before = db.scalar("SELECT count(*) FROM reflect.model_versions")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really a model")
    cases = [
        (("models", "register", "tiny", str(gguf)), "tiny"),  # the name is taken
        (("models", "activate", "no-such-version"), "no-such-version"),
        (("models", "register", "x", "--backend", "openai", "--base-url", "ftp://h/", "--remote-model", "m"), "url"),
        (("models", "register", "y", str(tmp_path / "missing.gguf")), "not a file"),
    ]
    for args, says in cases:
        out = cli(db, keyring, *args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr)
        last = out.stderr.strip().splitlines()[-1]  # after the sha256 progress bar, if any
        assert last.startswith("error: ") and says in last.lower(), (args, out.stderr)
    assert db.scalar("SELECT count(*) FROM reflect.model_versions") == before


BAD_INPUT = [
    ("feedback", "999999", "--correct"),
    ("requests", "show", "999999", "--purpose", "a test"),
    ("apps", "revoke", "no-such-app"),
    ("apps", "add", "Robert'); DROP TABLE reflect.requests; --"),
    ("apikeys", "revoke", "no-such-key"),
    ("users", "revoke", "no-such-person"),
    ("users", "add", "two words", "--role", "reviewer"),
    ("improve", "promote", "no-such-version"),
    ("improve", "revert-tuning", "999999"),
    ("improve", "tune", "--model-version", "no-such-version"),
    ("improve", "run", "--app", "no-such-app"),
    ("calibrate", "--model-version", "no-such-version"),
    ("calibrate", "--model-version", "tiny", "--install", "/no/such/calibrator.json"),
    ("keys", "rotate", "--from", "no-such-key"),
    ("ask", "--model-version", "no-such-version", "hello"),
    ("eval", "--file", "/no/such/questions.jsonl"),
    ("requests", "export-training", "--app", "no-such-app", "--out", "{tmp}/export.jsonl", "--purpose", "a test"),
    ("datasets", "export", "gsm8k", "--limit", "-3", "--out", "{tmp}/gsm8k.jsonl"),
    ("worker", "--concurrency", "0", "--once"),
    ("worker", "--poll-interval", "nan", "--once"),
    ("serve", "--port", "70000"),
]


@pytest.mark.parametrize("args", BAD_INPUT, ids=[" ".join(a[:3]) for a in BAD_INPUT])
def test_bad_input_anywhere_gets_one_line_and_changes_nothing(db: Database, keyring: Keyring, tmp_path,
                                                               args) -> None:
    state = ("SELECT row((SELECT count(*) FROM reflect.requests), (SELECT count(*) FROM reflect.model_versions), "
             "(SELECT count(*) FROM reflect.promotion_decisions), (SELECT count(*) FROM reflect.apps))::text")
    before = db.scalar(state)
    out = cli(db, keyring, *(a.format(tmp=tmp_path) for a in args), timeout=120)
    assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") or (last.startswith("pgreflect ") and ": error: argument" in last), out.stderr
    assert db.scalar(state) == before and not any(tmp_path.iterdir())  # no half-written output either


def test_a_bad_value_in_the_environment_is_refused_like_the_flag(db: Database, keyring: Keyring) -> None:
    env = {**db.env(keyring), "PGREFLECT_LEASE_SECONDS": "sixty"}
    run = [sys.executable, "-m", "pgreflect.cli"]
    out = subprocess.run([*run, "worker", "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "argument --lease-seconds: 'sixty' is not an integer" in out.stderr
    # a command without that flag is not stopped by it
    assert subprocess.run([*run, "status"], env=env, capture_output=True, timeout=60).returncode == 0


def test_a_person_rejects_promotes_and_rolls_back_from_the_cli(db: Database, keyring: Keyring) -> None:
    out = cli(db, keyring, "models", "register", "cand-cli", "--backend", "noop", "--parent", "tiny")
    assert out.returncode == 0, out.stderr
    steps = [(("improve", "reject", "cand-cli", "--reason", "worse on our tickets"), "cand-cli: rejected"),
             (("improve", "promote", "cand-cli"), "cand-cli: promoted"),
             (("models", "rollback", "--reason", "users complained"), "active again: tiny")]
    for args, says in steps:
        out = cli(db, keyring, *args)
        assert out.returncode == 0 and says in out.stdout, (args, out.stdout, out.stderr)
    rows = db.scalar("SELECT jsonb_agg(jsonb_build_array(d.decision, d.reason, d.decided_by) ORDER BY d.id) "
                     "FROM reflect.promotion_decisions d JOIN reflect.model_versions mv ON mv.id = d.candidate_id "
                     "WHERE mv.name = 'cand-cli'")
    assert [r[:2] for r in rows] == [["reject", "worse on our tickets"], ["promote", "decided by " + rows[1][2]],
                                     ["rollback", "users complained"]]
    assert db.scalar("SELECT name FROM reflect.model_versions WHERE is_active") == "tiny"
    out = cli(db, keyring, "models", "list", "--json")
    listed = {v["name"]: v for v in json.loads(out.stdout)}
    assert listed["tiny"]["active"] and listed["tiny"]["state"] == "active"
    cand = listed["cand-cli"]
    assert (cand["parent"], cand["backend"], cand["active"], cand["last_decision"], cand["reason"]) == \
        ("tiny", "noop", False, "rollback", "users complained")
