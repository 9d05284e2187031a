"""The OpenAI-compatible HTTP API as its users meet it: `pgreflect serve` in its own process, API keys made with
`pgreflect apikeys`, and the official `openai` Python client (not a client written here). Each test runs a real
worker against a fresh database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import openai
import psycopg
import pytest

from pgreflect.keys import Keyring

from conftest import Database
from helpers import wait_for
from serving import live_worker, served

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_openai_client_asks_streams_and_gets_pgreflects_extension(db: Database, keyring: Keyring,
                                                                      tmp_path: Path) -> None:
    with served(db, keyring, tmp_path) as s:
        key = s.key("demo")
        with live_worker(db, keyring, s.env["PGREFLECT_HOME"]):
            client = s.client(key)
            assert "tiny" in [m.id for m in client.models.list()]
            got = client.chat.completions.create(
                model="tiny", max_tokens=8, temperature=0, seed=3,
                messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}])
            ext = got.model_extra["pgreflect"]
            request_id = ext["request_id"]
            row = db.scalar("SELECT jsonb_build_object('by', submitted_by, 'params', params, 'caller', caller) "
                            "FROM reflect.requests WHERE id = %s", (request_id,))
            assert row["by"] == "app_demo" and row["caller"] == "api"
            assert row["params"]["max_tokens"] == 8 and row["params"]["seed"] == 3
            assert got.choices[0].message.content and got.choices[0].finish_reason in ("stop", "length")
            assert got.model == "tiny" and got.usage.completion_tokens > 0
            assert 0 <= ext["confidence"] <= 1 and isinstance(ext["signals"], dict) and "action" in ext

            # The same question streamed: the same text at temperature 0, ending with the extension.
            chunks = list(client.chat.completions.create(
                model="tiny", max_tokens=8, temperature=0, seed=3, stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == got.choices[0].message.content
            finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
            assert len(finals) == 1 and finals[0].model_extra["pgreflect"]["request_id"] != request_id
            assert chunks[-1].usage.completion_tokens == got.usage.completion_tokens

            # The same Idempotency-Key returns the original request, whatever the body.
            first = client.chat.completions.create(model="tiny", max_tokens=4, messages=[
                {"role": "user", "content": "one"}], extra_headers={"Idempotency-Key": "order-7"})
            again = client.chat.completions.create(model="tiny", max_tokens=4, messages=[
                {"role": "user", "content": "two"}], extra_headers={"Idempotency-Key": "order-7"})
            assert first.model_extra["pgreflect"]["request_id"] == again.model_extra["pgreflect"]["request_id"]
            assert s.requests() == 3

            # Feedback on one's own answer: a label and a correction, through feedback_v1.
            r = httpx.post(s.base_url + "/feedback", headers={"Authorization": f"Bearer {key}"},
                           json={"id": got.id, "label": "wrong", "correction": "Hello."})
            assert r.status_code == 200, r.text
            assert db.scalar("SELECT is_correct FROM reflect.feedback WHERE request_id = %s", (request_id,)) is False
    server_log = s.log.read_text()
    assert key not in server_log and key.split("-")[2] not in db.cluster.log_file.read_text(errors="replace")


def test_a_streamed_answer_arrives_as_it_is_generated(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """stream=true: the worker publishes the text so far (here after every token) and the server sends each new
    part as it comes, so the answer arrives in several events that add up to the same text as unstreamed. With
    low_confidence=abstain nothing is published (the text could still be withheld): it arrives whole."""
    ask = {"model": "tiny", "max_tokens": 48, "temperature": 0,
           "messages": [{"role": "user", "content": "Tell me a long story about a dragon"}]}
    with served(db, keyring, tmp_path) as s:
        client = s.client(s.key("demo"))
        with live_worker(db, keyring, s.env["PGREFLECT_HOME"], stream_interval_s=0.0):
            whole = client.chat.completions.create(**ask)  # type: ignore[call-overload]
            parts = [c.choices[0].delta.content for c in client.chat.completions.create(**ask, stream=True)
                     if c.choices and c.choices[0].delta.content]
            held = [c for c in client.chat.completions.create(**ask, stream=True, extra_body={
                "pgreflect": {"low_confidence": "abstain", "confidence_threshold": 0}}) if c.choices]
    assert whole.usage.completion_tokens >= 8, whole  # enough tokens to publish several times
    assert "".join(parts) == whole.choices[0].message.content
    assert len(parts) >= 2, parts
    assert [c.choices[0].delta.content for c in held if c.choices[0].delta.content] == \
        [whole.choices[0].message.content]
    assert db.scalar("SELECT count(*) FROM reflect.partial_answers") == 0
    assert db.scalar("SELECT count(*) FILTER (WHERE (params ->> 'stream')::boolean) FROM reflect.requests") == 2


def test_errors_come_in_the_openai_format_and_a_refused_request_writes_nothing(db: Database, keyring: Keyring,
                                                                                tmp_path: Path) -> None:
    with served(db, keyring, tmp_path) as s:
        key = s.key("demo")
        client = s.client(key)
        ask = {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(openai.AuthenticationError) as e:
            s.client("pgr-000000000000-" + "0" * 48).chat.completions.create(model="tiny", **ask)
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            s.client(key[:-1] + ("0" if key[-1] != "0" else "1")).models.list()
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="gpt-4o", **ask)
        assert e.value.code == "model_not_found"
        # No worker is running: a clear 503, nothing queued.
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="tiny", **ask)
        assert e.value.status_code == 503 and "no live worker" in e.value.message
        with live_worker(db, keyring, s.env["PGREFLECT_HOME"]):
            for bad, what in [({"temperature": 5}, "temperature must be between"),
                              ({"top_p": "high"}, "top_p must be a number"),
                              ({"stop": ["a"] * 5}, "stop must be"),
                              ({"n": 2}, "n=2 is not supported"),
                              ({"tools": []}, "tools and function calling"),
                              ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "c"}]},
                               "history must end with an assistant message"),
                              ({"messages": [{"role": "assistant", "content": "a"},
                                             {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]},
                               "history[0]: expected a user message"),
                              ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                               "the last message must be the user's question"),
                              ({"messages": [{"role": "tool", "content": "a"}]}, "tools and function calling"),
                              ({"messages": [{"role": "user", "content": "   "}]}, "prompt must not be empty"),
                              ({"extra_body": {"pgreflect": {"memory_k": 99}}}, "memory_k must be between")]:
                args = {**ask, **bad}
                extra = args.pop("extra_body", None)
                with pytest.raises(openai.BadRequestError) as e:
                    client.chat.completions.create(model="tiny", extra_body=extra, **args)  # type: ignore[arg-type]
                assert what in e.value.message, (bad, e.value.message)
            r = httpx.post(s.base_url + "/chat/completions", content=b"{not json",
                           headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            assert r.status_code == 400 and r.json()["error"]["message"] == "the request body is not valid JSON"
            assert s.requests() == 0

            # A conversation: the earlier turns are stored encrypted with the request and reach the model.
            turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "My name is Ada."},
                     {"role": "assistant", "content": "Hello Ada."}, {"role": "user", "content": "What is my name?"}]
            chat = client.chat.completions.create(model="tiny", max_tokens=4, messages=turns)  # type: ignore[arg-type]
            single = client.chat.completions.create(model="tiny", max_tokens=4, messages=[turns[0], turns[3]])  # type: ignore[list-item]
            assert chat.usage.prompt_tokens > single.usage.prompt_tokens + 6
            rid = chat.model_extra["pgreflect"]["request_id"]
            assert db.scalar("SELECT params ->> 'history_turns' FROM reflect.requests WHERE id = %s", (rid,)) == "2"
            assert b"Ada" not in bytes(db.scalar("SELECT history_enc FROM reflect.requests WHERE id = %s", (rid,)))
            assert s.requests() == 2
            # A request the model cannot answer fails with the worker's reason (its context is 4,096 tokens).
            with pytest.raises(openai.InternalServerError, match="context is 4096") as e:
                client.chat.completions.create(model="tiny", max_tokens=4,
                                               messages=[{"role": "user", "content": "word " * 6000}])
            assert e.value.status_code == 500 and e.value.code == "generation_failed"
            assert s.requests() == 3
            ok = client.chat.completions.create(model="tiny", extra_body={"pgreflect": {"memory": False}}, **ask)
            assert s.requests() == 4 and ok.choices[0].message.content is not None

        # Guessing keys: past 20 failures a minute, the address is refused before any key reaches the database.
        codes = [httpx.get(s.base_url + "/models", headers={"Authorization": f"Bearer pgr-{i:012x}-{'0' * 48}"}
                           ).status_code for i in range(21)]
        assert codes == [401] * 18 + [429] * 3  # two keys failed above: 20 in all, then refused
        r = httpx.get(s.base_url + "/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"


def test_an_app_sees_only_its_own_requests_and_a_revoked_key_stops_at_once(db: Database, keyring: Keyring,
                                                                          tmp_path: Path) -> None:
    with served(db, keyring, tmp_path) as s:
        mine, theirs = s.key("mine"), s.key("theirs")
        second = s.key("mine-2", app="mine")  # a second key for the same app
        with live_worker(db, keyring, s.env["PGREFLECT_HOME"]):
            got = s.client(mine).chat.completions.create(model="tiny", max_tokens=4,
                                                         messages=[{"role": "user", "content": "hi"}])
        request_id = got.model_extra["pgreflect"]["request_id"]
        label = {"request_id": request_id, "label": "correct"}
        r = httpx.post(s.base_url + "/feedback", headers={"Authorization": f"Bearer {theirs}"}, json=label)
        assert r.status_code == 404 and "not yours" in r.json()["error"]["message"]
        r = httpx.post(s.base_url + "/feedback", headers={"Authorization": f"Bearer {second}"}, json=label)
        assert r.status_code == 200

        listed = json.loads(s.cli("apikeys", "list", "--json").stdout)
        assert {(k["name"], k["app"]) for k in listed} == {("mine", "mine"), ("theirs", "theirs"), ("mine-2", "mine")}
        assert all(k["last_used_at"] for k in listed)
        # only a bcrypt hash is stored
        assert db.scalar("SELECT bool_and(secret_hash LIKE '$2a$%%') FROM reflect.api_keys")
        assert mine.split("-")[2] not in json.dumps(db.scalar("SELECT jsonb_agg(k) FROM reflect.api_keys k"))

        assert len(s.client(mine).models.list().data) >= 1  # verified and remembered by the server
        assert s.cli("apikeys", "revoke", "mine").returncode == 0
        deadline = time.monotonic() + 5
        with pytest.raises(openai.AuthenticationError):  # forgotten at once (NOTIFY), not after remember_s
            while time.monotonic() < deadline:
                s.client(mine).models.list()
                time.sleep(0.1)
        assert len(s.client(second).models.list().data) >= 1  # the app's other key still works


def test_a_slow_answer_times_out_with_504_and_the_same_idempotency_key_fetches_it(db: Database, keyring: Keyring,
                                                                                 tmp_path: Path) -> None:
    with served(db, keyring, tmp_path, timeout=1) as s:
        key = s.key("demo")
        client = s.client(key)
        with psycopg.connect(db.dsn(), autocommit=True) as conn:  # a worker that looks live but takes nothing
            conn.execute("INSERT INTO reflect.workers (worker_id, hostname, pid, model_version_ids) "
                         "SELECT 'fake', 'nowhere', 1, ARRAY[id] FROM reflect.model_versions WHERE name = 'tiny'")
        ask = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
               "extra_headers": {"Idempotency-Key": "slow-1"}}
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(**ask)  # type: ignore[arg-type]
        assert e.value.status_code == 504 and "still queued" in e.value.message
        with live_worker(db, keyring, s.env["PGREFLECT_HOME"]):
            wait_for(lambda: db.scalar("SELECT state = 'succeeded' FROM reflect.requests"), what="the answer")
        with psycopg.connect(db.dsn(), autocommit=True) as conn:
            conn.execute("DELETE FROM reflect.workers WHERE worker_id = 'fake'")
        assert not db.scalar("SELECT reflect.live_worker_count_v1('tiny')")
        # no worker is live now, but this key's request exists: it is returned, not refused with 503
        got = client.chat.completions.create(**ask)  # type: ignore[arg-type]
        assert s.requests() == 1 and got.choices[0].message.content is not None
        with pytest.raises(openai.InternalServerError, match="no live worker"):
            client.chat.completions.create(**{**ask, "extra_headers": {"Idempotency-Key": "slow-2"}})  # type: ignore[arg-type]
        assert s.requests() == 1


def test_a_full_queue_answers_429_and_writes_nothing(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    with served(db, keyring, tmp_path, timeout=1) as s:
        client = s.client(s.key("demo"))
        with psycopg.connect(db.dsn(), autocommit=True) as conn:  # a worker that looks live but takes nothing
            conn.execute("INSERT INTO reflect.workers (worker_id, hostname, pid, model_version_ids) "
                         "SELECT 'fake', 'nowhere', 1, ARRAY[id] FROM reflect.model_versions WHERE name = 'tiny'")
            conn.execute("UPDATE reflect.settings SET value = '1' WHERE key = 'max_queued_per_version'")
        ask = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(**ask)  # type: ignore[arg-type]
        assert e.value.status_code == 504  # queued, not answered: the queue is now full
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(**ask)  # type: ignore[arg-type]
        assert e.value.code == "queue_full" and "its limit: retry later" in e.value.message
        assert s.requests() == 1


def test_logprobs_are_the_stored_per_token_log_probabilities_with_their_top_alternatives(
        db: Database, keyring: Keyring, tmp_path: Path) -> None:
    with served(db, keyring, tmp_path) as s:
        client = s.client(s.key("demo"))
        with live_worker(db, keyring, s.env["PGREFLECT_HOME"]):
            got = client.chat.completions.create(model="tiny", max_tokens=6, temperature=0, logprobs=True,
                                                 top_logprobs=3, messages=[{"role": "user", "content": "Count"}])
            plain = client.chat.completions.create(model="tiny", max_tokens=6, temperature=0,
                                                   messages=[{"role": "user", "content": "Count"}])
            streamed = list(client.chat.completions.create(
                model="tiny", max_tokens=6, temperature=0, logprobs=True, top_logprobs=2, stream=True,
                messages=[{"role": "user", "content": "Count"}]))
    request_id = got.model_extra["pgreflect"]["request_id"]
    stored = db.scalar("SELECT token_logprobs FROM reflect.answers WHERE request_id = %s", (request_id,))
    content = got.choices[0].logprobs.content
    assert len(content) == got.usage.completion_tokens == len(stored) > 0
    assert "".join(t.token for t in content) == got.choices[0].message.content
    for t, lp in zip(content, stored, strict=True):
        assert t.logprob == pytest.approx(lp, abs=1e-6) and t.bytes == list(t.token.encode())
        assert len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        # greedy: the chosen token is the most likely one, with the same log-probability
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-4)
    assert plain.choices[0].logprobs is None
    assert db.scalar("SELECT count(*) FROM reflect.answer_tokens") == 2  # only the requests that asked
    assert got.choices[0].message.content.encode() not in bytes(
        db.scalar("SELECT tokens_enc FROM reflect.answer_tokens WHERE request_id = %s", (request_id,)))
    with_lp = [c for c in streamed if c.choices and c.choices[0].logprobs]
    assert len(with_lp) == 1 and [len(t.top_logprobs) for t in with_lp[0].choices[0].logprobs.content] == [2] * len(
        content)


def test_the_readme_openai_example_runs_as_written(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = [b for b in blocks if "# readme-test: openai-example" in b]
    assert len(code) == 1
    with served(db, keyring, tmp_path) as s:
        key = s.key("my_app")
        with live_worker(db, keyring, s.env["PGREFLECT_HOME"]):
            ran = subprocess.run([sys.executable, "-c", code[0]], capture_output=True, text=True, timeout=120,
                                 env={"PATH": os.environ["PATH"], "PGREFLECT_API_URL": s.base_url,
                                      "PGREFLECT_API_KEY": key})
    assert ran.returncode == 0, ran.stderr
    assert "'request_id': 1" in ran.stdout and "'confidence'" in ran.stdout
    assert db.scalar("SELECT submitted_by FROM reflect.requests") == "app_my_app"  # model "default": the active one
    assert db.scalar("SELECT mv.name FROM reflect.requests r JOIN reflect.model_versions mv "
                     "ON mv.id = r.model_version_id") == "tiny"


def test_the_openai_shapes_without_a_server() -> None:
    from pgreflect.service import openai_shape as shape

    chat = shape.parse_chat({"model": "m", "messages": [
        {"role": "developer", "content": "sys"}, {"role": "user", "content": [{"type": "text", "text": "q1"}]},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}],
        "max_completion_tokens": 5, "logprobs": True, "top_logprobs": 2, "user": "u", "n": 1,
        "pgreflect": {"memory": False}})
    assert (chat.prompt, chat.system_prompt, chat.caller) == ("q2", "sys", "u")
    assert chat.history == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    assert chat.params == {"max_tokens": 5, "memory": False, "logprobs": True, "top_logprobs": 2}
    for bad, message in [({"messages": []}, "non-empty"), ({"model": ""}, "model is required"),
                         ({"top_logprobs": 2}, "needs logprobs"), ({"stream": "yes"}, "true or false"),
                         ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text content"),
                         ({"response_format": {"type": "json_object"}}, "response_format")]:
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}], **bad}
        with pytest.raises(shape.ApiError, match=message) as e:
            shape.parse_chat(body)
        assert e.value.status == 400

    assert shape.parse_feedback({"id": "chatcmpl-pgr12", "correction": "x"}) == {
        "request_id": 12, "is_correct": False, "rating": None, "correction": "x", "source": "human"}
    assert shape.parse_feedback({"request_id": 3, "label": "correct", "rating": 5})["is_correct"] is True
    for bad in ({"label": "maybe", "request_id": 1}, {"id": "other-1"}, {"request_id": 1, "rating": True},
                {"request_id": 1, "extra": 1}):
        with pytest.raises(shape.ApiError):
            shape.parse_feedback(bad)

    row = {"answer_tokens": [{"token": "Hé", "top": [["Hé", -0.1], ["He", -2.5]]}], "token_logprobs": [-0.1]}
    lp = shape.logprobs(row)["content"][0]
    assert lp["bytes"] == list("Hé".encode()) and [t["token"] for t in lp["top_logprobs"]] == ["Hé", "He"]
