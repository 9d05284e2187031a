"""Improvement benchmark, run 2: a skill from packaged datasets' train splits, through the public path only.

    .venv/bin/python bench/improve_skill_bench.py [--train 100] [--heldout 80] [--other 60] [--retention 150]

Two BIG-bench tasks (fetched once from the bigbench sdist, see pgreflect.datasets): two-digit multiplication
(arithmetic the model half knows) and "plus one" addition (the few-shot lines in each prompt follow a rule,
a + b -> a + b + 1, that the model does not pick up in context). The app asks `--train` items of each task's
train split; a reviewer labels every answer (right: confirmed; wrong: corrected with the target) through
reflect.feedback_v1; the cron's calibrator fit runs; `improve run` curates, trains, converts and gates with
the default hyperparameters. Then held-out items of the same tasks (never asked before) and MMLU questions
(another kind, outside the retention set) are asked of the parent and the candidate with memory off and on.
Reported with bootstrap 95% intervals: accuracy, paired gains, latency and prompt size with memory on/off,
calibration of the confidence before/after (with the ECE a perfectly calibrated score would show at this n),
the gate's numbers, seconds per step, wall time and peak RSS. Written to bench/results/improve-skill.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from improve_common import ImproveBench, bootstrap, cost_lines, fmt, gate_lines  # noqa: E402

from pgreflect import datasets  # noqa: E402
from pgreflect.improve import retention  # noqa: E402
from pgreflect.models import DEFAULT_MODEL  # noqa: E402
from pgreflect.scoring import is_correct  # noqa: E402

TASKS = ["bb-multiply-2digit", "bb-plus-one-addition"]  # run 2 as recorded: other tasks were added for issue 8
MAX_TOKENS = 12  # a number; a model that starts explaining instead is wrong, as an app would see it


def ece(conf: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(conf[idx == b].sum() - y[idx == b].sum()) for b in range(bins)) / len(conf))


def auroc_wrong(conf: np.ndarray, y: np.ndarray) -> float:
    """P(a wrong answer has lower confidence than a right one), ties half."""
    wrong, right = conf[~y], conf[y]
    if len(wrong) == 0 or len(right) == 0:
        return float("nan")
    return float((wrong[:, None] < right[None, :]).mean() + 0.5 * (wrong[:, None] == right[None, :]).mean())


def calibration_row(label: str, conf: list[float], correct: list[float], seed: int = 0) -> str:
    c, y = np.asarray(conf, dtype=float), np.asarray(correct, dtype=float).astype(bool)
    rng = np.random.default_rng(seed)
    boots = rng.integers(0, len(c), size=(1000, len(c)))
    e = [ece(c[b], y[b]) for b in boots]
    brier = [float(((c[b] - y[b]) ** 2).mean()) for b in boots]
    floor = np.median([ece(c, rng.uniform(size=len(c)) < c) for _ in range(1000)])
    au = [auroc_wrong(c[b], y[b]) for b in boots[:300]]
    return (f"| {label} | {len(c)} | {y.mean():.3f} | {c.mean():.3f} | {ece(c, y):.3f} "
            f"[{np.quantile(e, 0.025):.3f}, {np.quantile(e, 0.975):.3f}] | {floor:.3f} | "
            f"{((c - y) ** 2).mean():.3f} [{np.quantile(brier, 0.025):.3f}, {np.quantile(brier, 0.975):.3f}] | "
            f"{auroc_wrong(c, y):.3f} [{np.nanquantile(au, 0.025):.3f}, {np.nanquantile(au, 0.975):.3f}] |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=100, help="train-split items asked and labelled, per task")
    ap.add_argument("--heldout", type=int, default=80, help="held-out items per task for the evaluation")
    ap.add_argument("--other", type=int, default=60, help="MMLU questions of another kind for the evaluation")
    ap.add_argument("--retention", type=int, default=150)
    args = ap.parse_args()
    datasets.fetch_bigbench()
    train = [it for t in TASKS for it in datasets.select(t, "train", args.train)]
    heldout = [it for t in TASKS for it in datasets.select(t, "heldout", args.heldout)]
    # MMLU held-out questions after the retention set's sample (same order and seed: no overlap)
    other = datasets.select("mmlu", "heldout", retention.DEFAULT_SIZE + args.other, seed=7)[retention.DEFAULT_SIZE:]

    bench = ImproveBench({"gate_max_tokens": MAX_TOKENS}, args.retention)
    try:
        on = {"max_tokens": MAX_TOKENS, "temperature": 0, "memory": True}
        off = {**on, "memory": False}

        # 1. The app asks (its default: memory on); a reviewer labels every answer through the feedback path.
        t0 = time.time()
        asked = bench.ask([it["question"] for it in train], on, DEFAULT_MODEL)
        first_right = []
        for row, it in zip(asked, train, strict=True):
            right = is_correct(row["answer"] or "", it["answer"])
            first_right.append(float(right))
            bench.feedback(row["id"], right, None if right else it["answer"])
        with psycopg.connect(bench.dsn, autocommit=True) as conn:  # what pg_cron's refit does within 5 minutes
            parent_calibrator = conn.execute("SELECT reflect.fit_calibrator_v1(%s)", (DEFAULT_MODEL,)).fetchone()[0]

        # 2. improve run: curate, train, convert, gate.
        t1 = time.time()
        decision, candidate, training = bench.improve_run()
        t2 = time.time()

        # 3. Held-out items of the same tasks and MMLU questions, parent and candidate, memory off and on.
        results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for version in (DEFAULT_MODEL, candidate):
            for mem, params in (("off", off), ("on", on)):
                rows = bench.ask([it["question"] for it in heldout], params, version)
                results[(version, mem, "same")] = [
                    {**row, "right": float(is_correct(row["answer"] or "", it["answer"])), "task": it["dataset"]}
                    for row, it in zip(rows, heldout, strict=True)]
                rows = bench.ask([it["question"] for it in other], {**params, "max_tokens": retention.MAX_TOKENS},
                                 version)
                results[(version, mem, "other")] = [
                    {**row, "right": float(is_correct(row["answer"] or "", it["answer"])), "task": "mmlu"}
                    for row, it in zip(rows, other, strict=True)]
        t3 = time.time()
    finally:
        bench.close()

    def acc(version: str, mem: str, kind: str, task: str | None = None) -> list[float]:
        return [r["right"] for r in results[(version, mem, kind)] if task in (None, r["task"])]

    def paired(a: list[float], b: list[float]) -> str:
        return fmt(bootstrap([x - y for x, y in zip(a, b, strict=True)]))

    names = {DEFAULT_MODEL: "parent", candidate: "candidate"}
    lines = [
        "# Improvement benchmark, run 2: a skill from packaged datasets' train splits, default model",
        "",
        f"Command: `.venv/bin/python bench/improve_skill_bench.py --train {args.train} --heldout {args.heldout} "
        f"--other {args.other} --retention {args.retention}` ({time.strftime('%Y-%m-%d')}, this 2-core CPU "
        f"machine, {DEFAULT_MODEL}, default fine-tune settings).",
        "",
        f"Tasks (BIG-bench, Apache-2.0): {', '.join(f'`{t}` ({datasets.BIGBENCH_TASKS[t]})' for t in TASKS)}. "
        f"The app asked {args.train} train-split items of each with memory on (its default) and got "
        f"{fmt(bootstrap(first_right))} right; a reviewer confirmed the right answers and corrected the wrong "
        f"ones with the target through `reflect.feedback_v1`; the parent's calibrator was fitted on those "
        f"labels (calibrator {parent_calibrator}); `improve run` trained, converted and gated. Then "
        f"{args.heldout} held-out items of each task (never asked) and {args.other} MMLU questions (another "
        "kind; not in the retention set) were asked of both versions with memory off and on.",
        "",
        "## Accuracy on held-out items (bootstrap 95% intervals)",
        "",
        "| items | version | memory off | memory on | memory on − off (paired) |",
        "|---|---|---|---|---|",
    ]
    for kind, task, label in [("same", None, "same kind, both tasks"),
                              *[("same", t, f"same kind, `{t}`") for t in TASKS],
                              ("other", None, "other kind (MMLU)")]:
        for version in (DEFAULT_MODEL, candidate):
            a_off, a_on = acc(version, "off", kind, task), acc(version, "on", kind, task)
            lines.append(f"| {label} (n={len(a_off)}) | {names[version]} | {fmt(bootstrap(a_off))} | "
                         f"{fmt(bootstrap(a_on))} | {paired(a_on, a_off)} |")
    lines += [
        "",
        "Adapter alone vs nothing (memory off, paired, candidate − parent): "
        f"same kind {paired(acc(candidate, 'off', 'same'), acc(DEFAULT_MODEL, 'off', 'same'))}; "
        + "; ".join(f"`{t}` {paired(acc(candidate, 'off', 'same', t), acc(DEFAULT_MODEL, 'off', 'same', t))}"
                    for t in TASKS)
        + f"; other kind {paired(acc(candidate, 'off', 'other'), acc(DEFAULT_MODEL, 'off', 'other'))}. "
        "Target: held-out gain ≥ 0.05 with the lower bound > 0.",
        "",
        "## Memory on vs off: what it costs and what it changes (parent)",
        "",
        "| items | memory | share of answers given a memory | prompt tokens | model time per answer (ms) "
        "| answers changed vs off |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("same", "other"):
        base = results[(DEFAULT_MODEL, "off", kind)]
        for mem in ("off", "on"):
            rows = results[(DEFAULT_MODEL, mem, kind)]
            used = [float(bool(r["memory_used"])) for r in rows]
            ms = [float((r["prompt_eval_ms"] or 0) + (r["generation_ms"] or 0)) for r in rows]
            changed = [float((r["answer"] or "") != (b["answer"] or "")) for r, b in zip(rows, base, strict=True)]
            tokens = np.mean([r["prompt_tokens"] for r in rows])
            lines.append(f"| {kind} kind | {mem} | {np.mean(used):.2f} | {tokens:.0f} | {fmt(bootstrap(ms))} | "
                         f"{np.mean(changed):.2f} |")
    lines += [
        "",
        "## Calibration of the confidence, before and after (memory off, held-out items; never fitted on)",
        "",
        "Parent: its calibrator fitted on the reviewer's labels of the asked items. Candidate: the calibrator the "
        "gate fitted on its gate answers. Floor: the median ECE of a perfectly calibrated score at this n.",
        "",
        "| version, items | n | accuracy | mean confidence | ECE | ECE floor | Brier | AUROC (wrong) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for version in (DEFAULT_MODEL, candidate):
        for kind in ("same", "other"):
            rows = results[(version, "off", kind)]
            lines.append(calibration_row(f"{names[version]}, {kind} kind", [r["confidence"] for r in rows],
                                         [r["right"] for r in rows]))
    lines += [
        "",
        "## The gate",
        "",
        *gate_lines(decision),
        "",
        "## Cost",
        "",
        *cost_lines(training, [("asking + labelling", t1 - t0),
                               ("improve run to decision (train, convert, gate)", t2 - t1),
                               (f"evaluation (2 versions x 2 memory x {len(heldout) + len(other)})", t3 - t2),
                               ("whole benchmark", t3 - bench.started)]),
    ]
    out = HERE / "results" / "improve-skill.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
