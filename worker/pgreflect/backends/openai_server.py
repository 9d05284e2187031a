"""A model served by an OpenAI-compatible HTTP server (vLLM, llama.cpp's server, llama-cpp-python's
llama_cpp.server), through the official `openai` client. Each claimed request is one streamed chat completion
that asks for the log-probability of every generated token and its top alternatives; from those the worker
computes the same signals as for a local model.

What a remote server cannot give, and what follows:
- the hidden state after the answer: no `probe` signal (the calibrator imputes a missing feature with its
  training mean, so the confidence then rests on the other signals);
- the option distribution of a multiple-choice answer only over the alternatives the server returns at the
  letter's token (TOP_K, asked only when the prompt lists options): an option outside them counts as 0;
- P(True) from the top 20 alternatives of one token (yes/no are always among them when the model answers
  yes or no).
Per-token numbers are the server's own: llama.cpp and vLLM report log-softmax of the logits they sampled from.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import openai

from pgreflect.backends.base import BackendError, Cancelled, Generation, GenerationRequest
from pgreflect.prompts import CRITIQUE_MAX_TOKENS, CRITIQUE_SCHEMA, CRITIQUE_SYSTEM, P_TRUE_QUESTION, critique_prompt
from pgreflect.signals import choice_token, prompt_options

TOP_K = 10  # alternatives asked per token of a multiple-choice answer: enough for option letters (servers cap at 20)
FINISH = {"stop": "stop", "length": "length"}  # anything else (content_filter, tool_calls) ends like a stop
LOGPROB_FLOOR = -100.0  # some servers send -inf or -9999 for impossible tokens; the database takes finite values
T = TypeVar("T")


def alternatives_asked(prompt: str, asked_top: int = 0) -> int:
    """Alternatives per token the backend asks for: TOP_K when the prompt lists options (the option signals read
    them), else 1, the least for which llama.cpp's server still sends a token's own log-probability (with 0 it
    sends none). Every alternative is serialised, streamed and parsed for every token (bench/results/remote.md
    measures the call with and without them)."""
    return max(TOP_K if prompt_options(prompt) else 1, asked_top)


class OpenAIServerBackend:
    """One model on one server. Thread-safe: the worker runs several requests at once against it (the server
    batches them)."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 600.0,
                 retries: int = 4, backoff_s: float = 1.0):
        self.base_url, self.model = base_url, model
        self.retries, self.backoff_s = retries, backoff_s
        # Retries are ours (below), so that they stop when the worker cancels and never outlive the lease.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0,
                                    timeout=openai.Timeout(timeout_s, connect=10.0))

    # -- calls -----------------------------------------------------------------------------------------------
    def _call(self, call: Callable[[], T], cancel: threading.Event) -> T:
        """Runs `call`, retrying what another try can fix (connection errors, timeouts, 408/409/429/5xx) with
        exponential backoff while the worker has not cancelled. Errors say what failed, never what was asked:
        a server's message can quote the prompt."""
        delay, last = self.backoff_s, ""
        for attempt in range(self.retries + 1):
            if cancel.is_set():
                raise Cancelled()
            try:
                return call()
            except openai.APIConnectionError as exc:  # timeouts included
                last = type(exc).__name__
            except openai.APIStatusError as exc:
                code = _error_code(exc)
                if exc.status_code < 500 and exc.status_code not in (408, 409, 429):
                    raise BackendError(f"{self.base_url} refused the request: HTTP {exc.status_code}{code}",
                                       retryable=False) from None
                last = f"HTTP {exc.status_code}{code}"
            if attempt < self.retries and cancel.wait(delay):
                raise Cancelled()
            delay = min(delay * 2, 30.0)
        raise BackendError(f"{self.base_url} failed {self.retries + 1} times, the last with {last}")

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        p = request.params
        asked_top = int(p.get("top_logprobs") or 0) if p.get("logprobs") else 0
        kwargs: dict[str, Any] = {
            "model": self.model, "messages": request.messages(), "max_tokens": int(p["max_tokens"]),
            "temperature": float(p.get("temperature") or 0.0), "top_p": float(p.get("top_p") or 1.0),
            "logprobs": True, "top_logprobs": alternatives_asked(request.prompt, asked_top), "stream": True,
            "stream_options": {"include_usage": True},
        }
        if p.get("seed") is not None:
            kwargs["seed"] = int(p["seed"])
        if p.get("stop"):
            kwargs["stop"] = list(p["stop"])
        if p.get("top_k"):
            kwargs["extra_body"] = {"top_k": int(p["top_k"])}  # vLLM and llama.cpp accept it

        t0 = time.perf_counter()
        stream = self._call(lambda: self.client.chat.completions.create(**kwargs), cancel)
        text, texts, logprobs, tops = "", [], [], []
        finish, prompt_tokens, first_at = None, None, None
        try:
            for chunk in stream:
                if cancel.is_set():
                    raise Cancelled()
                if chunk.usage is not None:
                    prompt_tokens = chunk.usage.prompt_tokens
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if choice.logprobs is not None and choice.logprobs.content:
                    for t in choice.logprobs.content:
                        texts.append(t.token)
                        logprobs.append(_finite(t.logprob))
                        tops.append([(a.token, _finite(a.logprob)) for a in t.top_logprobs or []])
                if choice.delta.content:
                    first_at = first_at or time.perf_counter()
                    text += choice.delta.content
                    if request.on_text:
                        request.on_text(text)
                if choice.finish_reason:
                    finish = FINISH.get(choice.finish_reason, "stop")
        except Cancelled:
            raise
        except Exception as exc:  # the stream broke off (the HTTP library's own errors): the queue retries
            raise BackendError(f"{self.base_url} broke off the answer ({type(exc).__name__})") from None
        finally:
            stream.close()
        t1 = time.perf_counter()
        if finish is None:  # e.g. llama_cpp.server with interrupt_requests on cuts a stream for a newer request
            raise BackendError(f"{self.base_url} ended the answer without a finish reason (interrupted)")
        if text and not logprobs:
            raise BackendError(f"{self.base_url} returned no per-token log-probabilities: pgreflect needs a server "
                               "that supports `logprobs` (vLLM, llama.cpp's server, llama_cpp.server)",
                               retryable=False)
        first_at = first_at or t1
        options = prompt_options(request.prompt)
        return Generation(
            text=text, token_ids=[], token_logprobs=logprobs,
            prompt_tokens=prompt_tokens if prompt_tokens is not None else 0,
            finish_reason=finish, prompt_eval_s=first_at - t0, generation_s=t1 - first_at, token_texts=texts,
            option_probs=_option_probs(options, texts, tops, text) if options else None, state=None,
            top_logprobs=[top[:asked_top] for top in tops] if asked_top else None,
        )

    def p_true(self, request: GenerationRequest, generation: Generation) -> float | None:
        """P(yes) against P(no) for the same question as the local backend (prompts.P_TRUE_QUESTION), read from
        the top alternatives of the one token the server is asked for."""
        messages = [*request.messages(), {"role": "assistant", "content": generation.text},
                    {"role": "user", "content": P_TRUE_QUESTION}]
        out = self._call(lambda: self.client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20),
            threading.Event())
        content = out.choices[0].logprobs.content if out.choices and out.choices[0].logprobs else None
        if not content:
            return None
        mass = {"yes": 0.0, "no": 0.0}
        for alt in content[0].top_logprobs or []:
            word = alt.token.strip().lower()
            if word in mass:
                mass[word] += math.exp(_finite(alt.logprob))
        total = mass["yes"] + mass["no"]
        return mass["yes"] / total if total > 0 else None

    def critique(self, request: GenerationRequest, answer: str, cancel: threading.Event | None = None) -> str:
        """The same critique as the local backend, asked as a JSON object with its schema (llama.cpp's servers
        enforce the schema with a grammar; others return JSON without it); an answer that is not a critique
        becomes an "unsure" verdict."""
        messages = [{"role": "system", "content": CRITIQUE_SYSTEM},
                    {"role": "user", "content": critique_prompt(request.prompt, answer)}]
        out = self._call(lambda: self.client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=CRITIQUE_MAX_TOKENS, temperature=0.0,
            extra_body={"response_format": {"type": "json_object", "schema": CRITIQUE_SCHEMA}}),
            cancel or threading.Event())
        raw = (out.choices[0].message.content or "") if out.choices else ""
        try:
            parsed = json.loads(raw)
            if not isinstance(parsed, dict) or parsed.get("verdict") not in \
                    CRITIQUE_SCHEMA["properties"]["verdict"]["enum"]:
                raise ValueError("not a critique")
            return json.dumps(parsed)
        except ValueError:
            return json.dumps({"verdict": "unsure", "issues": ["the critique did not parse"], "suggested_fix": ""})

    def close(self) -> None:
        self.client.close()


def _finite(logprob: float | None) -> float:
    if logprob is None or math.isnan(logprob):
        return LOGPROB_FLOOR
    return min(0.0, max(LOGPROB_FLOOR, float(logprob)))


def _error_code(exc: openai.APIStatusError) -> str:
    """The error's code or type from the server's body (never its message, which may quote the prompt)."""
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body["error"] if isinstance(body.get("error"), dict) else body
    code = inner.get("code") or inner.get("type")
    return f" ({str(code)[:60]})" if code else ""


def _option_probs(options: str, texts: list[str], tops: list[list[tuple[str, float]]],
                  text: str) -> dict[str, float] | None:
    """The options' probabilities at the token that carries the answer's letter, renormalised over the
    options: each the summed probability of its spellings ("B", " B") among the returned alternatives."""
    at = choice_token(texts, text)
    if at is None or at >= len(tops):
        return None
    mass = dict.fromkeys(options, 0.0)
    for token, logprob in tops[at]:
        letter = token.strip()
        if letter in mass and token in (letter, " " + letter):
            mass[letter] += math.exp(logprob)
    total = sum(mass.values())
    return {letter: m / total for letter, m in mass.items()} if total > 0 else None
