"""A backend that answers instantly without a model: for queue tests and benchmarks."""

from __future__ import annotations

import json
import threading

from pgreflect.backends.base import Cancelled, Generation, GenerationRequest


class NoopBackend:
    name = "noop"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        if self.delay_s and cancel.wait(self.delay_s):
            raise Cancelled()
        return Generation(text="ok", token_ids=[0], token_logprobs=[-0.01], prompt_tokens=1,
                          finish_reason="stop", prompt_eval_s=0.0, generation_s=0.0, token_texts=["ok"])

    def critique(self, request: GenerationRequest, answer: str, cancel: threading.Event | None = None) -> str:
        if self.delay_s and cancel is not None and cancel.wait(self.delay_s):
            raise Cancelled()
        return json.dumps({"verdict": "unsure", "issues": [], "suggested_fix": ""})

    def p_true(self, request: GenerationRequest, generation: Generation) -> float | None:
        return None

    def close(self) -> None:
        pass
