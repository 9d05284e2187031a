"""A user's first labels on traffic the shipped calibrator never saw: refit from scratch, anchored, or not at all.

For each dataset D, the calibrator fitted on the other datasets, on the shipped calibrator's features, stands in
for the shipped one (D is the user's traffic, never seen by it). k of D's answers are labelled (drawn at random,
REPEATS times), and the rest of D is scored three ways:
- none: the stand-in as it is (what a user has before any refit);
- scratch: a fit on the k labels alone (today's refit; the product only runs it from calibration_min_labels
  labels with calibration_min_per_class of each class, so it is reported where a draw meets that);
- anchored: the fit fit_calibrator_v1 makes when an installed calibrator exists (_fit_logistic_around_kinds:
  the stand-in's standardisation, its weights as the penalty's centre, a level per kind of question).
The anchored fit's two penalties are chosen without looking at D: for each D, the pair with the lowest mean
Brier over the other datasets' draws at the same k (nested leave-one-dataset-out); the pair over all datasets
is what the settings ship with. The fits here are a numpy copy of reflect._fit_logistic_around_kinds (fast enough
for ~60,000 fits; checked against the SQL on one draw per dataset, the run stops if they differ); ECE, its
floor, Brier and AUROC as reflect.eval_metrics_v1 defines them.

    .venv/bin/python bench/lodo_few_labels.py        # the answers kept in bench/results/lodo-answers/
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

from lodo_analysis import ANSWERS, Fitter, auroc, load_all, shipped_features  # noqa: E402

from bench_cluster import pgreflect_database, start_cluster  # noqa: E402

KS = (10, 25, 50, 100)
REPEATS = 40
L2S = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
INTERCEPT_L2S = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
MIN_LEFT = 40  # a draw leaves at least this many of D's answers to score (GSM8K's 40 never qualify)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def matrix(rows: list[dict[str, Any]], names: list[str]) -> np.ndarray:
    return np.array([[np.nan if r["features"].get(n) is None else float(r["features"][n]) for n in names]
                     for r in rows], dtype=float)


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As reflect._fit_logistic: means over measured values (0 when none), population deviations (1 when 0)."""
    measured = ~np.isnan(x)
    count = measured.sum(axis=0)
    filled = np.where(measured, x, 0.0)
    means = filled.sum(axis=0) / np.maximum(count, 1)
    sds = np.sqrt((np.where(measured, x - means, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1))
    return means, np.where(sds == 0, 1.0, sds)


def design(x: np.ndarray, means: np.ndarray, sds: np.ndarray) -> np.ndarray:
    return np.hstack([np.ones((len(x), 1)), (np.where(np.isnan(x), means, x) - means) / sds])


def fit_around(x: np.ndarray, y: np.ndarray, means: np.ndarray, sds: np.ndarray, anchor: np.ndarray,
               l2: float, l2_intercept: float, penalty: np.ndarray | None = None) -> np.ndarray:
    """reflect._fit_logistic_around: Newton-Raphson, penalty towards the anchor, steps halved until the
    penalised log-loss falls; penalty (one per weight) instead of the two when given."""
    z = design(x, means, sds)
    if penalty is None:
        penalty = np.array([l2_intercept] + [l2] * (len(anchor) - 1))

    def loss(w: np.ndarray) -> float:
        s = z @ w
        return float(np.sum(np.logaddexp(0, s) - y * s) + 0.5 * np.sum(penalty * (w - anchor) ** 2))

    w = anchor.astype(float).copy()
    current = loss(w)
    for _ in range(50):
        p = sigmoid(z @ w)
        g = z.T @ (y - p) - penalty * (w - anchor)
        h = z.T @ (z * np.maximum(p * (1 - p), 1e-9)[:, None]) + np.diag(penalty)
        delta = np.linalg.solve(h, g)
        step = 1.0
        while True:
            trial = w + step * delta
            trial_loss = loss(trial)
            if trial_loss <= current + 1e-12 or step < 1e-6:
                break
            step /= 2
        w, current = trial, trial_loss
        if step * np.max(np.abs(delta)) < 1e-8:
            break
    return w


KINDS = ("kind_choice", "kind_number", "kind_long")


def fit_around_kinds(x: np.ndarray, y: np.ndarray, names: list[str], means: np.ndarray, sds: np.ndarray,
                     anchor: np.ndarray, l2: float, l2_kind: float) -> np.ndarray:
    """reflect._fit_logistic_around_kinds (what fit_calibrator_v1 fits around an installed calibrator): the
    level of each kind of question as a raw one-hot term around 0 under l2_kind, the intercept under l2, the
    levels folded back into the intercept and the kind features' weights."""
    if not set(KINDS) <= set(names):
        return fit_around(x, y, means, sds, anchor, l2, l2_kind)
    pos = [names.index(k) for k in KINDS]
    raw = np.where(np.isnan(x[:, pos]), means[pos], x[:, pos])
    xe = np.hstack([x, raw, 1 - raw.sum(axis=1, keepdims=True)])
    d = len(means)
    w = fit_around(xe, y, np.concatenate([means, np.zeros(4)]), np.concatenate([sds, np.ones(4)]),
                   np.concatenate([anchor, np.zeros(4)]), l2, l2_kind,
                   penalty=np.array([l2] * (d + 1) + [l2_kind] * 4))
    level = w[d + 1:d + 4] - w[d + 4]
    weights = w[:d + 1].copy()
    weights[0] += w[d + 4] + float(level @ means[pos])
    weights[[p + 1 for p in pos]] += level * sds[pos]
    return weights


def score(x: np.ndarray, means: np.ndarray, sds: np.ndarray, w: np.ndarray) -> np.ndarray:
    return sigmoid(design(x, means, sds) @ w)


def ece(conf: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    b = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(conf[b == i].sum() - y[b == i].sum()) for i in range(bins)) / len(y))


