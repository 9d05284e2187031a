from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    system_prompt: str | None
    params: dict[str, Any]  # already validated and completed by reflect._normalize_params
    # Few-shot (question, answer) pairs from memory, put before the conversation as earlier turns.
    examples: tuple[tuple[str, str], ...] = ()
    # A conversation's earlier turns ({"role": "user" | "assistant", "content"}), before the prompt.
    history: tuple[dict[str, str], ...] = ()
    # Called with the answer's text so far as it grows (a streamed request): every character of it is in the
    # final text, in order (text that may yet turn out to be a stop sequence is held back).
    on_text: Callable[[str], None] | None = field(default=None, compare=False)

    def messages(self) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for question, answer in self.examples:
            out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out += [{"role": m["role"], "content": m["content"]} for m in self.history]
        out.append({"role": "user", "content": self.prompt})
        return out

    @property
    def max_tokens(self) -> int:
        return int(self.params["max_tokens"])


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    token_logprobs: list[float]  # log P(token_i | prompt, tokens_<i) for each generated token
    prompt_tokens: int
    finish_reason: str  # stop | length | stop_sequence
    prompt_eval_s: float
    generation_s: float
    token_texts: list[str] = field(default_factory=list)  # each generated token's text, when known
    # For a multiple-choice prompt answered with a letter: the next-token distribution over the options at the
    # token that carries the letter, renormalised over the options (pgreflect.signals.option_signals).
    option_probs: dict[str, float] | None = None
    # The final-layer hidden state after the answer (at its end-of-turn token), for the hidden-state probe.
    state: list[float] | None = None
    # When the request asks for top_logprobs: per generated token, its most likely alternatives (text, log-prob).
    top_logprobs: list[list[tuple[str, float]]] | None = None

    def token_records(self) -> list[dict[str, Any]]:
        """What a request that asks for logprobs stores (reflect.answer_tokens): each token's text and its top
        alternatives; the chosen tokens' log-probabilities are stored with the answer."""
        tops = self.top_logprobs or [[] for _ in self.token_texts]
        return [{"token": text, "top": [[t, lp] for t, lp in top]}
                for text, top in zip(self.token_texts, tops, strict=False)]


class BackendError(Exception):
    """A generation failed. retryable=False for errors that another attempt cannot fix."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class Cancelled(Exception):
    """The worker asked the generation to stop (shutdown, or the lease was lost)."""


class Backend(Protocol):
    name: str

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation: ...

    # True where generations run one at a time (one llama.cpp context): a request must not wait behind a follow-up.
    one_at_a_time: bool = False

    def critique(self, request: GenerationRequest, answer: str, cancel: threading.Event | None = None) -> str:
        """A JSON critique of the answer that always parses (prompts.CRITIQUE_SCHEMA); raises Cancelled when
        `cancel` is set before it is done."""
        ...

    def p_true(self, request: GenerationRequest, generation: Generation) -> float | None:
        """P(the model says its own answer is correct), or None when the backend cannot measure it."""
        ...

    def close(self) -> None: ...
