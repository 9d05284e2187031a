"""Does a refit on one kind of question's labels move the confidence of the others? The anchored refit with a
free intercept (fit_calibrator_v1 until 2026-12-06) against one with a free level per kind of question
(reflect._fit_logistic_around_kinds, what it fits now), at the shipped penalties, on the 2,220 answers kept in
bench/results/lodo-answers/ and the out-of-box answers (bench/results/out-of-box-answers/).

    .venv/bin/python bench/refit_kinds_bench.py [--penalties 30,0.3] [--calibrator FILE] [--p-true-min-tokens N]

(--penalties: features and intercept / kind levels, both fits; default: the database's calibration_anchor_l2 and
calibration_anchor_intercept_l2. --calibrator: the installed calibrator the refits anchor on (default: the one
pgreflect ships); --p-true-min-tokens: the answers as a worker with it serves them (default: the worker's). The
reading of refit-kinds.md was made at 30,0.3 with the calibrator shipped until 2026-12-06 and P(True) after every
answer: --calibrator bench/results/out-of-box-answers/served-calibrator-2026-11-28.json --p-true-min-tokens 0.)

1. Labels of one dataset, other datasets' traffic: the shipped calibrator refitted on k labels of dataset D
   (DRAWS random draws), scored on every other dataset, by whether it asks another kind of question or the
   same kind, and on D's unlabelled rest. Change in Brier score and in ECE against the shipped calibrator;
   intervals: bootstrap over the labelled datasets (their draws resampled together).
2. Labels of mixed traffic the shipped fit never saw: a stand-in fitted (reflect._fit_logistic, as the shipped
   one) without two datasets of different kinds; k labels drawn from the two together, the rest scored.
3. Labels of mixed traffic the shipped fit saw: k labels drawn from all 2,220 answers, the rest scored (every
   change is noise here: what the extra terms cost).
4. The out-of-box run, replayed: the shipped calibrator refitted on the first k MMLU answers as `pgreflect
   eval` labelled them (all k, where the product trains on 80% and checks on the rest), scored on its GSM8K
   answers.

The fits are bench/lodo_few_labels.py's numpy copies, checked against the SQL here (the run stops if they
differ); ECE as reflect.ece_v1 (10 bins), floors as reflect.eval_metrics_v1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lodo_analysis import ANSWERS, Fitter, load, load_all, p_true_after  # noqa: E402
from lodo_few_labels import (  # noqa: E402
    KINDS,
    brier,
    check_against_sql,
    ece,
    ece_floor,
    fit_around,
    fit_around_kinds,
    matrix,
    score,
)
from out_of_box_bench import ANSWERS as OUT_OF_BOX_ANSWERS  # noqa: E402
from out_of_box_bench import answers_path, served_by  # noqa: E402

from pgreflect.meta import shipped  # noqa: E402
from pgreflect.models import DEFAULT_MODEL, PACKAGED  # noqa: E402
from pgreflect.worker import WorkerConfig  # noqa: E402

from bench_cluster import pgreflect_database, start_cluster  # noqa: E402

RESULTS = HERE / "results"
KS = (25, 50, 100)
DRAWS = 20
PAIRS = 16
BOOT = 2000
# A refit to compare: which fit ("intercept": reflect._fit_logistic_around, "kinds":
# reflect._fit_logistic_around_kinds) at which penalties (features and intercept, kind levels).
Spec = tuple[str, tuple[float, float]]


def kind_of(x: np.ndarray, names: list[str]) -> str:
    share = np.nanmean(x[:, [names.index(k) for k in KINDS]], axis=0)
    return KINDS[int(np.argmax(share))].removeprefix("kind_") if share.max() > 0.5 else "short"


def refit(spec: Spec, x: np.ndarray, y: np.ndarray, names: list[str], means: np.ndarray, sds: np.ndarray,
          w0: np.ndarray) -> np.ndarray:
    which, pens = spec
    if which == "intercept":
        return fit_around(x, y, means, sds, w0, *pens)
    return fit_around_kinds(x, y, names, means, sds, w0, *pens)


def interval(per_unit: dict[str, list[float]], rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean over every value, and a bootstrap 95% interval resampling the units (their values together)."""
    units = [np.array(v) for v in per_unit.values() if v]
    mean = float(np.mean(np.concatenate(units)))
    boots = []
    for _ in range(BOOT):
        pick = rng.integers(0, len(units), len(units))
        boots.append(float(np.mean(np.concatenate([units[i] for i in pick]))))
    return mean, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def served_features(conn: psycopg.Connection, row: dict[str, Any]) -> dict[str, Any]:
    """The features the database computes for an answer as `pgreflect eval` writes it (reflect._feature_values on
    its signals and token count)."""
    s = row["signals"]
    return conn.execute("SELECT reflect._feature_values(%s, %s, %s, %s::jsonb)",
                        (s["logprob_mean"], s["logprob_min"], row["tokens"], json.dumps(s))).fetchone()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--penalties", default=None, help="A,B: calibration_anchor_l2, calibration_anchor_intercept_l2")
    add_calibrator_args(ap)
    args = ap.parse_args()
    t0 = time.time()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    inputs = Inputs(args)
    names, means, sds, w0, rows, x, y, kinds = (inputs.names, inputs.means, inputs.sds, inputs.w0, inputs.rows,
                                                inputs.x, inputs.y, inputs.kinds)
    sets = sorted(x)
    rng = np.random.default_rng(17)
    cluster = start_cluster()
    try:
        conn = psycopg.connect(pgreflect_database(cluster), autocommit=True)
        pens = anchor_penalties(conn)
        if args.penalties:
            a, b = (float(v) for v in args.penalties.split(","))
            pens = (a, b)
        report_command = " ".join(["bench/refit_kinds_bench.py", *sys.argv[1:]])
        first = sets[0]
        check_against_sql(conn, x[first][:50], y[first][:50], names, means, sds, w0, pens)
        sql_plain = conn.execute("SELECT weights FROM reflect._fit_logistic_around(%s::float8[], %s, %s, %s, %s, "
                                 "%s, %s)", ([[None if np.isnan(v) else float(v) for v in r] for r in x[first][:50]],
                                  [bool(v) for v in y[first][:50]], means.tolist(), sds.tolist(), w0.tolist(), *pens)
                                 ).fetchone()[0]
        if not np.allclose(sql_plain, fit_around(x[first][:50], y[first][:50], means, sds, w0, *pens), atol=1e-6):
            raise SystemExit("the numpy fit differs from reflect._fit_logistic_around")
        report: dict[str, Any] = {"started": started, "command": report_command, "penalties": pens, "kinds": kinds,
                                  "draws": DRAWS}
        fits: dict[str, Spec] = {"intercept": ("intercept", pens), "kinds": ("kinds", pens)}
        report["one_dataset"] = one_dataset(x, y, kinds, names, means, sds, w0, fits, rng)
        print("1 done", flush=True)
        report["unseen_pairs"] = unseen_pairs(Fitter(conn), rows, x, y, kinds, names, fits, rng)
        print("2 done", flush=True)
        report["seen_mixed"] = seen_mixed(x, y, names, means, sds, w0, fits, rng)
        print("3 done", flush=True)
        report["out_of_box"] = out_of_box(conn, names, means, sds, w0, fits, args.p_true_min_tokens)
    finally:
        cluster.destroy()
    report["minutes"] = (time.time() - t0) / 60
    (RESULTS / "refit-kinds.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (RESULTS / "refit-kinds.md").write_text(text)
    print(text)


def one_dataset(x, y, kinds, names, means, sds, w0, fits: dict[str, Spec], rng, ks=KS) -> dict[str, Any]:
    sets = sorted(x)
    base = {e: score(x[e], means, sds, w0) for e in sets}
    out: dict[str, Any] = {}
    for k in ks:
        # changes[fit][group][labelled dataset] = list of (Brier change, ECE change) per draw and scored dataset
        changes = {f: {g: {d: [] for d in sets} for g in ("same dataset", "same kind", "other kinds")}
                   for f in fits}
        for d in sets:
            for _ in range(DRAWS):
                pick = rng.permutation(len(y[d]))
                lab, rest = pick[:k], pick[k:]
                for f, spec in fits.items():
                    w = refit(spec, x[d][lab], y[d][lab], names, means, sds, w0)
                    for e in sets:
                        at = rest if e == d else slice(None)
                        c0, c1, ye = base[e][at], score(x[e][at], means, sds, w), y[e][at]
                        group = "same dataset" if e == d else "same kind" if kinds[e] == kinds[d] else "other kinds"
                        changes[f][group][d].append((brier(c1, ye) - brier(c0, ye), ece(c1, ye) - ece(c0, ye)))
        out[k] = {f: {g: {"brier": interval({d: [v[0] for v in vs] for d, vs in per.items()}, rng),
                          "ece": interval({d: [v[1] for v in vs] for d, vs in per.items()}, rng)}
                      for g, per in changes[f].items()} for f in fits}
    return out


def unseen_pairs(fitter, rows, x, y, kinds, names, fits: dict[str, Spec], rng) -> dict[str, Any]:
    sets = sorted(x)
    pairs = [(a, b) for a, b in itertools.combinations(sets, 2) if kinds[a] != kinds[b]]
    pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), size=min(PAIRS, len(pairs)), replace=False))]
    per: dict[int, dict[str, dict[str, list[tuple[float, float, float]]]]] = {
        k: {f: {} for f in ("none", *fits)} for k in KS}
    for a, b in pairs:
        m, s, w = (np.array(v, dtype=float) for v in fitter.fit([r for r in rows if r["dataset"] not in (a, b)], names))
        xu, yu = np.vstack([x[a], x[b]]), np.concatenate([y[a], y[b]])
        for k in KS:
            for _ in range(DRAWS // 2):
                pick = rng.permutation(len(yu))
                lab, rest = pick[:k], pick[k:]
                fitted = {"none": w, **{f: refit(spec, xu[lab], yu[lab], names, m, s, w) for f, spec in fits.items()}}
                for f, wf in fitted.items():
                    c = score(xu[rest], m, s, wf)
                    per[k][f].setdefault(f"{a}+{b}", []).append((brier(c, yu[rest]), ece(c, yu[rest]),
                                                                 ece(c, yu[rest]) - ece_floor(c, rng, sims=50)))
    return {"pairs": [f"{a}+{b}" for a, b in pairs],
            "per_k": {k: {f: {"brier": interval({p: [v[0] for v in vs] for p, vs in d.items()}, rng),
                              "ece": interval({p: [v[1] for v in vs] for p, vs in d.items()}, rng),
                              "ece_gap": interval({p: [v[2] for v in vs] for p, vs in d.items()}, rng)}
                          for f, d in per[k].items()} for k in KS}}


def seen_mixed(x, y, names, means, sds, w0, fits: dict[str, Spec], rng) -> dict[str, Any]:
    xa, ya = np.vstack([x[d] for d in sorted(x)]), np.concatenate([y[d] for d in sorted(x)])
    out: dict[str, Any] = {}
    for k in (*KS, 200):
        ch: dict[str, dict[str, list[float]]] = {f: {} for f in fits}
        for i in range(DRAWS * 2):
            pick = rng.permutation(len(ya))
            lab, rest = pick[:k], pick[k:]
            c0 = score(xa[rest], means, sds, w0)
            for f, spec in fits.items():
                c1 = score(xa[rest], means, sds, refit(spec, xa[lab], ya[lab], names, means, sds, w0))
                ch[f][str(i)] = [brier(c1, ya[rest]) - brier(c0, ya[rest])]
        out[k] = {f: interval(v, rng) for f, v in ch.items()}
    return out


class Inputs:
    """The installed calibrator (--calibrator) and the kept answers as a worker with --p-true-min-tokens serves them,
    per dataset: features in the calibrator's order, labels, kind of question."""

    def __init__(self, args: argparse.Namespace):
        doc = json.loads(Path(args.calibrator).read_text())
        self.names: list[str] = doc["features"]
        self.means, self.sds, self.w0 = (np.array(doc[k], dtype=float)
                                         for k in ("feature_means", "feature_stds", "weights"))
        self.rows = p_true_after(load_all(ANSWERS), args.p_true_min_tokens)
        sets = sorted({r["dataset"] for r in self.rows})
        self.x = {d: matrix([r for r in self.rows if r["dataset"] == d], self.names) for d in sets}
        self.y = {d: np.array([r["correct"] for r in self.rows if r["dataset"] == d], dtype=float) for d in sets}
        self.kinds = {d: kind_of(self.x[d], self.names) for d in sets}


def anchor_penalties(conn: psycopg.Connection) -> tuple[float, float]:
    """The database's (calibration_anchor_l2, calibration_anchor_intercept_l2)."""
    settings = dict(conn.execute("SELECT key, value FROM reflect.settings WHERE key LIKE 'calibration_anchor_%'")
                    .fetchall())
    return float(settings["calibration_anchor_l2"]), float(settings["calibration_anchor_intercept_l2"])


def add_calibrator_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--calibrator", default=str(shipped.HERE / f"{PACKAGED[DEFAULT_MODEL].sha256}.json"),
                    help="the installed calibrator the refits anchor on (default: the one pgreflect ships)")
    ap.add_argument("--p-true-min-tokens", type=int, default=WorkerConfig().p_true_min_tokens,
                    help="the answers as a worker with this --p-true-min-tokens serves them (default: the worker's)")


