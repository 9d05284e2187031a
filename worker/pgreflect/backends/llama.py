"""llama-cpp-python backend with exact, cheap per-token log-probabilities.

Why not llama-cpp-python's own `logprobs=`: it needs logits_all=True, which keeps n_ctx x n_vocab floats
(1.2 GB for Qwen2.5 at n_ctx 2048) and sorts the whole vocabulary in Python per token (0.7-16 tok/s
measured), and its logprobs have been reported shifted by one position. This loop keeps
logits_all=False, reads the logits of the last evaluated position (llama_get_logits_ith(ctx, -1): the
distribution of the NEXT token), picks the token, records log_softmax(logits)[token] for THAT token,
then evaluates it. tests/test_llama_backend.py checks each value against an independent full-sequence
pass, so a shift by one position fails the test.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from pgreflect.backends.base import BackendError, Cancelled, Generation, GenerationRequest
from pgreflect.chat import ChatRenderer
from pgreflect.prompts import CRITIQUE_MAX_TOKENS, CRITIQUE_SCHEMA, CRITIQUE_SYSTEM, P_TRUE_QUESTION, critique_prompt
from pgreflect.sampling import choose_token, token_logprob, top_alternatives
from pgreflect.signals import OPTION_LETTERS, choice_token, prompt_options


def normalise_json(raw: str) -> str:
    """The grammar guarantees the structure, but its string rule lets raw control characters, escaped NULs
    and lone surrogates through, which strict JSON or jsonb refuse; re-serialising cleans them."""
    try:
        value = json.loads(raw, strict=False)
    except json.JSONDecodeError as exc:
        raise BackendError(f"critique is not JSON even with the grammar ({exc.msg})") from None
    text = json.dumps(value, ensure_ascii=False).replace("\\u0000", "")
    return text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become "?"


class LlamaBackend:
    name = "llama"
    one_at_a_time = True  # one context, one generation at a time (the lock): a waiting request waits for it

    def __init__(self, model_path: str | Path, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512):
        self.model_path = str(model_path)
        # llama-cpp-python decodes with cpu_count // 2 threads when given none (1 on a 2-core machine); the
        # worker's documented default is every core this process may use.
        n_threads = n_threads or len(os.sched_getaffinity(0))
        self.llm = llama_cpp.Llama(
            model_path=self.model_path, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads,
            n_threads_batch=n_threads, logits_all=False, verbose=False,
        )
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        self.n_embd = self.llm.n_embd()
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.chat = ChatRenderer(self.llm)
        self._lock = threading.Lock()
        self._yes_no: tuple[list[int], list[int]] | None = None
        self._letters: dict[str, list[int]] | None = None
        self._evaluated: list[int] = []  # tokens whose KV entries the context holds, for prefix reuse
        self._adapters: dict[str, Any] = {}  # LoRA file -> llama.cpp adapter handle, loaded once each
        self._adapter: str | None = None  # the adapter the context computes with now (None: the base)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        return self.chat.prompt_tokens(messages)

    # -- adapters ---------------------------------------------------------------------------------
    def load_adapter(self, path: str | Path) -> None:
        """Loads a GGUF LoRA for this base once; llama.cpp refuses one made for another architecture or
        shape (the database already ties an adapter to its base's sha256)."""
        key = str(path)
        with self._lock:
            if key in self._adapters:
                return
            handle = llama_cpp.llama_adapter_lora_init(self.llm.model, key.encode())
            if not handle:
                raise BackendError(f"llama.cpp refused the adapter {key} for {self.model_path} (another base?)",
                                   retryable=False)
            self._adapters[key] = handle

    def _select(self, adapter: str | None) -> None:
        """Switches the adapter the next evaluation uses (under the lock). The KV cache of a prefix computed
        under another adapter is not reused."""
        if adapter == self._adapter:
            return
        if adapter is None:
            rc = llama_cpp.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[adapter])
            scales = (ctypes.c_float * 1)(1.0)
            rc = llama_cpp.llama_set_adapters_lora(self.llm.ctx, handles, 1, scales)
        if rc != 0:
            raise BackendError(f"llama.cpp could not switch to adapter {adapter} (code {rc})")
        self._adapter = adapter
        self._evaluated = []
        self.llm.reset()

    def with_adapter(self, path: str | Path) -> AdapterView:
        self.load_adapter(path)
        return AdapterView(self, str(path))

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _last_logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _reusable_prefix(self, tokens: list[int]) -> int:
        """How many of these tokens' KV entries the context already holds (same system prompt / chat header, the
        answer before a P(True) question); at least one token is always left to evaluate so that fresh logits
        exist."""
        keep = 0
        for a, b in zip(self._evaluated, tokens[:-1], strict=False):
            if a != b:
                break
            keep += 1
        return keep

    def _eval_prompt(self, tokens: list[int]) -> None:
        keep = self._reusable_prefix(tokens)
        self.llm.n_tokens = keep
        self._evaluated = self._evaluated[:keep]
        self.llm.eval(tokens[keep:])
        self._evaluated.extend(tokens[keep:])

    def _eval_token(self, token: int) -> None:
        self.llm.eval([token])
        self._evaluated.append(token)

    def generate(self, request: GenerationRequest, cancel: threading.Event, adapter: str | None = None) -> Generation:
        with self._lock:
            try:
                self._select(adapter)
                return self._generate(request, cancel)
            except BaseException:
                self._evaluated = []  # the KV cache may not match any more: no prefix reuse next time
                raise

    def _generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        p = request.params
        tokens = self.prompt_tokens(request.messages())
        max_tokens = int(p["max_tokens"])
        if len(tokens) + 1 > self.n_ctx:
            raise BackendError(
                f"prompt is {len(tokens)} tokens; this model version's context is {self.n_ctx}",
                retryable=False,
            )
        budget = min(max_tokens, self.n_ctx - len(tokens))
        temperature = float(p.get("temperature") or 0.0)
        top_k = int(p.get("top_k") or 0)
        top_p = float(p.get("top_p") or 1.0)
        seed = p.get("seed")
        rng = np.random.default_rng(None if seed is None else int(seed))
        stops: list[str] = list(p.get("stop") or [])

        t0 = time.perf_counter()
        self._eval_prompt(tokens)
        t1 = time.perf_counter()

        options = prompt_options(request.prompt)
        letter_ids = self._letter_ids() if options else {}
        columns = [i for letter in options or "" for i in letter_ids.get(letter, [])]
        option_logits: list[np.ndarray] = []  # per step, the logits of the options' letter tokens (a few floats)
        # Only when asked (the OpenAI API's top_logprobs): a log-softmax over the vocabulary per token, ~1 ms.
        n_top = int(p.get("top_logprobs") or 0) if p.get("logprobs") else 0
        top_ids: list[list[tuple[int, float]]] = []
        out: list[int] = []
        logprobs: list[float] = []
        finish = "length"
        text_bytes = b""
        stop_at: int | None = None
        # A streamed request's text so far: decoded as the final text is (invalid bytes replaced; an incomplete
        # character waits for its next byte), less the characters that could still begin a stop sequence.
        streamed = ""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace") if request.on_text else None
        hold = max((len(s) for s in stops), default=1) - 1
        # The generation's single-token decodes also output the final-layer hidden state (a copy of n_embd
        # floats; nothing is recomputed), so the state after the answer's last evaluated token costs nothing. The
        # prompt's batch was evaluated without it: with embeddings on, llama.cpp outputs every position of a batch.
        evaluated = False
        llama_cpp.llama_set_embeddings(self.llm.ctx, True)
        try:
            for _ in range(budget):
                if cancel.is_set():
                    raise Cancelled()
                logits = self._last_logits()
                token = choose_token(logits, temperature, top_k, top_p, rng)
                if columns:
                    option_logits.append(logits[columns].astype(np.float64))
                if self.is_end_of_generation(token):
                    finish = "stop"
                    break
                out.append(token)
                logprobs.append(token_logprob(logits, token))
                if n_top:
                    top_ids.append(top_alternatives(logits, n_top))
                if stops or decoder:
                    piece = self.llm.detokenize([token], prev_tokens=out[:-1])
                if stops:
                    text_bytes += piece
                    decoded = text_bytes.decode("utf-8", errors="ignore")
                    hits = [i for i in (decoded.find(s) for s in stops) if i >= 0]
                    if hits:
                        stop_at = min(hits)
                        finish = "stop_sequence"
                        break
                if decoder and request.on_text:
                    streamed += decoder.decode(piece)
                    if len(streamed) > hold:
                        request.on_text(streamed[:len(streamed) - hold])
                if len(out) < budget:
                    self._eval_token(token)
                    evaluated = True
            state = self._last_state() if evaluated else None
        finally:
            llama_cpp.llama_set_embeddings(self.llm.ctx, False)
        t2 = time.perf_counter()

        text = self.llm.detokenize(out).decode("utf-8", errors="replace")
        if stop_at is not None:
            text = text[:stop_at]
            # Keep the log-probabilities of the tokens that produced the kept text only.
            kept = 0
            while kept < len(out) and len(
                self.llm.detokenize(out[: kept + 1]).decode("utf-8", errors="ignore")
            ) <= stop_at:
                kept += 1
            out, logprobs, top_ids = out[:kept], logprobs[:kept], top_ids[:kept]
        texts = self._token_texts(out)
        return Generation(
            text=text, token_ids=out, token_logprobs=logprobs, prompt_tokens=len(tokens),
            finish_reason=finish, prompt_eval_s=t1 - t0, generation_s=t2 - t1, token_texts=texts,
            option_probs=self._option_probs(options, letter_ids, option_logits, texts, text) if columns else None,
            state=state, top_logprobs=self._alternatives(out, top_ids) if n_top else None,
        )

    def _alternatives(self, out: list[int], top_ids: list[list[tuple[int, float]]]) -> list[list[tuple[str, float]]]:
        return [[(self.llm.detokenize([t], prev_tokens=out[:i]).decode("utf-8", errors="replace"), lp)
                 for t, lp in alternatives] for i, alternatives in enumerate(top_ids)]

    def _last_state(self) -> list[float] | None:
        """The final-layer hidden state (after the output norm) at the last evaluated position."""
        ptr = llama_cpp.llama_get_embeddings_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(float).tolist() if ptr else None

    def _letter_ids(self) -> dict[str, list[int]]:
        """Each option letter's single-token spellings ("B", " B"): the tokens a letter answer starts with."""
        if self._letters is None:
            letters: dict[str, list[int]] = {}
            for letter in OPTION_LETTERS:
                ids = {tuple(self.llm.tokenize(v.encode(), add_bos=False, special=False))
                       for v in (letter, " " + letter)}
                letters[letter] = sorted(t[0] for t in ids if len(t) == 1)
            self._letters = letters
        return self._letters

    @staticmethod
    def _option_probs(options: str | None, letter_ids: dict[str, list[int]], rows: list[np.ndarray],
                      texts: list[str], text: str) -> dict[str, float] | None:
        """The options' probabilities at the token that carries the answer's letter, each the summed
        probability of its spellings, renormalised over the options."""
        at = choice_token(texts, text)
        if options is None or at is None or at >= len(rows):
            return None
        row, mass, k = rows[at], {}, 0
        top = float(np.max(row))
        for letter in options:
            n = len(letter_ids.get(letter, []))
            mass[letter] = float(np.sum(np.exp(row[k:k + n] - top)))
            k += n
        total = sum(mass.values())
        return {letter: m / total for letter, m in mass.items()} if total > 0 else None

    def _token_texts(self, tokens: list[int]) -> list[str]:
        """Per-token text whose concatenation is the decoded answer (a multi-byte character split across
        tokens is attributed to the token that completes it)."""
        texts, pending = [], b""
        for i, token in enumerate(tokens):
            pending += self.llm.detokenize([token], prev_tokens=tokens[:i])
            try:
                texts.append(pending.decode("utf-8"))
                pending = b""
            except UnicodeDecodeError:
                texts.append("")
        return texts

    def p_true(self, request: GenerationRequest, generation: Generation, adapter: str | None = None,
               question: str = P_TRUE_QUESTION) -> float | None:
        """Asks the model, in the same conversation, whether its answer is correct, and reads P(yes) against
        P(no) from the next-token distribution: one forward pass over the question (the conversation so far
        is still in the KV cache), no free-text judging. `question` is for benchmarks of other wordings."""
        messages = [*request.messages(), {"role": "assistant", "content": generation.text},
                    {"role": "user", "content": question}]
        with self._lock:
            try:
                self._select(adapter)
                tokens = self.prompt_tokens(messages)
                if len(tokens) + 1 > self.n_ctx:
                    return None
                self._eval_prompt(tokens)
                logits = self._last_logits().astype(np.float64)
            except BaseException:
                self._evaluated = []
                raise
        yes, no = self._answer_token_ids()
        m = float(np.max(logits))
        p_yes = float(np.sum(np.exp(logits[yes] - m)))
        p_no = float(np.sum(np.exp(logits[no] - m)))
        return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else None

    def critique(self, request: GenerationRequest, answer: str, cancel: threading.Event | None = None,
                 adapter: str | None = None) -> str:
        """A second generation constrained by a grammar built from CRITIQUE_SCHEMA, through
        llama-cpp-python's own chat completion (grammar sampling); no log-probs are needed here. Streamed, so
        that `cancel` stops it at the next token (Cancelled)."""
        messages = [{"role": "system", "content": CRITIQUE_SYSTEM},
                    {"role": "user", "content": critique_prompt(request.prompt, answer)}]
        parts: list[str] = []
        with self._lock:
            try:
                self._select(adapter)
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                chunks = self.llm.create_chat_completion(
                    messages=messages, max_tokens=CRITIQUE_MAX_TOKENS, temperature=0.0, stream=True,
                    response_format={"type": "json_object", "schema": CRITIQUE_SCHEMA})
                try:
                    for chunk in chunks:
                        parts.append(chunk["choices"][0]["delta"].get("content") or "")
                        if cancel is not None and cancel.is_set():
                            raise Cancelled()
                finally:
                    chunks.close()
            finally:
                # create_chat_completion evaluated its own tokens: resynchronise the prefix cache.
                self._evaluated = [int(t) for t in self.llm.input_ids[: self.llm.n_tokens]]
        return normalise_json("".join(parts))

    def _answer_token_ids(self) -> tuple[list[int], list[int]]:
        if self._yes_no is None:
            def first_tokens(words: tuple[str, ...]) -> list[int]:
                ids = {self.llm.tokenize(w.encode(), add_bos=False, special=False)[0] for w in words}
                return sorted(ids)

            self._yes_no = (first_tokens(("yes", "Yes", " yes", " Yes", "YES")),
                            first_tokens(("no", "No", " no", " No", "NO")))
        return self._yes_no

    def memory_mb(self) -> float:
        """About what this model holds: its weights (mapped from the GGUF) and its context's state (KV cache)."""
        return (os.path.getsize(self.model_path) + llama_cpp.llama_state_get_size(self.llm.ctx)) / 2**20

    def close(self) -> None:
        with self._lock:
            for handle in self._adapters.values():
                llama_cpp.llama_adapter_lora_free(handle)
            self._adapters.clear()
            self.llm.close()


class AdapterView:
    """One adapter version served by a shared base: the base's model and context, with the adapter switched in
    for each call (no reload)."""

    name = "llama"
    one_at_a_time = True

    def __init__(self, base: LlamaBackend, adapter: str):
        self.base, self.adapter = base, adapter

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        return self.base.generate(request, cancel, adapter=self.adapter)

    def p_true(self, request: GenerationRequest, generation: Generation) -> float | None:
        return self.base.p_true(request, generation, adapter=self.adapter)

    def critique(self, request: GenerationRequest, answer: str, cancel: threading.Event | None = None) -> str:
        return self.base.critique(request, answer, adapter=self.adapter, cancel=cancel)

    def close(self) -> None:
        """The base owns the adapter's handle and frees it when it closes."""
