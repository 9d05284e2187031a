"""Fitting a training run into memory beside PostgreSQL and serving, and saying what was done.

Before each training attempt the fine-tune job estimates the trainer's peak RSS from the model's shape and
the largest padded batch the run will see, and compares it with the memory the machine can give
(MemAvailable, or the cgroup's limit when that is tighter) minus a reserve left to PostgreSQL and the OS
(setting finetune_memory_reserve_mb). In order, it trains:
  1. beside serving, when the estimate fits;
  2. with gradient checkpointing (~1.6x the time per step, a fraction of the activations), when that fits;
  3. after stopping serving on this worker (its models unloaded, reloaded when training ends), when that
     fits (setting finetune_pause_serving = auto; `always` pauses serving for every training run);
  4. not at all: the attempt fails with the numbers and what to change.
The decision and its numbers go to reflect.training_memory (and the training_status view), and the log.

The trainer child also gets the highest OOM score, so should an estimate be wrong, the kernel's OOM killer
takes the trainer (its job resumes from the last checkpoint) rather than PostgreSQL or the serving worker.

Estimate constants: fitted on one run of the default model (Qwen2.5-1.5B twin, 28 layers, hidden 1536, MLP
8960; bench/results/improve-memory.md), checked on other runs there and on the tiny test model
(tests/test_improve.py). An estimate errs; the watch while training and the OOM score are the backstops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1024 * 1024
RUNTIME_MB = 900.0  # python, torch, transformers, peft, the tokenizer's vocabulary (RSS before any weight is read)
# Saved activations per token and layer, in floats, without checkpointing: the inputs of the seven adapted
# projections, the MLP's intermediate tensors, norms, residuals, attention probabilities (heads x sequence).
# SLACK scales that count to the measured peak: 1.92 on the default model (bench/results/improve-memory.md,
# answer-token logits, 788-token batches: 16.3 GB), which covers autograd's extra copies and the allocator's
# fragmentation over steps of varying shapes.
SLACK = 1.92
# With checkpointing each layer's input is kept, and at the peak (a layer recomputed and differentiated, the
# loss's tensors) about this many layers' worth of activations are live: fitted on the same run (10.7 GB).
CHECKPOINT_LAYERS_LIVE = 9
LOGIT_COPIES = 3  # logits at the answer tokens, their softmax and its gradient


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    params: int


@dataclass(frozen=True)
class Estimate:
    total_mb: float
    weights_mb: float
    activations_mb: float
    build_twin_mb: float  # the one-time twin build's peak (0 when the twin exists)
    tokens_per_step: int  # the largest padded batch (batch x longest sequence in it)
    answer_tokens_per_step: int
    gradient_checkpointing: bool


@dataclass(frozen=True)
class Decision:
    decision: str  # alongside | checkpointing | paused_serving | refused
    gradient_checkpointing: bool
    pause_serving: bool
    estimate: Estimate
    available_mb: float
    reserve_mb: float
    detail: str


def available_mb() -> float:
    """What can be allocated now without swapping: MemAvailable (reclaimable page cache included), or what
    is left under this process's cgroup memory limit when that is less."""
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    avail = info["MemAvailable"] / 1024
    try:
        own = Path("/proc/self/cgroup").read_text().strip().split("::")[-1]  # cgroup v2: "0::/path"
        cgroup = Path("/sys/fs/cgroup") / own.lstrip("/")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            avail = min(avail, (int(limit) - used) / MB)
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable: MemAvailable it is
    return max(0.0, avail)


