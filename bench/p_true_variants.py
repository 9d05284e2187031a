"""A cheaper P(True)? The question asked inside the answer's own turn instead of in a new user turn.

P(True) is most of what the per-answer signals cost (0.880x of direct llama-cpp-python with it, 0.995x
without: bench/results/inference-signals-on*.md): after each answer the model reads the end of its turn, a
new user turn with the question and the start of its next turn, 23 tokens. The variant appends a short
question to the answer itself, before the end of the turn (IN_TURN, 7 tokens), and reads yes against no
there. For the collection's questions (the first --per-dataset of each dataset), this answers each as served
(greedy, no system prompt, the dataset's token budget; the text is checked against the collection's), then
measures both, and reports: each one's cost, its AUROC alone, and the leave-one-dataset-out calibrator with
one or the other as its P(True) (the SQL fit; pooled AUROC and ECE, averages over the datasets with at least
10 right and 10 wrong answers, paired bootstrap of the AUROC difference).

    .venv/bin/python bench/calibration_lodo_bench.py --collect-only     # writes bench/results/lodo-*.jsonl
    .venv/bin/python bench/p_true_variants.py --per-dataset 100
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from calibration_lodo_bench import DATASETS
from lodo_analysis import compare_p_true, load

from pgreflect.backends.base import GenerationRequest
from pgreflect.backends.llama import LlamaBackend
from pgreflect.models import DEFAULT_MODEL, packaged_path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

IN_TURN = "\nCorrect? Yes or no:"


def in_turn_p_true(backend: LlamaBackend, request: GenerationRequest, token_ids: list[int]) -> float:
    """P(yes) against P(no) after the answer's own tokens and IN_TURN, before the end of the turn."""
    suffix = backend.llm.tokenize(IN_TURN.encode(), add_bos=False, special=False)
    with backend._lock:
        backend._eval_prompt(backend.prompt_tokens(request.messages()) + token_ids + suffix)
        logits = backend._last_logits().astype(np.float64)
    yes, no = backend._answer_token_ids()
    m = float(np.max(logits))
    p_yes, p_no = float(np.sum(np.exp(logits[yes] - m))), float(np.sum(np.exp(logits[no] - m)))
    return p_yes / (p_yes + p_no)


def measure(per_dataset: int) -> tuple[dict[tuple[str, str], dict[str, float]], dict[str, Any]]:
    backend = LlamaBackend(packaged_path(DEFAULT_MODEL))
    values: dict[tuple[str, str], dict[str, float]] = {}
    answer_s, standard_s, in_turn_s, same = [], [], [], 0
    for name, (_, _, max_tokens) in DATASETS.items():
        questions = load(HERE / "results" / f"lodo-{name}.questions.jsonl")[:per_dataset]
        collected = {r["id"]: r for r in load(HERE / "results" / f"lodo-{name}.jsonl")}
        for item in questions:
            request = GenerationRequest(prompt=item["question"], system_prompt=None,
                                        params={"max_tokens": max_tokens, "temperature": 0})
            t0 = time.perf_counter()
            gen = backend.generate(request, threading.Event())
            t1 = time.perf_counter()
            variant = in_turn_p_true(backend, request, gen.token_ids)
            t2 = time.perf_counter()
            standard = backend.p_true(request, gen)
            t3 = time.perf_counter()
            same += collected.get(item["id"], {}).get("answer") == gen.text
            answer_s.append(t1 - t0)
            in_turn_s.append(t2 - t1)
            standard_s.append(t3 - t2)
            values[(name.replace("-", "_"), item["id"])] = {"p_true": standard, "p_true_in_turn": variant}
        print(f"{name}: {len(questions)} answered", flush=True)
    backend.close()
    return values, {"answers": len(values), "same_text_as_collected": same, "answer_s": float(np.mean(answer_s)),
                    "standard_s": float(np.mean(standard_s)), "in_turn_s": float(np.mean(in_turn_s))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=Path, default=HERE / "results" / "lodo-answers" / "lodo-answers.jsonl.gz")
    ap.add_argument("--per-dataset", type=int, default=100)
    args = ap.parse_args()
    started = time.time()
    values, cost = measure(args.per_dataset)
    # Kept beside the collected answers: a calibrator refit with the in-turn question needs no answering again.
    with gzip.open(HERE / "results" / "lodo-answers" / "p-true-variants.jsonl.gz", "wt") as f:
        for (dataset, item), v in values.items():
            f.write(json.dumps({"dataset": dataset, "id": item, **v}, sort_keys=True) + "\n")
    variants = {"standard": "p_true", "in_turn": "p_true_in_turn"}
    report = {"cost": cost, **compare_p_true(load(args.answers), values, variants, against="standard")}
    (HERE / "results" / "p-true-variants.json").write_text(json.dumps(report, indent=1) + "\n")
    c, a, cal = report["cost"], report["alone"], report["calibrated"]
    lines = [
        "# P(True) asked in a new user turn (served) or inside the answer's own turn (a cheaper candidate)", "",
        f"Command: `.venv/bin/python bench/p_true_variants.py --per-dataset {args.per_dataset}` "
        f"({(time.time() - started) / 60:.0f} min on 2 cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())});"
        f" default model, greedy; {c['answers']} answers ({c['same_text_as_collected']} with the collection's text); "
        f"the served P(True) recomputed here differs from the collected one by at most "
        f"{report['recomputed_vs_collected_max_abs']:.4f}. In-turn question: `{json.dumps(IN_TURN)}`.", "",
        f"- Cost per answer: served P(True) {c['standard_s'] * 1000:.0f} ms, in-turn {c['in_turn_s'] * 1000:.0f} ms, "
        f"next to {c['answer_s'] * 1000:.0f} ms for the answer ({c['standard_s'] / c['answer_s']:.1%} and "
        f"{c['in_turn_s'] / c['answer_s']:.1%} of it).",
        f"- Alone, AUROC: served {a['p_true']['auroc']:.3f} [{a['p_true']['ci'][0]:.3f}, {a['p_true']['ci'][1]:.3f}]"
        f", in-turn {a['p_true_in_turn']['auroc']:.3f} [{a['p_true_in_turn']['ci'][0]:.3f}, "
        f"{a['p_true_in_turn']['ci'][1]:.3f}].",
        f"- Calibrator (leave-one-dataset-out), in-turn minus served, pooled AUROC: "
        f"{report['in_turn_minus_standard'][0]:+.3f} [{report['in_turn_minus_standard'][1]:+.3f}, "
        f"{report['in_turn_minus_standard'][2]:+.3f}].", "",
        "| calibrator's P(True) | pooled AUROC | pooled ECE (floor) | averaged AUROC | averaged ECE gap | "
        "averaged share of oracle gain |", "|---|---|---|---|---|---|"]
    for key, label in (("standard", "served (new user turn)"), ("in_turn", "in-turn"), ("without", "none")):
        m = cal[key]
        lines.append(f"| {label} | {m['pooled']['auroc']:.3f} | {m['pooled']['ece']:.3f} "
                     f"({m['pooled']['ece_floor']:.3f}) | {m['auroc']:.3f} | {m['ece_gap']:+.3f} | {m['share']:.0%} |")
    lines += ["", f"Averaged over: {', '.join(cal['standard']['averaged_over'])}."]
    (HERE / "results" / "p-true-variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
