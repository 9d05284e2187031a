"""The llama.cpp backend: each generated token carries its own log-probability (not its neighbour's)."""

from __future__ import annotations

import itertools
import json
import threading

import llama_cpp
import numpy as np
import pytest

from pgreflect.backends import Cancelled, GenerationRequest
from pgreflect.backends.llama import LlamaBackend
from pgreflect.sampling import log_softmax

from tiny_model import smollm2_path

PARAMS = {"max_tokens": 40, "temperature": 0, "top_p": 1, "top_k": 0, "seed": None, "stop": []}


@pytest.fixture(scope="module")
def smollm2() -> LlamaBackend:
    return LlamaBackend(smollm2_path(), n_ctx=2048, n_threads=2)


def _reference_logprobs(prompt_tokens: list[int], generated: list[int]) -> np.ndarray:
    """An independent model instance with llama-cpp-python's own logits-for-every-position bookkeeping
    (logits_all=True, the `scores` matrix). It is fed the prompt as one batch and the answer token by token,
    as the generation was, because quantized kernels give batch and single-token evaluation slightly
    different numbers (up to 0.2 nats seen on SmolLM2 Q4_1)."""
    ref = llama_cpp.Llama(model_path=str(smollm2_path()), n_ctx=2048, n_threads=2, logits_all=True, verbose=False)
    ref.eval(prompt_tokens)
    for tok in generated:
        ref.eval([tok])
    p = len(prompt_tokens)
    # Row i of scores holds the distribution of token i + 1.
    return np.array([log_softmax(ref.scores[p + j - 1])[tok] for j, tok in enumerate(generated)])


def test_each_token_carries_its_own_logprob(smollm2: LlamaBackend) -> None:
    req = GenerationRequest("Name three colours of the rainbow.", None, PARAMS)
    gen = smollm2.generate(req, threading.Event())
    assert len(gen.token_ids) == len(gen.token_logprobs) > 10
    prompt_tokens = smollm2.prompt_tokens(req.messages())
    assert gen.prompt_tokens == len(prompt_tokens)
    ours = np.array(gen.token_logprobs)
    ref = _reference_logprobs(prompt_tokens, gen.token_ids)
    assert np.max(np.abs(ours - ref)) < 1e-3
    # The same values shifted by one position would be clearly wrong: the check can fail.
    assert np.mean(np.abs(ours[1:] - ref[:-1])) > 0.1
    assert np.all(ours <= 0)


def test_the_option_distribution_matches_an_independent_computation(smollm2: LlamaBackend) -> None:
    """The distribution over a multiple-choice prompt's options at the answer's letter token, against the
    reference instance's logits at that position, each option the summed probability of "X" and " X"."""
    from pgreflect.signals import choice_token, option_signals

    prompt = ("Which planet is known as the red planet?\nA. Venus\nB. Mars\nC. Jupiter\nD. Saturn\n"
              "Answer with only the letter.")
    req = GenerationRequest(prompt, None, {**PARAMS, "max_tokens": 4})
    gen = smollm2.generate(req, threading.Event())
    at = choice_token(gen.token_texts, gen.text)
    assert at is not None, gen.text  # SmolLM2 answers this with a letter
    assert gen.option_probs is not None and set(gen.option_probs) == set("ABCD")
    ref = llama_cpp.Llama(model_path=str(smollm2_path()), n_ctx=2048, n_threads=2, logits_all=True, verbose=False)
    prompt_tokens = smollm2.prompt_tokens(req.messages())
    ref.eval(prompt_tokens)
    for tok in gen.token_ids[:at]:
        ref.eval([tok])
    logp = log_softmax(ref.scores[len(prompt_tokens) + at - 1])
    mass = {}
    for letter in "ABCD":
        ids = {tuple(ref.tokenize(v.encode(), add_bos=False, special=False)) for v in (letter, " " + letter)}
        mass[letter] = sum(np.exp(logp[t[0]]) for t in ids if len(t) == 1)
    expected = {k: v / sum(mass.values()) for k, v in mass.items()}
    assert gen.option_probs == pytest.approx(expected, abs=1e-3)
    picked = max(expected, key=expected.get)
    assert picked in gen.text  # greedy decoding picked the most probable option
    signals = option_signals(gen.option_probs)
    assert signals["option_max_prob"] == pytest.approx(expected[picked], abs=1e-3)
    assert 0 <= signals["option_entropy"] <= 1 and 0 <= signals["option_margin"] <= 1
    # a prompt without options gets no distribution
    assert smollm2.generate(GenerationRequest("Say hi.", None, {**PARAMS, "max_tokens": 3}),
                            threading.Event()).option_probs is None


