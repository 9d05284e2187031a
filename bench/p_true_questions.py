"""A shorter P(True) question, still asked in a new user turn: as informative, for less time?

P(True) is most of what the per-answer signals cost (0.880x of direct llama-cpp-python with it, 0.995x without:
bench/results/inference-signals-on*.md), and that cost is the tokens read after each answer: the end of the
answer's turn, a new user turn with the question, the start of the model's next turn (23 tokens with the served
question, 13 of them the question). Asked inside the answer's own turn it carried no information
(bench/results/p-true-variants.md), so here the turn stays and only the question gets shorter.

For each collected answer (its text from bench/results/lodo-<dataset>.jsonl, the first --per-dataset of each
dataset), the conversation up to the answer's end is evaluated once; then, from that same KV cache state, each
question's P(True) is measured: its value, the tokens it reads and the time it takes. Reported: each question's
cost, its AUROC alone, and the leave-one-dataset-out calibrator with it as its P(True) (the SQL fit; pooled and
averaged over the datasets with at least 10 right and 10 wrong answers; paired bootstrap of the pooled AUROC
difference from the served question). The values are appended to
bench/results/lodo-answers/p-true-questions.jsonl.gz as they are measured, and a rerun measures only what is
missing there, so a run can be stopped and resumed, or extended with a larger --per-dataset.

    .venv/bin/python bench/calibration_lodo_bench.py --collect-only     # writes bench/results/lodo-*.jsonl
    .venv/bin/python bench/p_true_questions.py --per-dataset 100
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from calibration_lodo_bench import DATASETS
from lodo_analysis import ANSWERS, compare_p_true, load

from pgreflect.backends.base import GenerationRequest
from pgreflect.backends.llama import LlamaBackend
from pgreflect.models import DEFAULT_MODEL, packaged_path
from pgreflect.prompts import P_TRUE_QUESTION

HERE = Path(__file__).resolve().parent
VALUES = HERE / "results" / "lodo-answers" / "p-true-questions.jsonl.gz"
# The answers VALUES were measured on: collected before date understanding, MMLU and GSM8K were collected again
# with longer budgets (lodo-answers-longer, same question ids, other answers).
MEASURED_ON = ANSWERS[:2]
# The served question first: the others are compared with it. Chosen before measuring: the served question's
# meaning in 5 tokens, and in 2.
QUESTIONS = {"p_true": P_TRUE_QUESTION, "p_true_q5": "Is your answer correct?", "p_true_q2": "Correct?"}


def measured() -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["dataset"], r["id"]): r for r in load(VALUES)} if VALUES.exists() else {}


def selected(name: str, per_dataset: int) -> list[dict[str, Any]]:
    """The dataset's first per_dataset answered questions, as collected (with their text)."""
    return [a for a in load(HERE / "results" / f"lodo-{name}.jsonl") if a["state"] == "succeeded"][:per_dataset]


def measure(per_dataset: int) -> None:
    """Appends the missing answers' values, tokens read and seconds per question to VALUES."""
    done = measured()
    backend = LlamaBackend(packaged_path(DEFAULT_MODEL))
    try:
        for name in DATASETS:
            questions = {q["id"]: q["question"] for q in load(HERE / "results" / f"lodo-{name}.questions.jsonl")}
            answers = selected(name, per_dataset)
            todo = [a for a in answers if (a["dataset"], a["id"]) not in done]
            for a in todo:
                row = measure_answer(backend, questions[a["id"]], a["answer"] or "")
                with gzip.open(VALUES, "at") as f:  # one gzip member per answer: a stopped run keeps what it had
                    f.write(json.dumps({"dataset": a["dataset"], "id": a["id"], **row}, sort_keys=True) + "\n")
            print(f"{name}: {len(todo)} measured, {len(answers) - len(todo)} already", flush=True)
    finally:
        backend.close()


