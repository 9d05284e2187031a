"""P(True) only where it pays? A cascade measured on the repository's leave-one-dataset-out answers.

P(True) is what keeps the full path below 0.95x of direct llama-cpp-python (0.880x with it, 0.995x without:
bench/results/inference-signals-on*.md). The cascade: score each answer first without P(True); ask P(True)
only when that preliminary confidence falls inside a band [lo, hi], and keep the preliminary confidence
otherwise. Two preliminary scores: the full calibrator with P(True) missing (the SQL scoring gives a missing
feature its training mean: one calibrator to ship) and a calibrator fitted without P(True) (two to ship).
Every row of the grid is reported (nothing is chosen on these answers), leave-one-dataset-out as in
bench/lodo_analysis.py: averaged over the datasets with at least 10 right and 10 wrong answers, and pooled.
The speed column is derived, not measured: per-token time interpolated between the two measured runs
(1 / (share / 0.880 + (1 - share) / 0.995)).

    .venv/bin/python bench/p_true_cascade.py     # ~5 min; writes bench/results/p-true-cascade.{md,json}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lodo_analysis import (  # noqa: E402
    ANSWERS,
    Fitter,
    answer_tokens,
    averaged,
    load,
    load_all,
    paired_auroc_diff,
    paired_ece_diff,
    shipped_features,
)
from out_of_box_bench import answers_path, kept_parts  # noqa: E402
from refit_kinds_bench import served_features  # noqa: E402

from bench_cluster import pgreflect_database, start_cluster  # noqa: E402

BANDS = [(0.05, 0.95), (0.1, 0.9), (0.15, 0.85), (0.2, 0.8), (0.2, 1.0), (0.3, 1.0), (0.0, 0.5)]
# P(True) asked only after answers of at least this many tokens: its pass is a fixed ~23 tokens, so its share of an
# answer's time falls with the answer's length (bench/results/p-true-cost.md).
MIN_TOKENS = [4, 16, 32, 64, 128, 256]
MEASURED = {"on": 0.880, "off": 0.995}  # full path / direct, with and without P(True), same run of prompts


def without_p_true(rows: list[dict[str, Any]], where: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The rows with P(True) removed (where `where` is true, every row when it is None)."""
    return [{**r, "features": {k: v for k, v in r["features"].items() if k != "p_true"}}
            if where is None or where[i] else r for i, r in enumerate(rows)]


def summary(fitter: Fitter, conf: np.ndarray, y: np.ndarray, ds: np.ndarray) -> dict[str, Any]:
    pooled = fitter.metrics(conf.tolist(), y.tolist())
    return {**averaged(fitter.per_dataset(conf, y, ds)), "pooled_auroc": pooled["auroc"],
            "pooled_ece": pooled["ece"], "pooled_floor": pooled["ece_floor"]}