def shape_of(gguf: Path) -> Shape:
    """From the GGUF's header (llama.cpp reads only the vocabulary and metadata, in about a second)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        meta, vocab = llm.metadata, llm.n_vocab()
    finally:
        llm.close()
    arch = meta["general.architecture"]

    def num(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}")
        if value is None and default is None:
            raise KeyError(f"{gguf.name} has no {arch}.{key} in its metadata")
        return int(value) if value is not None else int(default)  # type: ignore[arg-type]

    layers, hidden, inter, heads = (num("block_count"), num("embedding_length"), num("feed_forward_length"),
                                    num("attention.head_count"))
    kv = hidden * num("attention.head_count_kv", heads) // heads
    # the twin's parameters: attention, MLP, and embeddings counted twice (a twin may keep lm_head untied)
    params = layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter) + 2 * vocab * hidden
    return Shape(layers, hidden, inter, heads, vocab, params)


def padded_batches(examples: list[dict[str, Any]], gguf: Path, hp: dict[str, Any]) -> tuple[int, int, int]:
    """(largest batch x width, that batch's answer tokens, longest sequence) over the run's fixed batch plan,
    tokenized as the trainer will (pgreflect.improve.train)."""
    from pgreflect.improve.train import batches, select_examples, tokenize

    chosen = select_examples([e for e in examples if e["split"] == "train"], float(hp["replay_ratio"]), int(hp["seed"]))
    if not chosen:
        return 0, 0, 0
    data = tokenize(chosen, str(gguf), int(hp["max_seq_len"]))
    worst, answers, longest = 0, 0, 0
    for batch in batches(len(data), int(hp["batch_size"]), float(hp["epochs"]), int(hp["seed"])):
        width = max(len(data[i][0]) + len(data[i][1]) for i in batch)
        longest = max(longest, width)
        if len(batch) * width > worst:
            worst, answers = len(batch) * width, sum(len(data[i][1]) for i in batch)
    return worst, answers, longest


@dataclass(frozen=True)
class Inputs:
    """What an estimate reads from disk and the tokenizer, read once for both checkpointing modes."""

    shape: Shape
    weights_mb: float
    built: bool
    tokens: int
    answers: int
    longest: int


def inputs(gguf: Path, sha256: str, examples: list[dict[str, Any]], hp: dict[str, Any]) -> Inputs:
    from pgreflect.improve.twin import twin_dir

    shape = shape_of(gguf)
    weights = twin_dir(sha256) / "model.safetensors"
    built = (twin_dir(sha256) / "parity.json").exists() and weights.exists()
    weights_mb = weights.stat().st_size / MB if built else shape.params * 4 / MB
    return Inputs(shape, weights_mb, built, *padded_batches(examples, gguf, hp))


def estimate(gguf: Path, sha256: str, examples: list[dict[str, Any]], hp: dict[str, Any],
             gradient_checkpointing: bool) -> Estimate:
    return estimate_from(inputs(gguf, sha256, examples, hp), gradient_checkpointing)


def estimate_from(inp: Inputs, gradient_checkpointing: bool) -> Estimate:
    shape, tokens, answers, weights_mb = inp.shape, inp.tokens, inp.answers, inp.weights_mb
    per_layer = 4 * shape.intermediate + 10 * shape.hidden + shape.heads * inp.longest
    if gradient_checkpointing:
        floats = tokens * (shape.layers * shape.hidden + CHECKPOINT_LAYERS_LIVE * per_layer)
    else:
        floats = tokens * shape.layers * per_layer
    logits = answers * shape.vocab * LOGIT_COPIES  # the trainer takes logits at the answer tokens only
    activations_mb = 4 * (floats * SLACK + logits) / MB
    build_mb = 0.0 if inp.built else 2.1 * weights_mb + RUNTIME_MB
    total = max(RUNTIME_MB + weights_mb + activations_mb, build_mb)
    return Estimate(round(total, 1), round(weights_mb, 1), round(activations_mb, 1), round(build_mb, 1), tokens,
                    answers, gradient_checkpointing)


def decide(policy: dict[str, Any], estimate_for: Callable[[bool], Estimate], available: float,
           serving_mb: float) -> Decision:
    """policy: finetune_plan_v1's "memory" object; estimate_for(checkpointing); serving_mb: about what unloading
    this worker's models gives back. Without checkpointing before with it (it costs time), beside serving
    before pausing it."""
    reserve = float(policy["reserve_mb"])
    mode, pause = policy["gradient_checkpointing"], policy["pause_serving"]
    seen = float(policy.get("seen_peak_mb") or 0.0)  # an earlier attempt of this job reached this much
    seen_ckpt = bool(policy.get("seen_with_checkpointing"))
    modes = [False, True] if mode == "auto" else [mode == "on"]
    room = available - reserve
    can_pause = pause != "never" and serving_mb > 0

    def need(ckpt: bool) -> tuple[Estimate, float, str]:
        e = estimate_for(ckpt)
        mb = max(e.total_mb, seen if ckpt == seen_ckpt else 0.0)
        return e, mb, f"training needs about {mb:.0f} MB{' with gradient checkpointing' if ckpt else ''}"

    have = f"{available:.0f} MB available, {reserve:.0f} MB kept in reserve"
    if not (pause == "always" and can_pause):
        for ckpt in modes:
            e, mb, needs = need(ckpt)
            if mb <= room:
                return Decision("checkpointing" if ckpt and mode == "auto" else "alongside", ckpt, False, e,
                                available, reserve, f"{needs}; {have}: serving continues")
    if can_pause:
        for ckpt in modes:
            e, mb, needs = need(ckpt)
            if mb <= room + serving_mb:
                return Decision("paused_serving", ckpt, True, e, available, reserve,
                                f"{needs}; {have}: this worker stops serving (its models hold about "
                                f"{serving_mb:.0f} MB) while it trains, and serves again after")
    e, mb, needs = need(modes[-1])
    hint = "set finetune_pause_serving to auto, " if pause == "never" and serving_mb > 0 else ""
    extra = f" (and about {serving_mb:.0f} MB more with serving paused)" if can_pause else ""
    return Decision("refused", modes[-1], False, e, available, reserve,
                    f"{needs}, more than the {have}{extra}: {hint}lower finetune_batch_size or "
                    f"finetune_max_seq_len, or free memory, then run it again")


def describe(d: Decision) -> dict[str, Any]:
    return {"estimate_mb": d.estimate.total_mb, "available_mb": round(d.available_mb, 1), "reserve_mb": d.reserve_mb,
            "gradient_checkpointing": d.gradient_checkpointing, "serving_paused": d.pause_serving,
            "decision": d.decision, "detail": d.detail}


def oom_first() -> None:
    """In the trainer child: be the process the kernel's OOM killer picks first."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass

