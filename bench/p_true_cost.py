"""What the P(True) pass costs against the answer it follows, by kind of traffic, on the default model.

    .venv/bin/python bench/p_true_cost.py [--mmlu 20] [--gsm8k 8]

The full path's only sizeable cost over direct llama-cpp-python is the P(True) pass (with it off the full path
runs at 0.995x: bench/results/inference-signals-on-p-true-off.md); it is a fixed number of tokens (the question and
the chat template's turn markers) whatever the answer's length, so its share depends on the traffic. Per
answer, through the worker's own backend (LlamaBackend, the default model, every core): the answer's time (prompt
evaluation and generation, with the per-answer signals the generation loop computes), then the P(True) pass's
time and the tokens it evaluates beyond the KV cache. 'Ratio if P(True) were the only cost' = answer time /
(answer time + P(True) time), summed over the answers of a row.
Question sets: the speed benchmark's 5 prompts (bench/inference_overhead.py) at its 64-token budget and at 256;
10 two-digit products asked for the number alone; MMLU (held-out split) and GSM8K questions as
bench/calibration_lodo_bench.py asks them, with its budgets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calibration_lodo_bench import DATASETS as LODO_DATASETS  # noqa: E402
from inference_overhead import PROMPTS, SHORT_PROMPTS  # noqa: E402

from pgreflect import datasets  # noqa: E402
from pgreflect.backends.base import GenerationRequest  # noqa: E402
from pgreflect.backends.llama import LlamaBackend  # noqa: E402
from pgreflect.models import DEFAULT_MODEL, packaged_path  # noqa: E402

RESULTS = HERE / "results"


class CountingBackend(LlamaBackend):
    """LlamaBackend that records, for each prompt evaluation, the tokens evaluated beyond the KV cache's prefix."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.evaluated_last = 0

    def _eval_prompt(self, tokens: list[int]) -> None:
        self.evaluated_last = len(tokens) - self._reusable_prefix(tokens)
        super()._eval_prompt(tokens)


def measure(backend: CountingBackend, questions: list[str], max_tokens: int) -> list[dict[str, float]]:
    rows = []
    for q in questions:
        req = GenerationRequest(prompt=q, system_prompt=None, params={"max_tokens": max_tokens, "temperature": 0.0})
        t0 = time.perf_counter()
        gen = backend.generate(req, threading.Event())
        t1 = time.perf_counter()
        backend.p_true(req, gen)
        t2 = time.perf_counter()
        rows.append({"answer_tokens": len(gen.token_ids), "answer_s": t1 - t0, "p_true_s": t2 - t1,
                     "p_true_tokens": backend.evaluated_last})
        print(f"  {len(gen.token_ids):4d} tokens {t1 - t0:6.2f} s, P(True) {1000 * (t2 - t1):4.0f} ms "
              f"({backend.evaluated_last} tokens)", flush=True)
    return rows


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    answer, p_true = sum(r["answer_s"] for r in rows), sum(r["p_true_s"] for r in rows)
    return {"n": len(rows), "median_answer_tokens": statistics.median(r["answer_tokens"] for r in rows),
            "mean_answer_s": answer / len(rows), "mean_p_true_ms": 1000 * p_true / len(rows),
            "p_true_tokens": statistics.median(r["p_true_tokens"] for r in rows),
            "ms_per_p_true_token": 1000 * p_true / sum(r["p_true_tokens"] for r in rows),
            "ratio": answer / (answer + p_true)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmlu", type=int, default=20)
    ap.add_argument("--gsm8k", type=int, default=8)
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.time()
    backend = CountingBackend(packaged_path(DEFAULT_MODEL))
    sets = [("speed benchmark prompts, 64-token budget", PROMPTS, 64),
            ("speed benchmark prompts, 256-token budget", PROMPTS, 256),
            ("two-digit products, 16-token budget", SHORT_PROMPTS, 16)]
    for name, n in (("mmlu", args.mmlu), ("gsm8k", args.gsm8k)):
        split, _, budget = LODO_DATASETS[name]
        sets.append((f"{name} ({budget}-token budget)", [it["question"] for it in datasets.select(name, split, n)],
                     budget))
    backend.generate(GenerationRequest(prompt="Hi", system_prompt=None, params={"max_tokens": 4}), threading.Event())
    report: dict[str, Any] = {"started": started, "rows": {}}
    for name, questions, budget in sets:
        print(name, flush=True)
        rows = measure(backend, list(questions), budget)
        report["rows"][name] = {"answers": rows, "summary": summary(rows)}
    backend.close()
    report["minutes"] = (time.time() - t0) / 60
    (RESULTS / "p-true-cost.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = ["# The P(True) pass against the answer it follows", "",
             f"Command: `.venv/bin/python bench/p_true_cost.py --mmlu {args.mmlu} --gsm8k {args.gsm8k}` ({started}, "
             f"{report['minutes']:.0f} min, 2 cores, default model, greedy). " + __doc__.split("\n\n", 2)[2].strip()
             .replace("\n", " "), "",
             "| questions | n | median answer tokens | mean answer time | P(True) tokens | P(True) time "
             "| ms per P(True) token | ratio if P(True) were the only cost |", "|---|---|---|---|---|---|---|---|"]
    for name, r in report["rows"].items():
        s = r["summary"]
        lines.append(f"| {name} | {s['n']} | {s['median_answer_tokens']:g} | {s['mean_answer_s']:.2f} s | "
                     f"{s['p_true_tokens']:g} | {s['mean_p_true_ms']:.0f} ms | {s['ms_per_p_true_token']:.1f} | "
                     f"{s['ratio']:.3f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "p-true-cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
