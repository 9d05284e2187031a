"""Does a more flexible calibrator transfer better? Leave-one-dataset-out over the 2,220 collected answers, as
the worker serves them (P(True) after answers of 128 tokens or more), on the shipped calibrator's features:
pgreflect's logistic fit (reflect._fit_logistic, what every calibrator uses) against scikit-learn models fitted
on the same features, each missing value replaced by its training mean and standardised as pgreflect does:
logistic regression at two strengths, logistic regression with each feature's square, and gradient-boosted
trees (depth 2 and 3). Each held-out dataset is scored by the model fitted on the other eleven.

    .venv/bin/python bench/calibrator_family.py

Metrics per dataset come from reflect.eval_metrics_v1 (AUROC, ECE beside its noise floor, share of the oracle's
selective gain), averaged over the informative datasets as calibration-lodo.md averages them; pooled AUROC
differences against pgreflect's fit are paired bootstrap 95% intervals. Results: stdout and
bench/results/calibrator-family.{md,json}.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lodo_analysis import (  # noqa: E402
    ANSWERS,
    Fitter,
    auroc,
    averaged,
    load_all,
    p_true_after,
    paired_auroc_diff,
    shipped_features,
)

from bench_cluster import pgreflect_database, start_cluster  # noqa: E402

Model = Callable[[], Any]
# L2 strengths screened (pgreflect's penalty: 0.5 * l2 * |w|^2 on standardised features, intercept free; the
# product's calibration_l2 setting is 1). scikit-learn's C is 1 / l2 for the same fit.
L2_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
FAMILIES: dict[str, tuple[Model, bool]] = {  # name -> (model, add each feature's square)
    "scikit-learn logistic, L2 1 (pgreflect's fit, checked)": (lambda: LogisticRegression(C=1.0, max_iter=3000),
                                                              False),
    "logistic with squared features, C=0.3": (lambda: LogisticRegression(C=0.3, max_iter=3000), True),
    "gradient-boosted trees, depth 2, 100 rounds": (
        lambda: HistGradientBoostingClassifier(max_depth=2, max_iter=100, learning_rate=0.05, random_state=0), False),
    "gradient-boosted trees, depth 3, 200 rounds, L2 1": (
        lambda: HistGradientBoostingClassifier(max_depth=3, max_iter=200, learning_rate=0.03, l2_regularization=1.0,
                                               random_state=0), False),
}


def matrix(rows: list[dict[str, Any]], names: list[str]) -> np.ndarray:
    return np.array([[np.nan if r["features"].get(n) is None else float(r["features"][n]) for n in names]
                     for r in rows])


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Missing -> the training mean (0 when no training answer has the feature), then z-scores: the treatment
    reflect._matrix and reflect._fit_logistic give a missing feature."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a feature no training answer has
        mean = np.nanmean(train, axis=0)
    mean = np.where(np.isnan(mean), 0.0, mean)
    train, test = np.where(np.isnan(train), mean, train), np.where(np.isnan(test), mean, test)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


def held_out(x: np.ndarray, y: np.ndarray, datasets: np.ndarray, make: Model, squares: bool) -> np.ndarray:
    conf = np.zeros(len(y))
    for held in sorted(set(datasets)):
        train, test = standardise(x[datasets != held], x[datasets == held])
        if squares:
            train, test = np.hstack([train, train ** 2]), np.hstack([test, test ** 2])
        conf[datasets == held] = make().fit(train, y[datasets != held]).predict_proba(test)[:, 1]
    return conf


def inner_log_loss(x: np.ndarray, y: np.ndarray, datasets: np.ndarray, l2: float) -> float:
    """Mean over these datasets of the held-out log-loss of a fit on the others (each dataset weighs the same,
    as the targets' averages do)."""
    conf = np.clip(held_out(x, y, datasets, lambda: LogisticRegression(C=1 / l2, max_iter=3000), False), 1e-6,
                   1 - 1e-6)
    return float(np.mean([-np.mean(np.where(y[datasets == d], np.log(conf[datasets == d]),
                                            np.log(1 - conf[datasets == d]))) for d in sorted(set(datasets))]))


def choose_l2(x: np.ndarray, y: np.ndarray, datasets: np.ndarray) -> float:
    return min(L2_GRID, key=lambda l2: inner_log_loss(x, y, datasets, l2))


def nested(fitter: Fitter, rows: list[dict[str, Any]], names: list[str], x: np.ndarray, y: np.ndarray,
           datasets: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """pgreflect's fit with its L2 chosen inside the training datasets: for each held-out dataset, the strength
    with the lowest leave-one-dataset-out log-loss over the other eleven, then the fit on those eleven at it."""
    conf, chosen = np.zeros(len(y)), {}
    default = fitter.l2
    try:
        for held in sorted(set(datasets)):
            train = datasets != held
            chosen[held] = fitter.l2 = choose_l2(x[train], y[train], datasets[train])
            at = np.flatnonzero(~train)
            conf[at] = fitter.score(fitter.fit([r for r, t in zip(rows, train, strict=True) if t], names),
                                    [rows[i] for i in at], names)
    finally:
        fitter.l2 = default
    return conf, chosen


def main() -> None:
    t0 = time.time()
    rows = p_true_after(load_all(ANSWERS), 128)
    names = shipped_features()
    x, y = matrix(rows, names), np.array([bool(r["correct"]) for r in rows])
    datasets = np.array([r["dataset"] for r in rows])
    cluster = start_cluster()
    try:
        with psycopg.connect(pgreflect_database(cluster), autocommit=True) as conn:
            fitter = Fitter(conn)
            confs = {"pgreflect's logistic fit (shipped)": fitter.held_out(rows, names)}
            confs["pgreflect's fit, L2 chosen inside the training datasets"], chosen = nested(
                fitter, rows, names, x, y, datasets)
            everywhere = choose_l2(x, y, datasets)
            for l2 in L2_GRID[1:]:
                confs[f"scikit-learn logistic, L2 {l2:g} (screen)"] = held_out(
                    x, y, datasets, lambda l2=l2: LogisticRegression(C=1 / l2, max_iter=3000), False)
            for name, (make, squares) in FAMILIES.items():
                confs[name] = held_out(x, y, datasets, make, squares)
            report: dict[str, Any] = {"n": len(rows), "features": names, "l2_chosen_per_held_out": chosen,
                                      "l2_chosen_on_all": everywhere, "families": {}}
            base = confs["pgreflect's logistic fit (shipped)"]
            for name, conf in confs.items():
                per = fitter.per_dataset(conf, y, datasets)
                pooled = fitter.metrics(conf.tolist(), y.tolist())
                report["families"][name] = {
                    "averaged": averaged(per), "pooled_auroc": auroc(conf, y), "pooled_ece": pooled["ece"],
                    "pooled_ece_floor": pooled["ece_floor"], "pooled_share": pooled["selective_gain_share"],
                    "pooled_auroc_vs_shipped": None if conf is base else paired_auroc_diff(conf, base, y),
                    "per_dataset_auroc": {d: m["auroc"] for d, m in per.items()}}
    finally:
        cluster.destroy()
    report["minutes"] = round((time.time() - t0) / 60, 1)
    (HERE / "results" / "calibrator-family.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    print(text)
    (HERE / "results" / "calibrator-family.md").write_text(text)


def markdown(report: dict[str, Any]) -> str:
    first = next(iter(report["families"].values()))
    datasets = [d for d in first["per_dataset_auroc"] if d in first["averaged"]["averaged_over"]]
    lines = [
        "# Calibrator family: does a more flexible model transfer better?", "",
        f"Command: `.venv/bin/python bench/calibrator_family.py` ({report['minutes']} min, 2 cores), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. {report['n']} answers of 12 datasets as served "
        "(P(True) after answers of 128 tokens or more), leave-one-dataset-out, the shipped calibrator's features: "
        f"{', '.join(report['features'])}. Averages over the informative datasets as in calibration-lodo.md; "
        "pooled differences against pgreflect's fit: paired bootstrap 95%.", "",
        f"L2 chosen inside the training datasets (lowest leave-one-dataset-out log-loss over the other eleven, grid "
        f"{', '.join(f'{v:g}' for v in L2_GRID)}): "
        + ", ".join(f"{d} {v:g}" for d, v in report["l2_chosen_per_held_out"].items())
        + f"; on all twelve: {report['l2_chosen_on_all']:g}. The screen's rows pick a strength after seeing the "
        "held-out answers: read them as the landscape, the nested row as the result.", "",
        "| calibrator | averaged AUROC | averaged ECE gap | averaged share | pooled AUROC | vs pgreflect's fit | "
        "pooled ECE (floor) | pooled share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, f in report["families"].items():
        a, diff = f["averaged"], f["pooled_auroc_vs_shipped"]
        lines.append(f"| {name} | {a['auroc']:.3f} | {a['ece_gap']:+.3f} | {a['share']:.0%} | "
                     f"{f['pooled_auroc']:.3f} | "
                     f"{'–' if diff is None else f'{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]'} | "
                     f"{f['pooled_ece']:.3f} ({f['pooled_ece_floor']:.3f}) | {f['pooled_share']:.0%} |")
    lines += ["", "AUROC per held-out dataset:", "",
              "| calibrator | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for name, f in report["families"].items():
        lines.append(f"| {name} | " + " | ".join(f"{f['per_dataset_auroc'][d]:.3f}" for d in datasets) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
