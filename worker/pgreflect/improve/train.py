"""LoRA training of a twin, run in a child process (`python -m pgreflect.improve.train`), so the memory
torch takes is given back when it ends and the worker keeps answering requests meanwhile.

Input: one JSON object on stdin (gguf, sha256, work_dir, hyperparameters, examples); the twin of the GGUF is
built here when missing (pgreflect.improve.twin), so its memory peak is this process's too. Output: one JSON object
per line on stdout: "start", "step" (loss, tokens/s, ETA, RSS), "checkpoint", "done" (adapter folder and
metrics). The parent (pgreflect.jobs.finetune) records them in the database.

Loss is on the answer tokens only (the prompt is context), the answer ending with the chat template's
end-of-turn so the model learns where to stop. Examples are rendered and tokenized by llama.cpp itself
(pgreflect.chat), exactly as the served model will see them. Batches come in a fixed order from the seed, so
a run resumed from a checkpoint (adapter + optimizer state, written atomically every checkpoint_every_s)
continues the same sequence of steps.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

IGNORE = -100
Emit = Callable[..., None]


def emitter(stream: TextIO) -> Emit:
    def emit(event: str, **fields: Any) -> None:
        stream.write(json.dumps({"event": event, **fields}) + "\n")
        stream.flush()
    return emit


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def select_examples(examples: list[dict[str, Any]], replay_ratio: float, seed: int) -> list[dict[str, Any]]:
    """Every correction, plus confirmed answers (replay) up to replay_ratio per correction; with no
    corrections at all, every confirmed answer."""
    corrections = [e for e in examples if e["source"] == "correction"]
    confirmed = [e for e in examples if e["source"] != "correction"]
    if corrections:
        random.Random(seed).shuffle(confirmed)
        confirmed = confirmed[: math.floor(replay_ratio * len(corrections))]
    return corrections + confirmed


def tokenize(examples: list[dict[str, Any]], gguf: str, max_len: int) -> list[tuple[list[int], list[int]]]:
    import llama_cpp

    from pgreflect.chat import ChatRenderer

    llm = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    chat = ChatRenderer(llm)
    out = []
    for e in examples:
        messages = ([{"role": "system", "content": e["system_prompt"]}] if e.get("system_prompt") else [])
        messages.append({"role": "user", "content": e["prompt"]})
        prompt, answer = chat.example_tokens(messages, e["completion"])
        answer = answer[:max_len]
        prompt = prompt[-(max_len - len(answer)):] if max_len > len(answer) else []
        out.append((prompt, answer))
    return out


def batches(n: int, batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """The whole run's batches of example indices, fixed by the seed (a resumed run takes the same ones)."""
    per_epoch = math.ceil(n / batch_size)
    total = max(1, math.ceil(epochs * per_epoch))
    out: list[list[int]] = []
    epoch = 0
    while len(out) < total:
        order = list(range(n))
        random.Random(seed * 1000 + epoch).shuffle(order)
        out += [order[i:i + batch_size] for i in range(0, n, batch_size)]
        epoch += 1
    return out[:total]


def collate(items: list[tuple[list[int], list[int]]]):
    import torch

    width = max(len(p) + len(a) for p, a in items)
    ids = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (p, a) in enumerate(items):
        seq = p + a
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(p): len(seq)] = torch.tensor(a)
        mask[row, : len(seq)] = 1
    return ids, labels, mask


def answer_loss(model, ids, labels, mask, full_logits: bool = False):
    """Mean cross-entropy of the answer tokens, the same number the model's own loss gives, with the output
    layer applied to the answer positions only: full-vocabulary logits at every position (151,936 per token
    for Qwen2.5) were 1.7 GB of the peak at 4 x 256 tokens (bench/results/improve-memory.md)."""
    import torch.nn.functional as F

    inner = model.get_base_model()
    config = inner.config
    if full_logits or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss  # logits are more than lm_head
    hidden = getattr(inner, inner.base_model_prefix)(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, targets[keep])