def out_of_box_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The out-of-box runs' answers (fresh MMLU and GSM8K questions, never in a fit), with the features the
    database computed from the signals they were served with."""
    return [{"dataset": name, "correct": bool(r["correct"]), "features": served_features(conn, r)}
            for name in ("mmlu", "gsm8k") for part in kept_parts(name) for r in load(answers_path(name, part))]


def length_policies(fitter: Fitter, conn: psycopg.Connection, rows: list[dict[str, Any]], names: list[str],
                    full: np.ndarray, y: np.ndarray, ds: np.ndarray) -> list[dict[str, Any]]:
    """P(True) asked only after answers of at least n tokens: one calibrator, fitted on answers served that way
    (P(True) missing below n), scoring answers served that way; leave-one-dataset-out, paired against asking it
    always, and fitted on every kept answer to score the out-of-box answers."""
    tokens = answer_tokens(rows)
    fresh = out_of_box_rows(conn)
    fresh_tokens, fresh_y = answer_tokens(fresh), np.array([r["correct"] for r in fresh])
    fresh_ds = np.array([r["dataset"] for r in fresh])
    fresh_always = np.array(fitter.score(fitter.fit(rows, names), fresh, names))
    out = [{"min_tokens": 0, "share_asked": 1.0, **summary(fitter, full, y, ds),
            "out_of_box": {"share_asked": 1.0, **summary(fitter, fresh_always, fresh_y, fresh_ds)}}]
    for n in MIN_TOKENS:
        skipped = tokens < n
        conf = np.zeros(len(rows))
        for held in sorted(set(ds)):
            at, train_at = np.flatnonzero(ds == held), np.flatnonzero(ds != held)
            model = fitter.fit(without_p_true([rows[i] for i in train_at], skipped[train_at]), names)
            conf[at] = fitter.score(model, without_p_true([rows[i] for i in at], skipped[at]), names)
        model = fitter.fit(without_p_true(rows, skipped), names)
        fresh_conf = np.array(fitter.score(model, without_p_true(fresh, fresh_tokens < n), names))
        out.append({"min_tokens": n, "share_asked": float((~skipped).mean()), **summary(fitter, conf, y, ds),
                    "auroc_change": paired_auroc_diff(conf, full, y), "ece_change": paired_ece_diff(conf, full, y),
                    "out_of_box": {"share_asked": float((fresh_tokens >= n).mean()),
                                   **summary(fitter, fresh_conf, fresh_y, fresh_ds),
                                   "auroc_change": paired_auroc_diff(fresh_conf, fresh_always, fresh_y),
                                   "ece_change": paired_ece_diff(fresh_conf, fresh_always, fresh_y)}})
        print(f"P(True) from {n} tokens done", flush=True)
    return out


def speed(share: float) -> float:
    return 1 / (share / MEASURED["on"] + (1 - share) / MEASURED["off"])


def main() -> None:
    started = time.time()
    rows = load_all(ANSWERS)
    y = np.array([r["correct"] for r in rows])
    ds = np.array([r["dataset"] for r in rows])
    cluster = start_cluster()
    try:
        with psycopg.connect(pgreflect_database(cluster), autocommit=True) as conn:
            fitter = Fitter(conn)
            names = shipped_features()
            kept = [n for n in names if n != "p_true"]
            full, imputed, refitted = (np.zeros(len(rows)) for _ in range(3))
            for held in sorted(set(ds)):
                at = np.flatnonzero(ds == held)
                train = [rows[i] for i in np.flatnonzero(ds != held)]
                test = [rows[i] for i in at]
                model = fitter.fit(train, names)
                full[at] = fitter.score(model, test, names)
                imputed[at] = fitter.score(model, without_p_true(test), names)
                refitted[at] = fitter.score(fitter.fit(train, kept), test, kept)
            by_length = length_policies(fitter, conn, rows, names, full, y, ds)
            report: dict[str, Any] = {"n": len(rows), "measured_speed": MEASURED, "by_length": by_length,
                                      "always": summary(fitter, full, y, ds),
                                      "never (P(True) missing)": summary(fitter, imputed, y, ds),
                                      "never (fitted without)": summary(fitter, refitted, y, ds), "bands": []}
            for first, conf0 in (("P(True) missing", imputed), ("fitted without", refitted)):
                for lo, hi in BANDS:
                    run = (conf0 >= lo) & (conf0 <= hi)
                    report["bands"].append({"preliminary": first, "band": [lo, hi], "share_asked": float(run.mean()),
                                            **summary(fitter, np.where(run, full, conf0), y, ds)})
    finally:
        cluster.destroy()
    report["minutes"] = (time.time() - started) / 60
    (HERE / "results" / "p-true-cascade.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report)


def write_markdown(report: dict[str, Any]) -> None:
    def row(label: str, share: float, m: dict[str, Any]) -> str:
        return (f"| {label} | {share:.0%} | {speed(share):.3f} | {m['auroc']:.3f} | {m['ece_gap']:+.3f} | "
                f"{m['share']:.0%} | {m['pooled_auroc']:.3f} | {m['pooled_ece']:.3f} ({m['pooled_floor']:.3f}) |")

    lines = ["# P(True) only where it pays: a cascade, leave-one-dataset-out", "",
             f"Command: `.venv/bin/python bench/p_true_cascade.py` ({report['minutes']:.0f} min, 2 cores), on the "
             f"{report['n']} answers kept in bench/results/lodo-answers/. Averages over the "
             f"{len(report['always']['averaged_over'])} held-out datasets with at least 10 right and 10 wrong answers; "
             "speed: derived from the measured full path / direct ratios with P(True) on every answer "
             f"({MEASURED['on']}) and on none ({MEASURED['off']}), not measured.", "",
             "| P(True) asked | share asked | speed (derived) | avg AUROC | avg ECE gap | avg share of oracle | "
             "pooled AUROC | pooled ECE (floor) |", "|---|---|---|---|---|---|---|---|",
             row("always", 1.0, report["always"]),
             row("never, the calibrator with P(True) missing", 0.0, report["never (P(True) missing)"]),
             row("never, a calibrator fitted without it", 0.0, report["never (fitted without)"])]
    for b in report["bands"]:
        lo, hi = b["band"]
        lines.append(row(f"preliminary ({b['preliminary']}) in [{lo}, {hi}]", b["share_asked"], b))
    lines += ["", "P(True) asked only after answers of at least n tokens (one calibrator, fitted on answers served "
              "that way). Leave-one-dataset-out on the kept answers as above, and out of the box: fitted on every kept "
              "answer, scoring the out-of-box runs' answers (fresh MMLU and GSM8K questions, bench/results/"
              "out-of-box.md; pooled and averaged over their two datasets). Changes against asking it always: paired "
              "bootstrap 95%. Speed: not derived here, it depends on the answers' lengths (bench/results/"
              "p-true-cost.md).", "",
              "| P(True) asked | share asked | avg AUROC | avg ECE gap | avg share of oracle | pooled AUROC | "
              "pooled AUROC change | pooled ECE (floor) | pooled ECE change | out of the box: share asked | AUROC | "
              "AUROC change | ECE (floor) | ECE change | avg ECE gap |", "|---" * 15 + "|"]

    def change(v: Any) -> str:
        return f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]" if v else ""

    for b in report.get("by_length", []):
        o = b["out_of_box"]
        label = "always" if b["min_tokens"] == 0 else f"answers of {b['min_tokens']} tokens or more"
        lines.append(f"| {label} | {b['share_asked']:.0%} | {b['auroc']:.3f} | {b['ece_gap']:+.3f} | {b['share']:.0%} "
                     f"| {b['pooled_auroc']:.3f} | {change(b.get('auroc_change'))} | {b['pooled_ece']:.3f} "
                     f"({b['pooled_floor']:.3f}) | {change(b.get('ece_change'))} | {o['share_asked']:.0%} | "
                     f"{o['pooled_auroc']:.3f} | {change(o.get('auroc_change'))} | {o['pooled_ece']:.3f} "
                     f"({o['pooled_floor']:.3f}) | {change(o.get('ece_change'))} | {o['ece_gap']:+.3f} |")
    (HERE / "results" / "p-true-cascade.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
