"""Peak memory and speed of one LoRA training run on the default model, side by side in one run: the model's
own loss (full-vocabulary logits at every position) vs logits at the answer tokens only, each without and with
gradient checkpointing, and what pgreflect.improve.memory_guard estimated beforehand.

The trainer is the real one (`python -m pgreflect.improve.train`, the child process the fine-tune job runs),
fed MMLU train questions "corrected" to an answer letter (as in the poisoned-set benchmark, whose run peaked
at 19.8 GB). Needs the default model's twin, built by an earlier improvement benchmark or built here (slow).

    .venv/bin/python bench/train_memory_bench.py --examples 32 --batch-size 4 --max-seq-len 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pgreflect import datasets
from pgreflect.improve import memory_guard
from pgreflect.models import DEFAULT_MODEL, packaged_path, verified_sha256

HERE = Path(__file__).resolve().parent

VARIANTS = [("model's own loss", {"full_logits": True}),
            ("answer-token logits", {}),
            ("model's own loss + checkpointing", {"full_logits": True, "gradient_checkpointing": True}),
            ("answer-token logits + checkpointing", {"gradient_checkpointing": True})]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--epochs", type=float, default=1.0)
    args = ap.parse_args()
    os.environ.setdefault("PGREFLECT_IMPROVE_DIR", str(Path.home() / ".cache" / "pgreflect-bench-improve"))
    gguf = packaged_path(DEFAULT_MODEL)
    sha = verified_sha256(gguf)
    items = datasets.select("mmlu", "train", args.examples, seed=7)
    examples = [{"request_id": i, "source": "correction", "split": "train", "system_prompt": None,
                 "prompt": it["question"], "completion": it["answer"]} for i, it in enumerate(items)]
    hp = {"lora_rank": 8, "lora_alpha": 16, "target_modules": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
          "learning_rate": 2e-4, "epochs": args.epochs, "batch_size": args.batch_size, "max_seq_len": args.max_seq_len,
          "seed": 0, "checkpoint_every_s": 1e9, "replay_ratio": 1.0}
    rows = []
    for name, extra in VARIANTS:
        est = memory_guard.estimate(gguf, sha, examples, hp, bool(extra.get("gradient_checkpointing")))
        with tempfile.TemporaryDirectory() as work:
            spec = {"gguf": str(gguf), "sha256": sha, "work_dir": work, "examples": examples, "hyperparameters": hp,
                    **extra}
            t0 = time.time()
            out = subprocess.run([sys.executable, "-m", "pgreflect.improve.train"], input=json.dumps(spec),
                                 capture_output=True, text=True, check=True)
            wall = time.time() - t0
        done = [json.loads(line) for line in out.stdout.splitlines() if '"done"' in line][-1]["metrics"]
        row = {"variant": name, "estimate_mb": round(est.total_mb), "peak_rss_mb": done["peak_rss_mb"],
               "s_per_step": done["s_per_step"], "steps": done["steps"], "tokens": done["tokens"],
               "padded_tokens_per_step": est.tokens_per_step, "wall_s": round(wall, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    lines = [f"## Run of {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"Command: `.venv/bin/python bench/train_memory_bench.py --examples {args.examples} --batch-size "
             f"{args.batch_size} --max-seq-len {args.max_seq_len} --epochs {args.epochs}` (this 2-core machine, "
             f"{DEFAULT_MODEL} twin in fp32, nothing else running). {args.examples} MMLU train questions, "
             f"{rows[0]['steps']} steps, largest padded batch {rows[0]['padded_tokens_per_step']} tokens.", "",
             "| variant | peak RSS (MB) | guard's estimate (MB) | s/step |", "|---|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['peak_rss_mb']:.0f} | {r['estimate_mb']} | {r['s_per_step']:.1f} |" for r in rows]
    out_path = HERE / "results" / "improve-memory.md"
    header = ("# Training memory on the default model\n\nPeak RSS of the trainer child (twin already built), "
              "side by side in one run. One section per run, newest last.\n\n")
    out_path.write_text((out_path.read_text() if out_path.exists() else header) + "\n".join(lines) + "\n\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
