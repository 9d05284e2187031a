"""Between the OpenAI chat-completions shape and a pgreflect request: what a body asks for (validated as far as
the shape goes; the database validates every value, as for any app) and what a finished request looks like to
an OpenAI client, with pgreflect's own extension object under "pgreflect"."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class ApiError(Exception):
    """An error in the OpenAI error format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type_: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": {"message": self.message, "type": self.type, "param": self.param,
                                         "code": self.code}}
        if self.extra:
            out["pgreflect"] = self.extra
        return out


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_request")


# Accepted and ignored: they change nothing here, at the values that mean "off".
_NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "parallel_tool_calls": None,
            "store": False, "service_tier": None, "metadata": None}
_PASSED = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop"}
_SHAPE = {"model", "messages", "stream", "stream_options", "user", "logprobs", "top_logprobs", "response_format",
          "pgreflect"}


@dataclass
class ChatRequest:
    model: str
    prompt: str
    system_prompt: str | None
    params: dict[str, Any]
    history: list[dict[str, str]] = field(default_factory=list)  # earlier turns of a conversation
    stream: bool = False
    include_usage: bool = False
    caller: str | None = None
    logprobs: bool = False
    top_logprobs: int = 0


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{where}: only text content parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"{where}: content must be a string or a list of text parts", "messages")


