"""Does option-order consistency pay for its cost? A candidate signal for multiple-choice answers.

For each multiple-choice question of the leave-one-dataset-out collection (MMLU, BIG-bench Social IQa and
date understanding), the default model answers it as served (greedy, no system prompt, 16 tokens) and then
answers it again with the options' texts moved down one letter (A's text under B, ..., the last under A).
The signal is the probability the second answer gives to the option the first one chose (its next-token
distribution over the letters at the token that carries the letter, renormalised over the options, as the
option_* signals read it). The second pass reuses the KV cache of everything before the options.

Reported: the signal's AUROC alone for telling right from wrong (over the answers that have it), the
leave-one-dataset-out calibrator (the SQL fit, on every collected answer of the nine datasets) with and
without it (paired bootstrap of the pooled AUROC difference, and per multiple-choice dataset), and what the
second pass costs next to the first. Needs the collection's answers:

    .venv/bin/python bench/calibration_lodo_bench.py --collect-only     # writes bench/results/lodo-*.jsonl
    .venv/bin/python bench/option_order_bench.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lodo_analysis import Fitter, auroc, auroc_ci, load, paired_auroc_diff  # noqa: E402

from pgreflect.backends.base import GenerationRequest  # noqa: E402
from pgreflect.backends.llama import LlamaBackend  # noqa: E402
from pgreflect.models import DEFAULT_MODEL, packaged_path  # noqa: E402
from pgreflect.scoring import extract_choice  # noqa: E402

from bench_cluster import pgreflect_database, start_cluster  # noqa: E402

CHOICE_SETS = ("mmlu", "bb-social-iqa", "bb-date-understanding")
OPTION = re.compile(r"^([A-J])\. (.*)$")
FEATURE = "option_consistency"


def shifted(prompt: str) -> tuple[str, dict[str, str]] | None:
    """The prompt with each option's text moved down one letter, and where each original letter's text went."""
    lines = prompt.split("\n")
    at = [i for i, line in enumerate(lines) if OPTION.match(line)]
    if len(at) < 2 or at != list(range(at[0], at[0] + len(at))):
        return None
    letters = [OPTION.match(lines[i]).group(1) for i in at]
    texts = [OPTION.match(lines[i]).group(2) for i in at]
    n = len(at)
    for k, i in enumerate(at):
        lines[i] = f"{letters[k]}. {texts[(k - 1) % n]}"
    return "\n".join(lines), {letters[k]: letters[(k + 1) % n] for k in range(n)}


def answer(backend: LlamaBackend, prompt: str):
    request = GenerationRequest(prompt=prompt, system_prompt=None, params={"max_tokens": 16, "temperature": 0})
    return backend.generate(request, threading.Event())


def measure(limit: int | None) -> tuple[dict[tuple[str, str], float], dict[str, Any]]:
    backend = LlamaBackend(packaged_path(DEFAULT_MODEL))
    values: dict[tuple[str, str], float] = {}
    first_s, second_s, same, seen, matches = [], [], 0, 0, 0
    for name in CHOICE_SETS:
        questions = load(HERE / "results" / f"lodo-{name}.questions.jsonl")
        collected = {r["id"]: r for r in load(HERE / "results" / f"lodo-{name}.jsonl")}
        for item in questions[:limit]:
            moved = shifted(item["question"])
            if moved is None:
                continue
            first = answer(backend, item["question"])
            letter = extract_choice(first.text)
            if collected.get(item["id"], {}).get("answer") == first.text:
                matches += 1
            seen += 1
            if letter is None or letter not in moved[1]:
                continue
            second = answer(backend, moved[0])
            first_s.append(first.prompt_eval_s + first.generation_s)
            second_s.append(second.prompt_eval_s + second.generation_s)
            same += extract_choice(second.text) == moved[1][letter]
            if second.option_probs:
                values[(name.replace("-", "_"), item["id"])] = float(second.option_probs.get(moved[1][letter], 0.0))
        print(f"{name}: {len([k for k in values if k[0] == name.replace('-', '_')])} answers with the signal",
              flush=True)
    backend.close()
    return values, {"questions": seen, "same_answer_as_collected": matches, "with_signal": len(values),
                    "same_choice_after_shift": same, "first_pass_s": float(np.mean(first_s)),
                    "second_pass_s": float(np.mean(second_s))}


def analyse(rows: list[dict[str, Any]], values: dict[tuple[str, str], float]) -> dict[str, Any]:
    for r in rows:
        v = values.get((r["dataset"], r["id"]))
        if v is not None:
            r["features"] = {**r["features"], FEATURE: v}
    have = [r for r in rows if FEATURE in r["features"]]
    v = np.array([r["features"][FEATURE] for r in have])
    y = np.array([r["correct"] for r in have])
    out: dict[str, Any] = {"alone": {"n": len(have), "auroc": auroc(v, y), "ci": auroc_ci(v, y)}}
    y_all = np.array([r["correct"] for r in rows])
    cluster = start_cluster()
    try:
        with psycopg.connect(pgreflect_database(cluster), autocommit=True) as conn:
            fitter = Fitter(conn)
            base = fitter.held_out(rows, fitter.names)
            plus = fitter.held_out(rows, [*fitter.names, FEATURE])
    finally:
        cluster.destroy()
    out["pooled"] = {"without": auroc(base, y_all), "with": auroc(plus, y_all),
                     "difference": paired_auroc_diff(plus, base, y_all)}
    out["per_dataset"] = {}
    for name in CHOICE_SETS:
        tag = name.replace("-", "_")
        i = np.array([r["dataset"] == tag for r in rows])
        if 0 < y_all[i].sum() < i.sum():
            out["per_dataset"][tag] = {"n": int(i.sum()), "without": auroc(base[i], y_all[i]),
                                       "with": auroc(plus[i], y_all[i]),
                                       "difference": paired_auroc_diff(plus[i], base[i], y_all[i])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=Path, default=HERE / "results" / "lodo-answers" / "lodo-answers.jsonl.gz")
    ap.add_argument("--limit", type=int, default=None, help="questions per dataset (default: all collected)")
    args = ap.parse_args()
    started = time.time()
    values, cost = measure(args.limit)
    report = {"cost": cost, **analyse(load(args.answers), values)}
    (HERE / "results" / "option-order.json").write_text(json.dumps(report, indent=1) + "\n")
    a, p = report["alone"], report["pooled"]
    lines = [
        "# Option-order consistency: a candidate signal for multiple-choice answers", "",
        f"Command: `.venv/bin/python bench/option_order_bench.py{' --limit ' + str(args.limit) if args.limit else ''}` "
        f"({(time.time() - started) / 60:.0f} min on 2 cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); "
        f"default model, greedy. {cost['questions']} multiple-choice questions answered again as served "
        f"({cost['same_answer_as_collected']} with the same text as in the collection), {cost['with_signal']} with "
        "a letter in both answers and the option distribution read.", "",
        f"- Same choice after the options' texts moved down one letter: {cost['same_choice_after_shift']} of "
        f"{cost['with_signal']}.",
        f"- Cost: the second pass {cost['second_pass_s']:.2f} s per answer next to {cost['first_pass_s']:.2f} s for "
        f"the answer itself ({cost['second_pass_s'] / cost['first_pass_s']:.0%}).",
        f"- Alone (probability the shifted answer gives the first answer's option): AUROC {a['auroc']:.3f} "
        f"[{a['ci'][0]:.3f}, {a['ci'][1]:.3f}] on {a['n']} answers.",
        f"- In the calibrator, leave-one-dataset-out over all nine datasets: pooled AUROC {p['without']:.3f} -> "
        f"{p['with']:.3f}, difference {p['difference'][0]:+.3f} [{p['difference'][1]:+.3f}, "
        f"{p['difference'][2]:+.3f}] (paired bootstrap 95%).", "",
        "| held-out multiple-choice dataset | n | AUROC without | with | difference [95%] |", "|---|---|---|---|---|"]
    for tag, d in report["per_dataset"].items():
        diff = d["difference"]
        lines.append(f"| {tag} | {d['n']} | {d['without']:.3f} | {d['with']:.3f} | {diff[0]:+.3f} "
                     f"[{diff[1]:+.3f}, {diff[2]:+.3f}] |")
    (HERE / "results" / "option-order.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