def measure_answer(backend: LlamaBackend, question: str, answer: str) -> dict[str, Any]:
    """Each question's P(True), tokens read and seconds, each from the KV cache as the answer left it (the
    prompt and the answer's tokens evaluated, nothing after them)."""
    request = GenerationRequest(prompt=question, system_prompt=None, params={"max_tokens": 1, "temperature": 0})
    answered = backend.prompt_tokens(request.messages()) + backend.llm.tokenize(answer.encode(), add_bos=False,
                                                                               special=False)
    row: dict[str, Any] = {}
    backend._eval_prompt(answered)  # one thread here: p_true takes the backend's lock itself
    for key, text in QUESTIONS.items():
        backend.llm.n_tokens = len(answered)  # back to the answer's end: llama.cpp drops the KV cache past it
        backend._evaluated = answered[:]
        t0 = time.perf_counter()
        row[key] = backend.p_true(request, SimpleNamespace(text=answer), question=text)
        row[f"{key}_s"] = time.perf_counter() - t0
        shared = next((i for i, (x, y) in enumerate(zip(answered, backend._evaluated, strict=False)) if x != y),
                      min(len(answered), len(backend._evaluated)))
        row[f"{key}_tokens"] = len(backend._evaluated) - shared
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=Path, nargs="+", default=MEASURED_ON)
    ap.add_argument("--per-dataset", type=int, default=100)
    args = ap.parse_args()
    started = time.time()
    measure(args.per_dataset)
    minutes = (time.time() - started) / 60
    wanted = {(a["dataset"], a["id"]) for name in DATASETS for a in selected(name, args.per_dataset)}
    rows = measured()
    values = {k: {q: rows[k][q] for q in QUESTIONS} for k in wanted if k in rows}
    answers = [r for path in args.answers for r in load(path)]
    report = {"questions": QUESTIONS, "per_dataset": args.per_dataset,
              "cost": {q: {"seconds": float(np.mean([rows[k][f"{q}_s"] for k in values])),
                           "tokens": float(np.mean([rows[k][f"{q}_tokens"] for k in values]))} for q in QUESTIONS},
              **compare_p_true(answers, values, {q: q for q in QUESTIONS}, against="p_true")}
    (HERE / "results" / "p-true-questions.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, args.per_dataset, minutes)


def write_markdown(report: dict[str, Any], per_dataset: int, minutes: float) -> None:
    a, cal, cost = report["alone"], report["calibrated"], report["cost"]
    lines = [
        "# P(True) with a shorter question, still in a new user turn", "",
        f"Command: `.venv/bin/python bench/p_true_questions.py --per-dataset {per_dataset}` ({minutes:.0f} min "
        f"measuring on 2 cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); default model; "
        f"{report['n']} collected answers; the served P(True) recomputed here differs from the collected one by at "
        f"most {report['recomputed_vs_collected_max_abs']:.4f}.", "",
        "| question | tokens read | ms per answer | AUROC alone | calibrator: pooled AUROC | pooled ECE (floor) | "
        "averaged AUROC | averaged ECE gap | averaged share | pooled AUROC minus served | pooled ECE minus served |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for q, text in report["questions"].items():
        m, al = cal[q], a[q]
        diff, ece_diff = report.get(f"{q}_minus_p_true"), report.get(f"{q}_minus_p_true_ece")
        lines.append(
            f"| {json.dumps(text)} | {cost[q]['tokens']:.1f} | {cost[q]['seconds'] * 1000:.0f} | {al['auroc']:.3f} "
            f"[{al['ci'][0]:.3f}, {al['ci'][1]:.3f}] | {m['pooled']['auroc']:.3f} | {m['pooled']['ece']:.3f} "
            f"({m['pooled']['ece_floor']:.3f}) | {m['auroc']:.3f} | {m['ece_gap']:+.3f} | {m['share']:.0%} | "
            + (f"{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}] | {ece_diff[0]:+.3f} [{ece_diff[1]:+.3f}, "
               f"{ece_diff[2]:+.3f}] |" if diff else "(served) | (served) |"))
    m = cal["without"]
    lines += [f"| (no P(True)) | 0 | 0 | | {m['pooled']['auroc']:.3f} | {m['pooled']['ece']:.3f} "
              f"({m['pooled']['ece_floor']:.3f}) | {m['auroc']:.3f} | {m['ece_gap']:+.3f} | {m['share']:.0%} | | |",
              "", f"Averaged over: {', '.join(cal['p_true']['averaged_over'])}."]
    (HERE / "results" / "p-true-questions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
