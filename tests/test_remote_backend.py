"""The openai backend against a real OpenAI-compatible server: llama-cpp-python's own `llama_cpp.server` on
loopback, serving the same SmolLM2 GGUF the local backend loads, so the two can be compared number for number."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from pgreflect.backends import GenerationRequest
from pgreflect.backends.llama import LlamaBackend
from pgreflect.backends.openai_server import TOP_K, OpenAIServerBackend, alternatives_asked
from pgreflect.errors import InvalidInput, translate
from pgreflect.keys import Keyring
from pgreflect.sql import query

from conftest import Database, free_port
from helpers import BackgroundWorker, client, wait_for, worker
from tiny_model import smollm2_path

PARAMS = {"max_tokens": 12, "temperature": 0, "top_p": 1, "top_k": 0, "seed": None, "stop": []}
PROMPT = "What is the capital of France? Answer in one word."
CHOICE = "Which planet is known as the red planet?\nA. Venus\nB. Mars\nC. Jupiter\nD. Saturn\nAnswer with the letter."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` (the [server] extra) with SmolLM2 as model "smol"; its API root."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()),
                                 "--model_alias", "smol", "--host", "127.0.0.1", "--port", str(port),
                                 "--n_ctx", "2048", "--n_threads", "2",
                                 # its default cuts a running stream off when another request comes in
                                 "--interrupt_requests", "False"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"

    def up() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=120, interval=0.3, what="llama_cpp.server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def local() -> LlamaBackend:
    return LlamaBackend(smollm2_path(), n_ctx=2048, n_threads=2)


def test_log_probabilities_match_the_local_backend(server: str, local: LlamaBackend) -> None:
    """Same GGUF, same greedy answer; each token's log-probability within 0.25 nats of the local backend's
    (0.05 on average). Why not equal: llama.cpp's quantized kernels give batched and single-token evaluation
    slightly different numbers, and the server reuses its prompt cache differently (two identical calls to
    the same server already differ by up to ~0.1 nats here)."""
    remote = OpenAIServerBackend(server, "smol")
    for prompt in (PROMPT, CHOICE):
        req = GenerationRequest(prompt, None, {**PARAMS, "logprobs": True, "top_logprobs": 3})
        mine, theirs = local.generate(req, threading.Event()), remote.generate(req, threading.Event())
        assert theirs.text == mine.text and "".join(theirs.token_texts) == theirs.text
        assert len(theirs.token_logprobs) == len(mine.token_logprobs) > 0
        diffs = [abs(a - b) for a, b in zip(theirs.token_logprobs, mine.token_logprobs, strict=True)]
        assert max(diffs) < 0.25 and sum(diffs) / len(diffs) < 0.05, diffs
        assert theirs.finish_reason == mine.finish_reason and theirs.state is None  # no hidden state remotely
        assert theirs.top_logprobs is not None and [len(t) for t in theirs.top_logprobs] == [3] * len(diffs)
        assert [t[0][0] for t in theirs.top_logprobs] == theirs.token_texts  # greedy: the top one was chosen
    # The option distribution at the letter, and P(True), from the server's top alternatives.
    assert theirs.option_probs is not None and mine.option_probs is not None
    for letter, p in mine.option_probs.items():
        assert theirs.option_probs[letter] == pytest.approx(p, abs=0.05)
    p_local, p_remote = local.p_true(req, mine), remote.p_true(req, theirs)
    assert p_local is not None and p_remote == pytest.approx(p_local, abs=0.05)
    critique = json.loads(remote.critique(req, theirs.text))
    assert critique["verdict"] in ("correct", "partially_correct", "incorrect", "unsure")


def test_alternatives_are_asked_only_where_a_signal_reads_them(server: str, local: LlamaBackend) -> None:
    """A plain prompt asks for one alternative per token (the least for which llama.cpp's server still sends a
    token's own log-probability), a multiple-choice prompt for TOP_K: its option distribution reads them."""
    assert (alternatives_asked(PROMPT), alternatives_asked(CHOICE), alternatives_asked(PROMPT, 5)) == (1, TOP_K, 5)
    remote = OpenAIServerBackend(server, "smol")
    plain = GenerationRequest(PROMPT, None, PARAMS)
    theirs, mine = remote.generate(plain, threading.Event()), local.generate(plain, threading.Event())
    assert theirs.top_logprobs is None and len(theirs.token_logprobs) == len(mine.token_logprobs) > 0
    assert max(abs(a - b) for a, b in zip(theirs.token_logprobs, mine.token_logprobs, strict=True)) < 0.25
    choice = remote.generate(GenerationRequest(CHOICE, None, PARAMS), threading.Event())
    assert choice.option_probs is not None and sum(choice.option_probs.values()) == pytest.approx(1.0)


def _register(db: Database, name: str, url: str, model: str = "smol") -> None:
    with db.admin() as conn:
        try:
            conn.execute(query("register_remote_model"), {"name": name, "base_url": url, "remote_model": model,
                                                          "n_ctx": 2048, "parent": None, "activate": False})
        except Exception as exc:
            raise translate(exc) from exc  # type: ignore[arg-type]


def test_a_remote_version_answers_through_the_queue_exactly_once_with_two_workers(
        server: str, db: Database, keyring: Keyring) -> None:
    """Registered from the CLI, served by two workers with several requests in flight each: every request
    answered once, with the signals a remote server can give (log-probs, P(True), kind), no hidden state."""
    out = subprocess.run([sys.executable, "-m", "pgreflect.cli", "models", "register", "remote-smol", "--backend",
                          "openai", "--base-url", server + "/", "--remote-model", "smol"],
                         env=db.env(keyring), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = subprocess.run([sys.executable, "-m", "pgreflect.cli", "models", "list"], env=db.env(keyring),
                            capture_output=True, text=True, timeout=60).stdout
    assert f"smol at {server}" in next(line for line in listed.splitlines() if "remote-smol" in line)
    with client(db, keyring) as c:
        ids = [c.submit(f"Say the number {i}.", params={"max_tokens": 6, "temperature": 0},
                        model_version="remote-smol") for i in range(12)]
    config = {"backend": "openai", "model_versions": ["remote-smol"], "concurrency": 3, "memory": "off",
              "followups": False}
    with BackgroundWorker(worker(db, keyring, worker_id="remote-a", **config)), \
            BackgroundWorker(worker(db, keyring, worker_id="remote-b", **config)):
        wait_for(lambda: db.scalar("SELECT count(*) FROM reflect.requests WHERE state = 'succeeded'") == len(ids),
                 timeout=240, interval=0.2, what="every request answered")
    rows = db.scalar("SELECT jsonb_agg(jsonb_build_object('attempts', r.attempts, 'answers', "
                     "(SELECT count(*) FROM reflect.answers a WHERE a.request_id = r.id), 'signals', "
                     "(SELECT jsonb_object_agg(s.name, s.value) FROM reflect.answer_signals s "
                     "WHERE s.request_id = r.id))) FROM reflect.requests r WHERE r.id = ANY(%s)", (ids,))
    assert [(r["attempts"], r["answers"]) for r in rows] == [(1, 1)] * len(ids)
    assert all("p_true" in r["signals"] and "probe" not in r["signals"] for r in rows), rows
    answers = db.scalar("SELECT jsonb_agg(jsonb_build_array(logprob_min, logprob_mean, completion_tokens, "
                        "finish_reason)) FROM reflect.answers")
    assert all(n > 0 and lo <= mean + 1e-6 and mean <= 0 for lo, mean, n, _ in answers), answers
    assert db.scalar("SELECT count(DISTINCT worker_id) FROM reflect.answers") == 2
    with db.admin() as conn, pytest.raises(Exception, match="served by an OpenAI-compatible server"):
        conn.execute("SELECT reflect.request_finetune_v1('pgreflect_app', 'remote-smol')")


def test_an_unreachable_server_is_retried_then_the_attempt_fails_with_a_clear_reason(
        db: Database, keyring: Keyring) -> None:
    """Nothing listens at the URL: the backend tries 1 + remote_retries times with backoff, then the attempt
    fails and the request goes back to the queue with the reason (nothing lost)."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    _register(db, "nowhere", url)
    with client(db, keyring) as c:
        rid = c.submit("hello", model_version="nowhere")
    config = {"backend": "openai", "model_versions": ["nowhere"], "memory": "off", "remote_retries": 1}
    with BackgroundWorker(worker(db, keyring, **config)):
        wait_for(lambda: db.scalar("SELECT attempts >= 1 AND state = 'queued' FROM reflect.requests WHERE id = %s",
                                   (rid,)), timeout=60, interval=0.2, what="the failed attempt")
    state, error = db.scalar("SELECT ARRAY[state::text, last_error] FROM reflect.requests WHERE id = %s", (rid,))
    assert state == "queued"
    assert error == f"{url} failed 2 times, the last with APIConnectionError"


def test_a_slow_remote_answer_keeps_its_lease_and_is_answered_once(server: str, db: Database,
                                                                   keyring: Keyring) -> None:
    """A generation that outlasts the lease (2 s) several times over: the heartbeat extends it while the
    server works, so no other claim happens and the request is answered on its first attempt."""
    _register(db, "remote-slow", server)
    with client(db, keyring) as c:
        rid = c.submit("Write a long story about a dragon and a knight.",
                       params={"max_tokens": 400, "temperature": 0}, model_version="remote-slow")
    config = {"backend": "openai", "model_versions": ["remote-slow"], "memory": "off", "p_true": False,
              "followups": False, "lease_seconds": 2, "heartbeat_interval": 0.5, "reap_interval": 0.5}
    started = time.monotonic()
    with BackgroundWorker(worker(db, keyring, **config)), BackgroundWorker(worker(db, keyring, **config)):
        wait_for(lambda: db.scalar("SELECT state = 'succeeded' FROM reflect.requests WHERE id = %s", (rid,)),
                 timeout=240, interval=0.2, what="the long answer")
    took = time.monotonic() - started
    generation_s = db.scalar("SELECT generation_ms / 1000 FROM reflect.answers WHERE request_id = %s", (rid,))
    assert generation_s > 4, f"the answer took {generation_s:.1f} s: not long enough to test the lease"
    assert db.scalar("SELECT attempts FROM reflect.requests WHERE id = %s", (rid,)) == 1
    events = db.scalar("SELECT array_agg(event ORDER BY at) FROM reflect.request_events WHERE request_id = %s",
                       (rid,))
    assert "lease_expired" not in events and took >= generation_s


def test_register_refuses_credentials_in_the_url_and_a_changed_model(db: Database) -> None:
    _register(db, "remote-x", "http://127.0.0.1:9/v1")
    for name, url, model, message in (("remote-y", "http://user:secret@127.0.0.1:9/v1", "smol", "without credentials"),
                                      ("remote-y", "ftp://127.0.0.1/v1", "smol", r"http\(s\)://host"),
                                      ("remote-x", "http://127.0.0.1:9/v1", "other", "another model")):
        with pytest.raises(InvalidInput, match=message) as err:
            _register(db, name, url, model)
        assert "secret" not in str(err.value)
    assert db.scalar("SELECT count(*) FROM reflect.model_versions WHERE name LIKE 'remote-%'") == 1
