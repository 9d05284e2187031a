"""Agreement between samples as a confidence signal, on the leave-one-dataset-out collection's questions.

The agreement follow-up (pgreflect.jobs.followups.AgreementHandler) draws extra samples of an answer and
reports the share that agree with it. This bench draws them as the follow-up does (3 samples, temperature
0.7, top-p 0.95, seeds 1..3, the request's own token budget) for the first --per-dataset questions of each
dataset, beside the collected greedy answer (bench/results/lodo-*.jsonl, the answer as served), and keeps the
samples in bench/results/lodo-answers/agreement-samples.jsonl.gz (lodo_analysis.AGREEMENT_SAMPLES), so that a
new agreement rule is measured again without sampling again. Each record also keeps the agreement the served
rule gave when it was sampled.

It reports agreement's AUROC alone per dataset (bootstrap intervals), under the rule at sampling time and the
current rule, and the leave-one-dataset-out calibrator (the shipped calibrator's features, SQL fit) on the
sampled answers without agreement and with it: pooled and averaged metrics, paired bootstrap differences.

    .venv/bin/python bench/calibration_lodo_bench.py --collect-only     # writes bench/results/lodo-*.jsonl
    .venv/bin/python bench/agreement_bench.py --per-dataset 60          # samples (resumable), then analyses
    .venv/bin/python bench/agreement_bench.py --analyse-only            # the kept samples only
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
import psycopg
from calibration_lodo_bench import DATASETS
from lodo_analysis import (
    AGREEMENT_SAMPLES,
    ANSWERS,
    Fitter,
    auroc,
    auroc_ci,
    averaged,
    embedder_if_installed,
    informative,
    load,
    load_all,
    paired_auroc_diff,
    paired_ece_diff,
    shipped_features,
    with_agreement,
)

from pgreflect.agreement import agreement
from pgreflect.backends.base import GenerationRequest
from pgreflect.jobs.followups import sample_params
from pgreflect.models import DEFAULT_MODEL, packaged_path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cluster import pgreflect_database, start_cluster  # noqa: E402

SAMPLES = 3
TEMPERATURE = 0.7
CACHE = Path.home() / ".cache" / "pgreflect" / "bench" / "agreement-samples.jsonl"
# Cheap datasets first: a run cut short still covers most of them. GSM8K costs ~9 s a sample here.
ORDER = ["bb-multiply-2digit", "bb-object-counting", "bb-wikidata", "bb-plus-one-addition", "bb-periodic-elements",
         "bb-social-iqa", "bb-plural", "bb-color-rgb", "bb-context-qa", "mmlu", "bb-date-understanding", "gsm8k"]


def sample(per_dataset: int, names: list[str]) -> None:
    """Draws the samples the follow-up would, appending one record per answer to CACHE (resumes where it was)."""
    from pgreflect.backends.llama import LlamaBackend

    done = {(r["dataset"], r["id"]) for r in load(CACHE)} if CACHE.exists() else set()
    backend = LlamaBackend(packaged_path(DEFAULT_MODEL))
    embedder = embedder_if_installed()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with CACHE.open("a") as out:
        for name in names:
            max_tokens = DATASETS[name][2]
            questions = load(HERE / "results" / f"lodo-{name}.questions.jsonl")[:per_dataset]
            collected = {r["id"]: r for r in load(HERE / "results" / f"lodo-{name}.jsonl")}
            started, n = time.time(), 0
            for item in questions:
                key = (name.replace("-", "_"), item["id"])
                main = collected.get(item["id"])
                if key in done or main is None or main.get("answer") is None:
                    continue
                texts = []
                for i in range(SAMPLES):
                    request = GenerationRequest(prompt=item["question"], system_prompt=None,
                                                params=sample_params({"max_tokens": max_tokens}, TEMPERATURE, i))
                    texts.append(backend.generate(request, threading.Event()).text)
                out.write(json.dumps({"dataset": key[0], "id": key[1], "answer": main["answer"], "samples": texts,
                                      "agreement_at_sampling": agreement(main["answer"], texts, embedder)}) + "\n")
                out.flush()
                n += 1
            print(f"{name}: {n} answers sampled in {time.time() - started:.0f} s", flush=True)
    backend.close()
    with gzip.open(AGREEMENT_SAMPLES, "wt") as f:
        f.write(CACHE.read_text())


def analyse() -> dict[str, Any]:
    rows = [{**r, "at_sampling": r["agreement_at_sampling"], "now": r["features"]["agreement"]}
            for r in with_agreement(load_all(ANSWERS), AGREEMENT_SAMPLES) if "agreement_at_sampling" in r]
    y = np.array([r["correct"] for r in rows])
    ds = np.array([r["dataset"] for r in rows])
    report: dict[str, Any] = {"n": len(rows), "per_dataset": {}, "alone": {}}
    for key in ("at_sampling", "now"):
        v = np.array([r[key] for r in rows])
        report["alone"][key] = {"auroc": auroc(v, y), "ci": auroc_ci(v, y)}
    for d in sorted(set(ds)):
        k = ds == d
        entry: dict[str, Any] = {"n": int(k.sum()), "accuracy": float(y[k].mean())}
        for key in ("at_sampling", "now"):
            v = np.array([r[key] for r in rows])[k]
            a = auroc(v, y[k])
            entry[key] = {"auroc": a, "ci": auroc_ci(v, y[k]) if a is not None else None,
                          "mean": float(v.mean())}
        report["per_dataset"][d] = entry
    names = shipped_features()
    cluster = start_cluster()
    try:
        with psycopg.connect(pgreflect_database(cluster), autocommit=True) as conn:
            fitter = Fitter(conn)
            conf = {
                "without": fitter.held_out([{**r, "features": {**r["features"], "agreement": None}} for r in rows],
                                           [n for n in names if n != "agreement"]),
                **{key: fitter.held_out([{**r, "features": {**r["features"], "agreement": r[key]}} for r in rows],
                                        names) for key in ("at_sampling", "now")}}
            report["calibrated"] = {}
            for key, c in conf.items():
                per = fitter.per_dataset(c, y, ds)
                gaps = {d: {"auroc": m["auroc"], "ece_gap": m["ece"] - m["ece_floor"]}
                        for d, m in per.items() if informative(m)}
                report["calibrated"][key] = {"pooled": fitter.metrics(c.tolist(), y.tolist()), **averaged(per),
                                             "per_dataset": gaps}
            for key in ("at_sampling", "now"):
                report[f"{key}_minus_without"] = paired_auroc_diff(conf[key], conf["without"], y)
                report[f"{key}_minus_without_ece"] = paired_ece_diff(conf[key], conf["without"], y)
            threshold = conn.execute("SELECT reflect._setting_float('confidence_threshold_default')").fetchone()[0]
            report["low_confidence"] = low_confidence(rows, conf["without"], conf["now"], y, threshold)
            # What a user sees by default (migration 0016): agreement on the low-confidence answers only.
            low = low_set(rows, conf["without"], threshold)
            served = np.where(low, conf["now"], conf["without"])
            per = fitter.per_dataset(served, y, ds)
            report["calibrated"]["served"] = {
                "pooled": fitter.metrics(served.tolist(), y.tolist()), **averaged(per),
                "per_dataset": {d: {"auroc": m["auroc"], "ece_gap": m["ece"] - m["ece_floor"]}
                                for d, m in per.items() if informative(m)}}
            report["served_minus_without"] = paired_auroc_diff(served, conf["without"], y)
            report["served_minus_without_ece"] = paired_ece_diff(served, conf["without"], y)
    finally:
        cluster.destroy()
    return report


def low_set(rows: list[dict[str, Any]], before: np.ndarray, threshold: float) -> np.ndarray:
    """The answers the follow-ups run on by default (reflect._is_low_confidence): confidence under the threshold,
    or a rule check failed."""
    return (before < threshold) | np.array([(r["features"].get("rule_failed") or 0) > 0 for r in rows])


def low_confidence(rows: list[dict[str, Any]], before: np.ndarray, after: np.ndarray, y: np.ndarray,
                   threshold: float) -> dict[str, Any]:
    """Where the follow-up runs by default: the low-confidence answers (calibrated confidence under
    confidence_threshold_default, or a rule check failed; here, the confidence of the fit without agreement). What
    one agreement run buys there: the ranking inside that set, and the answers it lifts over the threshold."""
    low = low_set(rows, before, threshold)
    lifted = low & (after >= threshold)
    kept = low & ~lifted
    return {"threshold": threshold, "n": int(low.sum()), "share": float(low.mean()), "accuracy": float(y[low].mean()),
            "auroc_before": auroc(before[low], y[low]), "auroc_after": auroc(after[low], y[low]),
            "after_minus_before": paired_auroc_diff(after[low], before[low], y[low]),
            "lifted": int(lifted.sum()), "lifted_accuracy": float(y[lifted].mean()) if lifted.any() else None,
            "still_low_accuracy": float(y[kept].mean()) if kept.any() else None,
            "lowered_of_the_rest": int((~low & (after < threshold)).sum())}


def _ci(m: dict[str, Any]) -> str:
    return "" if m["auroc"] is None else f"{m['auroc']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"


def write_markdown(report: dict[str, Any], command: str, minutes: float | None) -> str:
    took = f" ({minutes:.0f} min sampling)" if minutes else ""
    lines = [
        "# Agreement between samples: alone and in the calibrator, leave-one-dataset-out", "",
        f"Command: `{command}`{took}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 2 cores; default model; "
        f"{report['n']} collected answers with {SAMPLES} samples each at temperature {TEMPERATURE} (as the agreement "
        f"follow-up draws them). \"At sampling\": the agreement rule when the samples were drawn; \"now\": the "
        f"current rule (pgreflect.agreement), on the same samples.", "",
        f"- Alone, pooled AUROC: at sampling {_ci(report['alone']['at_sampling'])}, now {_ci(report['alone']['now'])}.",
        f"- Calibrator with agreement minus without, pooled AUROC: at sampling "
        f"{report['at_sampling_minus_without'][0]:+.3f} [{report['at_sampling_minus_without'][1]:+.3f}, "
        f"{report['at_sampling_minus_without'][2]:+.3f}], now {report['now_minus_without'][0]:+.3f} "
        f"[{report['now_minus_without'][1]:+.3f}, {report['now_minus_without'][2]:+.3f}]; pooled ECE: at sampling "
        f"{report['at_sampling_minus_without_ece'][0]:+.3f} [{report['at_sampling_minus_without_ece'][1]:+.3f}, "
        f"{report['at_sampling_minus_without_ece'][2]:+.3f}], now {report['now_minus_without_ece'][0]:+.3f} "
        f"[{report['now_minus_without_ece'][1]:+.3f}, {report['now_minus_without_ece'][2]:+.3f}].", "",
        "| dataset | answers | accuracy | agreement AUROC, rule at sampling | mean | AUROC, current rule | mean |",
        "|---|---|---|---|---|---|---|"]
    for d, m in report["per_dataset"].items():
        lines.append(f"| {d} | {m['n']} | {m['accuracy']:.3f} | {_ci(m['at_sampling'])} "
                     f"| {m['at_sampling']['mean']:.2f} | {_ci(m['now'])} | {m['now']['mean']:.2f} |")
    lines += ["", "Leave-one-dataset-out calibrator (the shipped calibrator's features) on these answers:", "",
              "| agreement | pooled AUROC | pooled ECE (floor) | averaged AUROC | averaged ECE gap | averaged share |",
              "|---|---|---|---|---|---|"]
    for key, label in (("without", "none"), ("at_sampling", "rule at sampling"), ("now", "current rule"),
                       ("served", "current rule, low-confidence answers only (the default)")):
        if key not in report["calibrated"]:
            continue
        m = report["calibrated"][key]
        lines.append(f"| {label} | {m['pooled']['auroc']:.3f} | {m['pooled']['ece']:.3f} "
                     f"({m['pooled']['ece_floor']:.3f}) | {m['auroc']:.3f} | {m['ece_gap']:+.3f} | {m['share']:.0%} |")
    cal = report["calibrated"]
    columns = {"without": "none", "at_sampling": "rule at sampling", "now": "current rule",
               "served": "low-confidence only"}
    keys = [k for k in columns if k in cal]
    lines += ["", "Per informative dataset (AUROC / ECE above its floor):", "",
              "| dataset | " + " | ".join(columns[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for d in cal["without"]["per_dataset"]:
        cells = [f"{cal[k]['per_dataset'][d]['auroc']:.3f} / {cal[k]['per_dataset'][d]['ece_gap']:+.3f}"
                 for k in keys]
        lines.append(f"| {d} | {' | '.join(cells)} |")
    lines += ["", f"Averaged over: {', '.join(cal['without']['averaged_over'])}."]
    low = report["low_confidence"]
    d = low["after_minus_before"]
    lifted = "" if low["lifted_accuracy"] is None else f", right {low['lifted_accuracy']:.0%} of the time"
    still = "none" if low["still_low_accuracy"] is None else f"right {low['still_low_accuracy']:.0%} of the time"
    lines += ["", "Where the follow-up runs by default (the low-confidence answers: confidence without agreement under "
              f"{low['threshold']}, or a rule check failed): {low['n']} of these answers ({low['share']:.0%}), "
              f"accuracy {low['accuracy']:.3f}. Inside that set, AUROC {low['auroc_before']:.3f} without agreement, "
              f"{low['auroc_after']:.3f} with it ({d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]); agreement lifted "
              f"{low['lifted']} over the threshold{lifted} (those left under it: {still}). Answers above the "
              "threshold that agreement would move under it: "
              f"{low['lowered_of_the_rest']} (it does not run there by default)."]
    if "served" in cal:
        a, e = report["served_minus_without"], report["served_minus_without_ece"]
        lines += ["", "As served by default (agreement on the low-confidence answers only, each other answer as "
                  f"returned) against every answer as returned: pooled AUROC {a[0]:+.3f} [{a[1]:+.3f}, {a[2]:+.3f}], "
                  f"pooled ECE {e[0]:+.3f} [{e[1]:+.3f}, {e[2]:+.3f}]."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-dataset", type=int, default=60)
    ap.add_argument("--datasets", default=",".join(ORDER))
    ap.add_argument("--analyse-only", action="store_true")
    args = ap.parse_args()
    minutes = None
    if not args.analyse_only:
        started = time.time()
        sample(args.per_dataset, args.datasets.split(","))
        minutes = (time.time() - started) / 60
    report = analyse()
    (HERE / "results" / "agreement.json").write_text(json.dumps(report, indent=1) + "\n")
    command = ".venv/bin/python bench/agreement_bench.py " + " ".join(sys.argv[1:])
    text = write_markdown(report, command.strip(), minutes)
    (HERE / "results" / "agreement.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