def ece_floor(conf: np.ndarray, rng: np.random.Generator, sims: int = 200, bins: int = 10) -> float:
    """Mean ECE of outcomes drawn from the confidences themselves (perfect calibration) at this n."""
    b = np.minimum((conf * bins).astype(int), bins - 1)
    onehot = np.eye(bins)[b]
    ys = (rng.random((sims, len(conf))) < conf).astype(float)
    return float(np.mean(np.abs(conf @ onehot - ys @ onehot).sum(axis=1) / len(conf)))


def brier(conf: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((conf - y) ** 2))


def check_against_sql(conn: psycopg.Connection, x: np.ndarray, y: np.ndarray, names: list[str], means: np.ndarray,
                      sds: np.ndarray, anchor: np.ndarray, pair: tuple[float, float]) -> None:
    rows = [[None if np.isnan(v) else float(v) for v in r] for r in x]
    sql = conn.execute("SELECT weights FROM reflect._fit_logistic_around_kinds(%s::float8[], %s, %s, %s, %s, %s, "
                       "%s, %s)", (rows, [bool(v) for v in y], names, means.tolist(), sds.tolist(), anchor.tolist(),
                                   *pair)).fetchone()[0]
    here = fit_around_kinds(x, y, names, means, sds, anchor, *pair)
    if not np.allclose(sql, here, atol=1e-6):
        raise SystemExit(f"the numpy fit differs from reflect._fit_logistic_around_kinds: {here} vs {sql}")


