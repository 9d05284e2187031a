"""Which penalty should hold the kind levels of a version's refit (calibration_anchor_intercept_l2)? The refit
anchored on the installed calibrator (reflect._fit_logistic_around_kinds) at the shipped penalties against
candidates, side by side on the same draws of the 2,220 answers kept in bench/results/lodo-answers/ and the
out-of-box answers:

    .venv/bin/python bench/kind_penalty_bench.py [--calibrator FILE] [--p-true-min-tokens N]

(as bench/refit_kinds_bench.py: the installed calibrator, default the shipped one, and the answers as a worker with
--p-true-min-tokens serves them, default the worker's; the reading of kind-penalty.md was made with the calibrator
shipped until 2026-12-06 and P(True) after every answer: --calibrator
bench/results/out-of-box-answers/served-calibrator-2026-11-28.json --p-true-min-tokens 0.)

1. A user's own traffic (as bench/lodo_few_labels.py): each dataset in turn is traffic the calibrator never saw
   (a stand-in fitted on the others, as the shipped one); k of its answers labelled, the rest scored. What a
   smaller penalty buys. Paired against the shipped penalties (same draws), bootstrap over the 12 datasets.
2. The other datasets' traffic after k labels of one dataset (bench/refit_kinds_bench.py section 1): what a
   user's labels of one task cost the rest (the same kind of question, other kinds).
3. Labels of traffic the shipped fit already matches (refit_kinds section 3): the noise the free terms add.
4. Mixed traffic the shipped fit never saw (refit_kinds section 2).
5. The out-of-box run replayed (refit_kinds section 4): GSM8K's confidence after MMLU labels.

The fits are the numpy copies of bench/lodo_few_labels.py, checked against the SQL at every candidate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lodo_analysis import Fitter  # noqa: E402
from lodo_few_labels import brier, check_against_sql, ece, ece_floor, fit_around_kinds, matrix, score  # noqa: E402
from refit_kinds_bench import (  # noqa: E402
    Inputs,
    Spec,
    add_calibrator_args,
    anchor_penalties,
    one_dataset,
    out_of_box,
    seen_mixed,
    unseen_pairs,
)

from bench_cluster import pgreflect_database, start_cluster  # noqa: E402

RESULTS = HERE / "results"
KS = (25, 50, 100)
DRAWS = 40
BOOT = 2000
KIND_L2S = (0.3, 1.0, 3.0, 10.0)
MIN_LEFT = 40


def own_traffic(fitter: Fitter, rows: list[dict[str, Any]], names: list[str], fits: dict[str, Spec],
                rng: np.random.Generator) -> dict[str, Any]:
    """per_k[k][fit][dataset] = {"brier": mean over draws, "ece_gap": mean over draws}; 'none' is the stand-in."""
    sets = sorted({r["dataset"] for r in rows})
    out: dict[int, dict[str, dict[str, dict[str, float]]]] = {k: {f: {} for f in ("none", *fits)} for k in KS}
    for held in sets:
        train = [r for r in rows if r["dataset"] != held]
        means, sds, w0 = (np.array(v, dtype=float) for v in fitter.fit(train, names))
        test = [r for r in rows if r["dataset"] == held]
        x, y = matrix(test, names), np.array([r["correct"] for r in test], dtype=float)
        for k in KS:
            if len(y) - k < MIN_LEFT:
                continue
            per: dict[str, list[tuple[float, float]]] = {f: [] for f in ("none", *fits)}
            for _ in range(DRAWS):
                pick = rng.permutation(len(y))
                lab, rest = pick[:k], pick[k:]
                ws = {"none": w0, **{f: fit_around_kinds(x[lab], y[lab], names, means, sds, w0, *pens)
                                     for f, (_, pens) in fits.items()}}
                for f, w in ws.items():
                    c = score(x[rest], means, sds, w)
                    per[f].append((brier(c, y[rest]), ece(c, y[rest]) - ece_floor(c, rng, sims=100)))
            for f, v in per.items():
                out[k][f][held] = {"brier": float(np.mean([a for a, _ in v])),
                                   "ece_gap": float(np.mean([b for _, b in v]))}
        print(f"own traffic: {held} done", flush=True)
    return out


def paired(per: dict[str, dict[str, float]], base: dict[str, dict[str, float]], key: str,
           rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean over datasets of (candidate - base), bootstrap 95% over the datasets."""
    diffs = np.array([per[d][key] - base[d][key] for d in sorted(per)])
    boots = [float(np.mean(diffs[rng.integers(0, len(diffs), len(diffs))])) for _ in range(BOOT)]
    return float(diffs.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser()
    add_calibrator_args(ap)
    args = ap.parse_args()
    t0 = time.time()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    inputs = Inputs(args)
    names, means, sds, w0, rows, x, y, kinds = (inputs.names, inputs.means, inputs.sds, inputs.w0, inputs.rows,
                                                inputs.x, inputs.y, inputs.kinds)
    sets = sorted(x)
    rng = np.random.default_rng(23)
    cluster = start_cluster()
    try:
        conn = psycopg.connect(pgreflect_database(cluster), autocommit=True)
        shipped_pens = anchor_penalties(conn)
        candidates = sorted({shipped_pens, *((shipped_pens[0], k) for k in KIND_L2S), (10.0, 1.0)})
        fits: dict[str, Spec] = {f"{a:g} / {b:g}": ("kinds", (a, b)) for a, b in candidates}
        first = sets[0]
        for _, pens in fits.values():
            check_against_sql(conn, x[first][:50], y[first][:50], names, means, sds, w0, pens)
        report: dict[str, Any] = {"started": started, "command": " ".join(["bench/kind_penalty_bench.py",
                                                                           *sys.argv[1:]]),
                                  "shipped": f"{shipped_pens[0]:g} / {shipped_pens[1]:g}",
                                  "fits": list(fits), "draws": DRAWS}
        report["own_traffic"] = own_traffic(Fitter(conn), rows, names, fits, rng)
        report["one_dataset"] = one_dataset(x, y, kinds, names, means, sds, w0, fits, rng, ks=(50,))
        print("spill-over done", flush=True)
        report["seen_mixed"] = seen_mixed(x, y, names, means, sds, w0, fits, rng)
        report["unseen_pairs"] = unseen_pairs(Fitter(conn), rows, x, y, kinds, names, fits, rng)
        print("mixed done", flush=True)
        report["out_of_box"] = out_of_box(conn, names, means, sds, w0, fits, args.p_true_min_tokens)
    finally:
        cluster.destroy()
    report["paired"] = {k: {f: {key: paired(report["own_traffic"][k][f], report["own_traffic"][k][report["shipped"]],
                                            key, rng) for key in ("brier", "ece_gap")} for f in fits}
                        for k in KS}
    report["minutes"] = (time.time() - t0) / 60
    (RESULTS / "kind-penalty.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (RESULTS / "kind-penalty.md").write_text(text)
    print(text)


def _iv(v: Any, signed: bool = True) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"


def markdown(r: dict[str, Any]) -> str:
    ship = r["shipped"]
    lines = ["# The penalty on a refit's kind levels", "",
             f"Command: `.venv/bin/python {r.get('command', 'bench/kind_penalty_bench.py')}` ({r['started']}, "
             f"{r['minutes']:.1f} min, 2 "
             "cores). Each fit: reflect._fit_logistic_around_kinds at 'features / kind levels' penalties "
             f"(calibration_anchor_l2 / calibration_anchor_intercept_l2); shipped: {ship}. Every fit sees the same "
             "draws. Negative changes are better.", "",
             f"## 1. A user's own traffic: k labels of a dataset the calibrator never saw, its rest scored "
             f"({r['draws']} draws per dataset and k; means over the 12 datasets; change against {ship}, paired, "
             "bootstrap 95% over the datasets)", "",
             "| k | fit | Brier | ECE gap | Brier change | ECE gap change |", "|---|---|---|---|---|---|"]
    for k, by in r["own_traffic"].items():
        for f, per in by.items():
            b = np.mean([v["brier"] for v in per.values()])
            g = np.mean([v["ece_gap"] for v in per.values()])
            p = r["paired"].get(k, r["paired"].get(str(k), {})).get(f)
            lines.append(f"| {k} | {f} | {b:.4f} | {g:+.4f} | " + (
                f"{_iv(p['brier'])} | {_iv(p['ece_gap'])} |" if p and f != ship else " | |"))
    lines += ["", "## 2. After 50 labels of one dataset: the change on the others' traffic against the calibrator "
              "before the refit (intervals: bootstrap over the 12 labelled datasets)", "",
              "| fit | same kind: Brier | ECE | other kinds: Brier | ECE | the labelled dataset's rest: Brier |",
              "|---|---|---|---|---|---|"]
    for by in r["one_dataset"].values():
        for f, m in by.items():
            lines.append(f"| {f} | {_iv(m['same kind']['brier'])} | {_iv(m['same kind']['ece'])} | "
                         f"{_iv(m['other kinds']['brier'])} | {_iv(m['other kinds']['ece'])} | "
                         f"{_iv(m['same dataset']['brier'])} |")
    lines += ["", "## 3. Labels of traffic the shipped fit already matches (k drawn from all 2,220 answers; any "
              "change is noise): Brier change", "", "| k | " + " | ".join(r["fits"]) + " |",
              "|---" * (len(r["fits"]) + 1) + "|"]
    for k, by in r["seen_mixed"].items():
        lines.append(f"| {k} | " + " | ".join(_iv(by[f]) for f in r["fits"]) + " |")
    u = r["unseen_pairs"]
    lines += ["", f"## 4. Mixed traffic the shipped fit never saw ({len(u['pairs'])} pairs of datasets of "
              "different kinds left out of a stand-in): ECE above its floor", "",
              "| k | none | " + " | ".join(r["fits"]) + " |", "|---" * (len(r["fits"]) + 2) + "|"]
    for k, by in u["per_k"].items():
        lines.append(f"| {k} | " + " | ".join(_iv(by[f]["ece_gap"]) for f in ("none", *r["fits"])) + " |")
    o = r["out_of_box"]
    lines += ["", f"## 5. The out-of-box run replayed: GSM8K's mean confidence (accuracy {o['gsm8k_accuracy']:.3f}; "
              f"shipped calibrator {o['shipped']['mean_confidence']:.3f}) after its first k MMLU labels", "",
              "| k | " + " | ".join(r["fits"]) + " |", "|---" * (len(r["fits"]) + 1) + "|"]
    for k in ("25", "50", "100", "200"):
        m = o[k] if k in o else o[int(k)]
        lines.append(f"| {k} | " + " | ".join(f"{m[f]['mean_confidence']:.3f} (ECE {m[f]['ece']:.3f})"
                                             for f in r["fits"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