def train(spec: dict[str, Any], emit: Emit) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    hp = spec["hyperparameters"]
    seed = int(hp["seed"])
    work = Path(spec["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(spec.get("threads") or os.cpu_count() or 1))

    from pgreflect.improve.twin import ensure_twin

    twin = str(ensure_twin(Path(spec["gguf"]), spec["sha256"]))
    examples = select_examples([e for e in spec["examples"] if e["split"] == "train"], float(hp["replay_ratio"]), seed)
    if not examples:
        raise SystemExit("no training examples in the train split")
    data = tokenize(examples, spec["gguf"], int(hp["max_seq_len"]))
    plan = batches(len(data), int(hp["batch_size"]), float(hp["epochs"]), seed)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(twin, dtype=torch.float32)
    checkpointing = bool(spec.get("gradient_checkpointing"))
    full_logits = bool(spec.get("full_logits"))  # the model's own loss (benchmark comparison)
    if checkpointing:  # layer activations recomputed in the backward pass: less memory, ~1.6x the time
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in str(hp["target_modules"]).split(",") if m.strip() in present]
    if not targets:
        raise SystemExit(f"none of the target modules {hp['target_modules']} exist in this model")
    # Plain LoRA (no rsLoRA/DoRA): llama.cpp applies alpha/r. Embeddings and lm_head are never adapted.
    model = get_peft_model(model, LoraConfig(r=int(hp["lora_rank"]), lora_alpha=float(hp["lora_alpha"]),
                                             target_modules=targets, lora_dropout=0.0, bias="none",
                                             task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(hp["learning_rate"]))

    start = 0
    pointer = work / "checkpoint.json"
    if pointer.exists():
        ckpt = json.loads(pointer.read_text())
        folder = work / ckpt["folder"]
        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        start = int(ckpt["step"])
    emit("start", total_steps=len(plan), resumed_from=start, examples=len(data),
         corrections=sum(e["source"] == "correction" for e in examples))

    def save_checkpoint(step: int) -> None:
        folder = work / f"ckpt-{step}"
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(str(folder))
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        tmp = work / "checkpoint.json.tmp"
        tmp.write_text(json.dumps({"step": step, "folder": folder.name}))
        os.replace(tmp, pointer)  # the pointer moves only once the folder is complete
        for old in work.glob("ckpt-*"):
            if old.name != folder.name:
                shutil.rmtree(old, ignore_errors=True)
        emit("checkpoint", step=step)

    model.train()
    t_start = time.perf_counter()
    last_ckpt = time.monotonic()
    tokens_done, losses, first_loss = 0, [], None
    every = float(hp.get("checkpoint_every_s") or 60)
    per_epoch = math.ceil(len(data) / int(hp["batch_size"]))
    for step in range(start, len(plan)):
        ids, labels, mask = collate([data[i] for i in plan[step]])
        loss = answer_loss(model, ids, labels, mask, full_logits)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        value = float(loss.detach())
        first_loss = value if first_loss is None else first_loss
        losses.append(value)
        tokens_done += int(mask.sum())
        elapsed = time.perf_counter() - t_start
        done = step + 1 - start
        emit("step", step=step + 1, total_steps=len(plan), epoch=(step + 1) / per_epoch, loss=value,
             tokens_per_s=tokens_done / elapsed if elapsed > 0 else None,
             eta_s=elapsed / done * (len(plan) - step - 1), rss_mb=peak_rss_mb())
        if time.monotonic() - last_ckpt >= every and step + 1 < len(plan):
            save_checkpoint(step + 1)
            last_ckpt = time.monotonic()

    adapter = work / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    model.save_pretrained(str(adapter))
    elapsed = time.perf_counter() - t_start
    tail = losses[-per_epoch:] if losses else []
    metrics = {
        "steps": len(plan), "resumed_from_step": start, "examples": len(data),
        "corrections": sum(e["source"] == "correction" for e in examples),
        "replay": sum(e["source"] != "correction" for e in examples),
        "first_loss": first_loss, "final_loss": sum(tail) / len(tail) if tail else None,
        "train_s": round(elapsed, 2), "s_per_step": round(elapsed / max(1, len(plan) - start), 3),
        "tokens": tokens_done, "peak_rss_mb": round(peak_rss_mb(), 1), "target_modules": targets,
        "gradient_checkpointing": checkpointing,
    }
    emit("done", adapter_dir=str(adapter), twin=twin, metrics=metrics)
    return metrics


def main() -> None:
    from pgreflect.improve.twin import TWIN_ERROR_EXIT, TwinError

    spec = json.loads(sys.stdin.read())
    # Progress goes to stdout as JSON lines; whatever libraries print goes to stderr.
    progress, sys.stdout = sys.stdout, sys.stderr
    try:
        train(spec, emitter(progress))
    except TwinError as exc:
        print(exc, file=sys.stderr)
        sys.exit(TWIN_ERROR_EXIT)


if __name__ == "__main__":
    main()
