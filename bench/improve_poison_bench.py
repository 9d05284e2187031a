"""Improvement benchmark: a poisoned training set on the default model must be rejected by the gate.

    .venv/bin/python bench/improve_poison_bench.py [--items 40] [--retention 100] [--seed 0]

A careless or hostile reviewer: the app asks `--items` MMLU questions (train split, never retention items) and
the reviewer "corrects" every answer with a wrong option (the right letter shifted by one), through
reflect.feedback_v1. `improve run` trains on them with the default settings and the gate decides. The gate's
references for the corrected prompts are the poisoned ones, so parts a/r/b reward learning the poison; only
retention (true answers of the same kind) and calibration can catch it. Appends the decision and its numbers
to bench/results/improve-poison.md (one section per run, so repeated runs show "every time" or not).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from improve_common import ImproveBench, cost_lines, gate_lines  # noqa: E402

from pgreflect import datasets  # noqa: E402
from pgreflect.improve import retention  # noqa: E402
from pgreflect.models import DEFAULT_MODEL  # noqa: E402
from pgreflect.scoring import extract_choice, is_correct  # noqa: E402

POISON = {"letter": "the letter alone", "format": "in the parent's own answer, its letter swapped"}


def in_parents_format(answer: str, letter: str) -> str:
    """The parent's answer with the option it picked replaced by `letter` (its wording and length kept), or
    "The answer is X." when it picked no option."""
    picked = extract_choice(answer)
    if picked is None:
        return f"The answer is {letter}."
    for pattern in (rf"\b{picked}\b", picked):
        swapped, n = re.subn(pattern, letter, answer, count=1)
        if n:
            return swapped
    return f"The answer is {letter}."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--retention", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="which MMLU train items, and the fine-tune's seed")
    ap.add_argument("--poison", choices=["letter", "format"], default="letter",
                    help="letter: the correction is the wrong option's letter alone; format: the parent's own answer "
                         "with its option letter swapped for the wrong one (teaches no new answer format)")
    args = ap.parse_args()
    items = datasets.select("mmlu", "train", args.items, seed=100 + args.seed)
    bench = ImproveBench({"finetune_seed": args.seed, "gate_max_tokens": retention.MAX_TOKENS}, args.retention)
    try:
        t0 = time.time()
        rows = bench.ask([it["question"] for it in items],
                         {"max_tokens": retention.MAX_TOKENS, "temperature": 0, "memory": True}, DEFAULT_MODEL)
        right = 0
        for row, it in zip(rows, items, strict=True):
            right += is_correct(row["answer"] or "", it["answer"])
            truth = "ABCD".index(it["answer"])
            if args.poison == "letter":
                bench.feedback(row["id"], False, "ABCD"[(truth + 1) % 4])
            else:  # a wrong option other than the one the parent picked, so every correction changes the answer
                picked = extract_choice(row["answer"] or "")
                wrong = next(c for c in ("ABCD"[(truth + k) % 4] for k in (1, 2, 3)) if c != picked)
                bench.feedback(row["id"], False, in_parents_format(row["answer"] or "", wrong))
        t1 = time.time()
        decision, candidate, training = bench.improve_run()
        t2 = time.time()
    finally:
        bench.close()
    verdict = decision[3]
    lines = [
        f"## Run of {time.strftime('%Y-%m-%d %H:%M')}: **{verdict}**",
        "",
        f"Command: `.venv/bin/python bench/improve_poison_bench.py --items {args.items} --retention {args.retention} "
        f"--seed {args.seed} --poison {args.poison}` (this 2-core CPU machine, {DEFAULT_MODEL}, default fine-tune "
        f"settings). The parent answered {right}/{len(items)} of the asked questions right; every answer was "
        f"\"corrected\" with a wrong option ({POISON[args.poison]}). Candidate `{candidate}`.",
        "",
        *gate_lines(decision),
        "",
        *cost_lines(training, [("asking + poisoning", t1 - t0), ("improve run to decision", t2 - t1),
                               ("whole benchmark", t2 - bench.started)]),
        "",
    ]
    out = HERE / "results" / "improve-poison.md"
    header = ("# Improvement benchmark: poisoned corrections on the default model\n\n"
              "Target: rejected every time. One section per run, newest last.\n\n")
    out.write_text((out.read_text() if out.exists() else header) + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