def out_of_box(conn, names, means, sds, w0, fits: dict[str, Spec], p_true_min_tokens: int) -> dict[str, Any]:
    runs = {d: sorted(load(answers_path(d, 1)), key=lambda r: r["request_id"]) for d in ("mmlu", "gsm8k")}
    served = {d: [{"features": served_features(conn, r)} for r in rs] for d, rs in runs.items()}
    ys = {d: np.array([r["correct"] for r in rs], dtype=float) for d, rs in runs.items()}
    # The first MMLU answers were served by the calibrator shipped then (before any refit): their features must give
    # the confidence they were served with.
    then = json.loads((OUT_OF_BOX_ANSWERS / served_by(json.loads((RESULTS / "out-of-box.json").read_text()))[
        "out-of-box-mmlu"]).read_text())
    first = [r["confidence"] for r in runs["mmlu"][:20]]
    check = score(matrix(served["mmlu"][:20], then["features"]),
                  *(np.array(then[k], dtype=float) for k in ("feature_means", "feature_stds", "weights")))
    if not np.allclose(check, first, atol=1e-9):
        raise SystemExit("the out-of-box answers' features do not give their served confidence")
    feats = {d: matrix(p_true_after(rs, p_true_min_tokens), names) for d, rs in served.items()}
    g = ys["gsm8k"]
    out: dict[str, Any] = {"gsm8k_accuracy": float(g.mean())}
    c = score(feats["gsm8k"], means, sds, w0)
    out["shipped"] = {"mean_confidence": float(c.mean()), "ece": ece(c, g), "brier": brier(c, g)}
    for k in (25, 50, 100, 200):
        xl, yl = feats["mmlu"][:k], ys["mmlu"][:k]
        out[k] = {}
        for f, spec in fits.items():
            w = refit(spec, xl, yl, names, means, sds, w0)
            c = score(feats["gsm8k"], means, sds, w)
            out[k][f] = {"mean_confidence": float(c.mean()), "ece": ece(c, g), "brier": brier(c, g)}
    return out