def parse_chat(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for key, value in body.items():
        if key in _PASSED or key in _SHAPE:
            continue
        if key in _NEUTRAL:
            if value is not None and value != _NEUTRAL[key]:
                raise bad_request(f"{key}={json.dumps(value)} is not supported (only {json.dumps(_NEUTRAL[key])})",
                                  key)
            continue
        if key in ("tools", "functions", "tool_choice", "function_call"):
            raise bad_request("tools and function calling are not supported", key)
        raise bad_request(f"unknown parameter {key!r}", key)

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: a model version name (GET /v1/models lists them)", "model")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        text = _text(m.get("content"), f"messages[{i}]")
        if role in ("system", "developer"):
            if turns:
                raise bad_request(f"messages[{i}]: system messages must come first", "messages")
            system.append(text)
        elif role in ("user", "assistant"):
            if m.get("tool_calls"):
                raise bad_request(f"messages[{i}]: tool calls are not supported", "messages")
            turns.append({"role": role, "content": text})
        elif role in ("tool", "function"):
            raise bad_request(f"messages[{i}]: tools and function calling are not supported", "messages")
        else:
            raise bad_request(f"messages[{i}]: unknown role {role!r}", "messages")
    if not turns or turns[-1]["role"] != "user":
        raise bad_request("the last message must be the user's question", "messages")
    # The earlier turns go to the database as the request's history, which checks that they alternate.
    params: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens", "temperature", "top_p", "seed", "stop"):
        if body.get(key) is not None:
            params["max_tokens" if key == "max_completion_tokens" else key] = body[key]
    ext = body.get("pgreflect") or {}
    if not isinstance(ext, dict):
        raise bad_request("pgreflect must be an object of pgreflect generation parameters", "pgreflect")
    params.update(ext)  # memory, memory_k, low_confidence, confidence_threshold, top_k: checked by the database

    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise bad_request("only response_format {\"type\": \"text\"} is supported", "response_format")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("user must be a string", "user")
    logprobs = body.get("logprobs") or False
    top = body.get("top_logprobs") or 0
    if not isinstance(logprobs, bool):
        raise bad_request("logprobs must be true or false", "logprobs")
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20:
        raise bad_request("top_logprobs must be an integer from 0 to 20", "top_logprobs")
    if top and not logprobs:
        raise bad_request("top_logprobs needs logprobs=true", "top_logprobs")
    if logprobs:
        params.update(logprobs=True, top_logprobs=top)
    if stream:
        params["stream"] = True  # the worker publishes the text as it grows (reflect.report_partial_v1)
    return ChatRequest(model=model, prompt=turns[-1]["content"], history=turns[:-1],
                       system_prompt="\n\n".join(system) if system else None,
                       params=params, stream=stream, include_usage=bool(options.get("include_usage")),
                       caller=user or None, logprobs=logprobs, top_logprobs=top)


FINISH = {"stop": "stop", "length": "length", "stop_sequence": "stop"}


def extension(row: dict[str, Any]) -> dict[str, Any]:
    """pgreflect's own object on every answer."""
    return {"request_id": row["id"], "confidence": row.get("confidence"), "calibrated": row.get("calibrated"),
            "action": row.get("action"), "signals": row.get("signals") or {},
            "memory_used": row.get("memory_used"), "model_version": row.get("model_version")}


def message(row: dict[str, Any]) -> dict[str, Any]:
    """The assistant message. An abstention is a refusal with no content (the best guess stays in the
    extension), so a client that reads only "content" never takes it for an answer."""
    if row.get("action") == "abstain":
        return {"role": "assistant", "content": None,
                "refusal": f"pgreflect abstained: confidence {row.get('confidence') or 0:.3f} is below this "
                           "request's threshold"}
    return {"role": "assistant", "content": row.get("answer") or "", "refusal": None}


def usage(row: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(row.get("prompt_tokens") or 0), int(row.get("tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def logprobs(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI `logprobs` object from what the worker stored: each chosen token's exact log-probability
    (reflect.answers.token_logprobs) and text, and its most likely alternatives. A character split across tokens
    shows on the token that completes it (its text there, its bytes too)."""
    def entry(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = [{**entry(rec["token"], float(lp)), "top_logprobs": [entry(t, float(alp)) for t, alp in rec["top"]]}
               for rec, lp in zip(row.get("answer_tokens") or [], row.get("token_logprobs") or [], strict=False)]
    return {"content": content, "refusal": None}


def completion_id(request_id: int) -> str:
    return f"chatcmpl-pgr{request_id}"


def completion(row: dict[str, Any], with_logprobs: bool = False) -> dict[str, Any]:
    ext = extension(row)
    if row.get("action") == "abstain":
        ext["answer"] = row.get("answer")
    return {
        "id": completion_id(row["id"]), "object": "chat.completion", "created": int(row["created_at"].timestamp()),
        "model": row["model_version"], "system_fingerprint": None,
        "choices": [{"index": 0, "message": message(row), "logprobs": logprobs(row) if with_logprobs else None,
                     "finish_reason": FINISH.get(row.get("finish_reason") or "", "stop")}],
        "usage": usage(row), "pgreflect": ext,
    }


def chunk(request_id: int, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
          **more: Any) -> dict[str, Any]:
    choices = [{"index": 0, "delta": delta, "logprobs": more.pop("logprobs", None), "finish_reason": finish}]
    return {"id": completion_id(request_id), "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": choices, **more}


def parse_feedback(body: Any) -> dict[str, Any]:
    """POST /v1/feedback {"request_id" (or "id": "chatcmpl-pgrN"), "label": "correct" | "wrong",
    "rating": 1-5, "correction": text}."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    unknown = set(body) - {"request_id", "id", "label", "rating", "correction"}
    if unknown:
        raise bad_request(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
    rid: Any = body.get("request_id")
    if rid is None and isinstance(body.get("id"), str) and body["id"].startswith("chatcmpl-pgr"):
        rid = body["id"].removeprefix("chatcmpl-pgr")
    try:
        request_id = int(rid)
    except (TypeError, ValueError):
        raise bad_request("request_id (or the completion's id) is required", "request_id") from None
    label = body.get("label")
    if label not in (None, "correct", "wrong"):
        raise bad_request("label must be \"correct\" or \"wrong\"", "label")
    rating = body.get("rating")
    if rating is not None and (not isinstance(rating, int) or isinstance(rating, bool)):
        raise bad_request("rating must be an integer from 1 to 5", "rating")
    correction = body.get("correction")
    if correction is not None and not isinstance(correction, str):
        raise bad_request("correction must be a string", "correction")
    if correction is not None and label is None:
        label = "wrong"  # a correction says the answer was wrong
    return {"request_id": request_id, "is_correct": None if label is None else label == "correct",
            "rating": rating, "correction": correction, "source": "human"}