def test_the_answer_state_is_the_final_hidden_state_after_the_answer(smollm2: LlamaBackend) -> None:
    """The state the probe reads: an independent instance in embeddings mode (no pooling) fed the prompt and
    the answer gives the same final-layer vector at the answer's last evaluated token (the budget cuts the
    answer here: its last token is chosen, not evaluated); the position before is clearly another vector, so
    the check can fail."""
    req = GenerationRequest("Name three colours of the rainbow.", None, {**PARAMS, "max_tokens": 6})
    gen = smollm2.generate(req, threading.Event())
    assert gen.finish_reason == "length" and gen.state is not None and len(gen.state) == smollm2.n_embd
    ref = llama_cpp.Llama(model_path=str(smollm2_path()), n_ctx=2048, n_threads=2, embedding=True,
                          pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, verbose=False)
    ref.eval(smollm2.prompt_tokens(req.messages()))
    states = []
    for tok in gen.token_ids:
        ref.eval([tok])
        states.append(np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(ref.ctx, -1),
                                            shape=(smollm2.n_embd,)).copy())
    ours = np.array(gen.state)
    assert np.allclose(ours, states[-2], atol=1e-3 * np.abs(states[-2]).max())
    assert not np.allclose(ours, states[-3], atol=0.1 * np.abs(states[-2]).max())
    # the answer's log-probabilities are unchanged by the extra position (it comes after the last token)
    assert gen.token_logprobs == smollm2.generate(req, threading.Event()).token_logprobs


def test_prefix_reuse_gives_identical_results(smollm2: LlamaBackend) -> None:
    a = GenerationRequest("What is the capital of Italy?", "Answer briefly.", PARAMS)
    b = GenerationRequest("What is the capital of Spain?", "Answer briefly.", PARAMS)
    first_b = smollm2.generate(b, threading.Event())
    smollm2.generate(a, threading.Event())  # shares the system-prompt prefix with b
    second_b = smollm2.generate(b, threading.Event())
    assert second_b.text == first_b.text
    assert np.allclose(second_b.token_logprobs, first_b.token_logprobs, atol=1e-3)


def test_stop_sequence_trims_text_and_logprobs(smollm2: LlamaBackend) -> None:
    base = smollm2.generate(GenerationRequest("Count from 1 to 10, separated by commas.", None, PARAMS),
                            threading.Event())
    assert "5" in base.text
    stopped = smollm2.generate(
        GenerationRequest("Count from 1 to 10, separated by commas.", None, {**PARAMS, "stop": ["5"]}),
        threading.Event())
    assert stopped.finish_reason == "stop_sequence"
    assert stopped.text == base.text[: base.text.index("5")]
    assert len(stopped.token_logprobs) == len(stopped.token_ids) <= len(base.token_ids)
    assert stopped.token_logprobs == base.token_logprobs[: len(stopped.token_logprobs)]


@pytest.mark.parametrize("stop", [[], [", 5", "5"]])
def test_the_text_so_far_grows_towards_the_answer_and_never_shows_a_stop_sequence(smollm2: LlamaBackend,
                                                                                  stop: list[str]) -> None:
    """on_text (a streamed request): called as the text grows, every call a prefix of the final text, so a
    reader never sees what the answer will not contain, a stop sequence included."""
    seen: list[str] = []
    req = GenerationRequest("Count from 1 to 10, separated by commas.", None, {**PARAMS, "stop": stop},
                            on_text=seen.append)
    gen = smollm2.generate(req, threading.Event())
    assert len(seen) >= 5 and all(gen.text.startswith(t) for t in seen), (seen, gen.text)
    assert all(len(a) <= len(b) for a, b in itertools.pairwise(seen))
    if stop:  # held back: ", 5" could have begun at the last two characters of any text so far
        assert gen.finish_reason == "stop_sequence" and "5" not in seen[-1]
    else:
        assert seen[-1] == gen.text
    assert smollm2.generate(GenerationRequest(req.prompt, None, req.params), threading.Event()).text == gen.text