def experiment(conn: psycopg.Connection, rows: list[dict[str, Any]], repeats: int = REPEATS, seed: int = 5
               ) -> dict[str, Any]:
    fitter = Fitter(conn)
    names = shipped_features()
    settings = dict(conn.execute("SELECT key, value FROM reflect.settings WHERE key LIKE 'calibration_%'").fetchall())
    l2 = fitter.l2
    min_labels, min_class = int(settings["calibration_min_labels"]), int(settings["calibration_min_per_class"])
    product = (float(settings["calibration_anchor_l2"]), float(settings["calibration_anchor_intercept_l2"]))
    anchor_min_labels = int(settings["calibration_anchor_min_labels"])
    anchor_min_class = int(settings["calibration_anchor_min_per_class"])
    sets = sorted({r["dataset"] for r in rows})
    rng = np.random.default_rng(seed)
    grid = list(itertools.product(L2S, INTERCEPT_L2S))
    # raw[d][k] = list of draws: each {"none": conf, "scratch": conf|None, grid pair: conf}, plus y
    raw: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for held in sets:
        train = [r for r in rows if r["dataset"] != held]
        test = [r for r in rows if r["dataset"] == held]
        means, sds, w0 = (np.array(v) for v in fitter.fit(train, names))  # the shipped fit's stand-in
        x, y = matrix(test, names), np.array([r["correct"] for r in test], dtype=float)
        raw[held] = {}
        for k in KS:
            if len(test) - k < MIN_LEFT:
                continue
            draws = []
            for _ in range(repeats):
                pick = rng.permutation(len(test))
                lab, rest = pick[:k], pick[k:]
                xl, yl = x[lab], y[lab]
                draw: dict[str, Any] = {"y": y[rest], "none": score(x[rest], means, sds, w0), "scratch": None,
                                        "minority": int(min(yl.sum(), k - yl.sum()))}
                if min(yl.sum(), k - yl.sum()) >= 1:
                    m, s = standardisation(xl)
                    ws = fit_around(xl, yl, m, s, np.zeros(len(names) + 1), l2, 0.0)
                    draw["scratch"] = score(x[rest], m, s, ws)
                    draw["scratch_allowed"] = k >= min_labels and min(yl.sum(), k - yl.sum()) >= min_class
                for pair in grid:
                    draw[pair] = score(x[rest], means, sds, fit_around_kinds(xl, yl, names, means, sds, w0, *pair))
                # What the product does with these labels: the anchored fit at the settings' penalties when there
                # are enough (all k here; the product trains on 80% and keeps the rest to check), else nothing.
                enough = k >= anchor_min_labels and draw["minority"] >= anchor_min_class
                draw["product"] = (score(x[rest], means, sds, fit_around_kinds(xl, yl, names, means, sds, w0, *product))
                                   if enough else draw["none"])
                draw["product_fits"] = enough
                if not draws:
                    check_against_sql(conn, xl, yl, names, means, sds, w0, grid[len(grid) // 2])
                draws.append(draw)
            raw[held][k] = draws
        print(f"few labels: {held} done", flush=True)
    result = summarise(raw, grid, rng, repeats)
    result["settings"] = {"calibration_anchor_l2": product[0], "calibration_anchor_intercept_l2": product[1],
                          "calibration_anchor_min_labels": anchor_min_labels,
                          "calibration_anchor_min_per_class": anchor_min_class}
    return result


def summarise(raw: dict[str, dict[int, list[dict[str, Any]]]], grid: list[tuple[float, float]],
              rng: np.random.Generator, repeats: int) -> dict[str, Any]:
    def mean_brier(d: str, k: int, key: Any) -> float:
        return float(np.mean([brier(dr[key], dr["y"]) for dr in raw[d][k]]))

    def metrics(d: str, k: int, key: Any) -> dict[str, Any]:
        draws = [dr for dr in raw[d][k] if dr.get(key) is not None]
        if not draws:
            return {"draws": 0}
        gaps = [ece(dr[key], dr["y"]) - ece_floor(dr[key], rng) for dr in draws]
        aucs = [a for a in (auroc(dr[key], dr["y"]) for dr in draws) if a is not None]
        return {"draws": len(draws), "ece_gap": float(np.mean(gaps)), "ece_gap_p90": float(np.percentile(gaps, 90)),
                "brier": float(np.mean([brier(dr[key], dr["y"]) for dr in draws])),
                "auroc": float(np.mean(aucs)) if aucs else None}

    # The one pair for every k (what the settings should say): the lowest Brier averaged over k and datasets.
    cells = [(d, k) for d in raw for k in raw[d]]
    across = min(grid, key=lambda p: np.mean([mean_brier(d, k, p) for d, k in cells]))
    out: dict[str, Any] = {"ks": list(KS), "repeats": repeats, "grid": [list(p) for p in grid], "per_k": {},
                           "choice_across_k": list(across)}
    for k in KS:
        sets = [d for d in raw if k in raw[d]]
        if not sets:
            continue
        overall = min(grid, key=lambda p: np.mean([mean_brier(d, k, p) for d in sets]))
        per: dict[str, Any] = {}
        for d in sets:
            others = [o for o in sets if o != d]
            chosen = min(grid, key=lambda p: np.mean([mean_brier(o, k, p) for o in others])) if others else overall
            allowed = [dr for dr in raw[d][k] if dr.get("scratch_allowed")]
            per[d] = {"product": metrics(d, k, "product"),
                      "anchored_share": float(np.mean([dr["product_fits"] for dr in raw[d][k]])),
                      "none": metrics(d, k, "none"), "scratch": metrics(d, k, "scratch"),
                      "scratch_allowed_share": len(allowed) / len(raw[d][k]),
                      "anchored": metrics(d, k, chosen), "chosen": list(chosen),
                      "anchored_overall_choice": metrics(d, k, overall)}
        out["per_k"][k] = {"overall_choice": list(overall), "per_dataset": per}
    return out


def markdown(result: dict[str, Any]) -> list[str]:
    lines = ["", "### A user's first labels: no refit, a refit from scratch, a refit anchored on the shipped one",
             "", "Each dataset in turn is a user's traffic the shipped calibrator never saw (the stand-in: the fit on "
             f"the other datasets). k of its answers are labelled ({result['repeats']} random draws per k), the rest "
             "scored. none: the stand-in as it is. scratch: a fit on the k labels alone (the product refits from "
             "scratch only from calibration_min_labels labels, 10 of each class; 'allowed' is the share of draws "
             "that qualify). anchored: fit_calibrator_v1's fit around the installed calibrator on every draw, its "
             "two penalties (features and intercept, kind levels) chosen on the other datasets' draws (nested, so "
             "never on the scored dataset). product: what the shipped settings do (" + ", ".join(
                 f"{k} {v:g}" for k, v in result["settings"].items()) + "): the anchored fit at those penalties "
             "where the draw has enough labels ('anchored share'), else none; the penalties were chosen on all "
             "datasets' draws (lowest Brier averaged over every k: features "
             f"{result['choice_across_k'][0]:g}, kind levels {result['choice_across_k'][1]:g}), so this column has "
             "seen the dataset it is scored on. Means over draws; ECE gap = ECE minus its perfect-calibration floor at "
             "the scored n.", ""]
    methods = ("none", "scratch", "anchored", "product")
    for k, block in result["per_k"].items():
        per = block["per_dataset"]
        lines += [f"k = {k} labels (penalties chosen on all datasets: features {block['overall_choice'][0]:g}, "
                  f"kind levels {block['overall_choice'][1]:g}):", "",
                  "| user's traffic | ECE gap: none | scratch | anchored | product | Brier: none | scratch | anchored "
                  "| product | AUROC: none | anchored | scratch allowed | anchored share "
                  "| ECE gap, worst 10% of draws: none | product |", "|---" * 15 + "|"]

        def cell(m: dict[str, Any], key: str, signed: bool = False) -> str:
            v = m.get(key)
            return "n/a" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")

        for d, r in per.items():
            lines.append(f"| {d} | " + " | ".join(
                [cell(r[m], "ece_gap", True) for m in methods] + [cell(r[m], "brier") for m in methods]
                + [cell(r[m], "auroc") for m in ("none", "anchored")]
                + [f"{r['scratch_allowed_share']:.0%}", f"{r['anchored_share']:.0%}"]
                + [cell(r[m], "ece_gap_p90", True) for m in ("none", "product")]) + " |")

        def avg(m: str, key: str, per: dict[str, Any] = per) -> float:
            return float(np.mean([r[m][key] for r in per.values() if r[m].get(key) is not None] or [np.nan]))

        lines.append("| **mean** | " + " | ".join(
            [f"{avg(m, 'ece_gap'):+.3f}" for m in methods] + [f"{avg(m, 'brier'):.3f}" for m in methods]
            + [f"{avg(m, 'auroc'):.3f}" for m in ("none", "anchored")] + ["", ""]
            + [f"{avg(m, 'ece_gap_p90'):+.3f}" for m in ("none", "product")]) + " |")
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=Path, nargs="+", default=ANSWERS,
                    help="collected answers (default: those kept in the repository)")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="random draws of k labels per dataset and k")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "calibration-few-labels.json")
    args = ap.parse_args()
    started = time.time()
    rows = load_all(args.answers)
    cluster = start_cluster()
    try:
        with psycopg.connect(pgreflect_database(cluster), autocommit=True) as conn:
            result = experiment(conn, rows, args.repeats)
    finally:
        cluster.destroy()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    command = " ".join(["bench/lodo_few_labels.py", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"Command: `.venv/bin/python {command}` ({len(rows)} answers, "
             f"{(time.time() - started) / 60:.0f} min on 2 cores, {when})",
             *markdown(result)]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