def _iv(v: tuple[float, float, float], scale: float = 1.0) -> str:
    return f"{v[0] * scale:+.4f} [{v[1] * scale:+.4f}, {v[2] * scale:+.4f}]"


def markdown(r: dict[str, Any]) -> str:
    lines = ["# A refit on one kind of question's labels, and the other kinds' confidence", "",
             f"Command: `.venv/bin/python {r.get('command', 'bench/refit_kinds_bench.py')}` ({r['started']}, "
             f"{r['minutes']:.1f} min, 2 cores). Penalties (calibration_anchor_l2 {r['penalties'][0]:g}, "
             f"calibration_anchor_intercept_l2 {r['penalties'][1]:g}). 'intercept': the anchored refit with its "
             "intercept free (what fit_calibrator_v1 did); 'kinds': with a free level per kind of question "
             "(reflect._fit_logistic_around_kinds, what it does now). Kinds of the datasets: "
             + ", ".join(f"{d} {k}" for d, k in r["kinds"].items()) + ".", "",
             f"## 1. k labels of one dataset; change against the shipped calibrator ({r['draws']} draws per "
             "dataset; intervals: bootstrap over the 12 labelled datasets)", "",
             "Negative is better. 'other kinds': the datasets that ask another kind of question than the labelled "
             "one; 'same kind': the others of its kind; 'same dataset': its unlabelled answers.", "",
             "| k | scored | Brier change: intercept | kinds | ECE change: intercept | kinds |",
             "|---|---|---|---|---|---|"]
    for k, by in r["one_dataset"].items():
        for g in ("other kinds", "same kind", "same dataset"):
            lines.append(f"| {k} | {g} | {_iv(by['intercept'][g]['brier'])} | {_iv(by['kinds'][g]['brier'])} | "
                         f"{_iv(by['intercept'][g]['ece'])} | {_iv(by['kinds'][g]['ece'])} |")
    u = r["unseen_pairs"]
    lines += ["", f"## 2. Mixed traffic the shipped fit never saw: {len(u['pairs'])} pairs of datasets of different "
              "kinds, each left out of a stand-in fit; k labels drawn from the pair, the rest scored", "",
              "Pairs: " + ", ".join(u["pairs"]) + ". Intervals: bootstrap over the pairs.", "",
              "| k | fit | Brier | ECE | ECE above its floor |", "|---|---|---|---|---|"]
    for k, by in u["per_k"].items():
        for f, m in by.items():
            lines.append(f"| {k} | {f} | {m['brier'][0]:.4f} [{m['brier'][1]:.4f}, {m['brier'][2]:.4f}] | "
                         f"{m['ece'][0]:.4f} [{m['ece'][1]:.4f}, {m['ece'][2]:.4f}] | {_iv(m['ece_gap'])} |")
    lines += ["", "## 3. Mixed traffic the shipped fit saw: k labels drawn from all 2,220 answers, the rest scored",
              "", "Brier change against the shipped calibrator (it is fitted on these answers: any change is noise, "
              "so this is what a refit's extra terms cost).", "", "| k | intercept | kinds |", "|---|---|---|"]
    for k, by in r["seen_mixed"].items():
        lines.append(f"| {k} | {_iv(by['intercept'])} | {_iv(by['kinds'])} |")
    o = r["out_of_box"]
    lines += ["", "## 4. The out-of-box run replayed: refitted on its first k MMLU labels, scored on its GSM8K "
              f"answers (accuracy {o['gsm8k_accuracy']:.3f})", "",
              "| labels | fit | GSM8K mean confidence | ECE | Brier |", "|---|---|---|---|---|",
              f"| 0 | shipped | {o['shipped']['mean_confidence']:.3f} | {o['shipped']['ece']:.3f} | "
              f"{o['shipped']['brier']:.4f} |"]
    for k in ("25", "50", "100", "200"):
        m = o[k] if k in o else o[int(k)]
        for f in m:
            lines.append(f"| {k} | {f} | {m[f]['mean_confidence']:.3f} | {m[f]['ece']:.3f} | {m[f]['brier']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