def test_sampling_is_reproducible_with_a_seed(smollm2: LlamaBackend) -> None:
    params = {**PARAMS, "temperature": 1.0, "top_p": 0.95, "seed": 7, "max_tokens": 20}
    req = GenerationRequest("Write a word.", None, params)
    assert smollm2.generate(req, threading.Event()).token_ids == smollm2.generate(req, threading.Event()).token_ids


def test_cancel_stops_generation(smollm2: LlamaBackend) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        smollm2.generate(GenerationRequest("Tell a story.", None, PARAMS), cancel)
    # The backend is still usable afterwards.
    after = smollm2.generate(GenerationRequest("Say hi.", None, {**PARAMS, "max_tokens": 3}), threading.Event())
    assert len(after.token_ids) == len(after.token_logprobs) == 3 and after.finish_reason == "length"


class _SetAfter(threading.Event):
    """An event that reads as set from its n-th check on: a cancel that arrives in the middle of a generation."""

    def __init__(self, n: int):
        super().__init__()
        self.checks, self.n = 0, n

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n or super().is_set()


def test_a_critique_stops_when_cancelled_and_the_backend_stays_usable(smollm2: LlamaBackend) -> None:
    """The critique (a follow-up a request may stop) checks its cancel between streamed tokens; stopping it
    half-way leaves the prefix cache's record in step with the context, and the next critique parses."""
    req = GenerationRequest("What is the capital of France?", None, PARAMS)
    cancel = _SetAfter(5)
    with pytest.raises(Cancelled):
        smollm2.critique(req, "Lyon.", cancel=cancel)
    assert cancel.checks == 5  # stopped at its fifth check, mid-stream, not at the end
    evaluated = [int(t) for t in smollm2.llm.input_ids[: smollm2.llm.n_tokens]]
    assert evaluated and smollm2._evaluated == evaluated
    after = json.loads(smollm2.critique(req, "Lyon."))
    assert after["verdict"] in ("correct", "partially_correct", "incorrect", "unsure")


def _lora_gguf(path, hidden: int, layers: int, rank: int = 4, scale: float = 0.5, seed: int = 0):  # type: ignore[no-untyped-def]
    """A GGUF LoRA as llama.cpp's converter writes it (general.type adapter, lora_a/lora_b per matrix)."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    for i in range(layers):
        for name in ("attn_q", "attn_v"):
            a = (rng.standard_normal((rank, hidden)) * scale).astype(np.float32)
            b = (rng.standard_normal((hidden, rank)) * scale).astype(np.float32)
            w.add_tensor(f"blk.{i}.{name}.weight.lora_a", a)
            w.add_tensor(f"blk.{i}.{name}.weight.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_adapters_switch_per_request_without_a_reload(tmp_path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    """One base, its adapter as a second version: each request gets its own adapter's answer, the base's answer
    is unchanged after the adapter ran (no stale KV cache across a switch), and an adapter made for another
    base is refused by llama.cpp."""
    from pgreflect.backends import BackendError

    from tiny_model import HIDDEN, LAYERS

    base = LlamaBackend(tiny_model, n_ctx=512, n_threads=2)
    try:
        adapter = base.with_adapter(_lora_gguf(tmp_path / "a.gguf", HIDDEN, LAYERS))
        request = GenerationRequest("Tell me a story.", None, {**PARAMS, "max_tokens": 12})
        plain = base.generate(request, threading.Event())
        adapted = adapter.generate(request, threading.Event())
        assert adapted.token_ids != plain.token_ids
        assert base.generate(request, threading.Event()).token_ids == plain.token_ids
        assert adapter.generate(request, threading.Event()).token_ids == adapted.token_ids
        with pytest.raises(BackendError, match="refused the adapter"):
            base.load_adapter(_lora_gguf(tmp_path / "other.gguf", HIDDEN * 2, LAYERS))
    finally:
        base.close()
