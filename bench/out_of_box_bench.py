"""Out of the box on questions the shipped calibrator was not fitted on: a fresh database set up as `pgreflect
up` sets it up (the default model registered, the calibrator pgreflect ships for its bytes installed, no labels),
then `pgreflect eval` on questions of the packaged datasets that are not among the 2,220 answers the shipped
calibrator was fitted on (bench/results/lodo-answers/), answered and scored by the product's own harness.

    .venv/bin/python bench/out_of_box_bench.py [--mmlu 200] [--gsm8k 60]
    .venv/bin/python bench/out_of_box_bench.py --analyse-only     # the answers kept by the last run

Same selection and budgets as the fit's collection (bench/calibration_lodo_bench.py: MMLU's held-out split,
256 tokens; GSM8K, 512 tokens; order seed 21), taking the next questions after those fitted on. Answers as
returned (no follow-ups), memory off. Results: bench/results/out-of-box.md and .json; the eval reports and
answers beside them (out-of-box-<dataset>.md / .jsonl).

`pgreflect eval` records its verdicts as labels, and the product refits a version's calibrator every
calibration_refit_new_labels labels (the pg_cron job): the second dataset's answers would be scored by a refit
on the first's labels, not by the shipped calibrator. The run evaluates with `--record-labels off`.
The analysis also scores every kept answer with the shipped calibrator through the database's own function
(reflect._confidence on the answer's served signals), and reports the served confidences beside them where
they differ (the run of 2026-12-05 left refits on).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calibration_lodo_bench import DATASETS, SEED  # noqa: E402

from pgreflect import datasets  # noqa: E402
from pgreflect.client import Client  # noqa: E402
from pgreflect.evaluate import metrics  # noqa: E402
from pgreflect.flows.setup import register_packaged  # noqa: E402
from pgreflect.models import DEFAULT_MODEL  # noqa: E402

from bench_cluster import cli_env, keyring, no_followups, pgreflect_database, start_cluster  # noqa: E402

RESULTS = HERE / "results"
FIRST_REFIT = 25  # labels before the first automatic refit (calibration_refit_new_labels' default)


def fitted_ids() -> set[str]:
    ids: set[str] = set()
    for path in (RESULTS / "lodo-answers").glob("lodo-answers*.jsonl.gz"):
        with gzip.open(path, "rt") as f:
            ids.update(json.loads(line)["id"] for line in f if line.strip())
    return ids


def fresh_items(name: str, n: int, fitted: set[str]) -> list[dict[str, Any]]:
    split = DATASETS[name][0]
    chosen = [it for it in datasets.select(name, split, None, seed=SEED) if it["id"] not in fitted]
    return chosen[:n]


def shipped_confidences(dsn: str, rows: list[dict[str, Any]]) -> list[float]:
    """Each answer's confidence under the calibrator the version has now (the shipped one on a fresh setup),
    from the signals it was served with, by the function that scores served answers."""
    with psycopg.connect(dsn) as conn:
        return [conn.execute(
            "SELECT (reflect._confidence(mv.id, reflect._feature_values((%(s)s::jsonb ->> 'logprob_mean')::float8, "
            "(%(s)s::jsonb ->> 'logprob_min')::float8, %(tokens)s, %(s)s::jsonb), %(s)s::jsonb, NULL)).confidence "
            "FROM reflect.model_versions mv WHERE mv.name = %(mv)s",
            {"mv": DEFAULT_MODEL, "tokens": r["tokens"], "s": json.dumps(r["signals"])}).fetchone()[0] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmlu", type=int, default=200)
    ap.add_argument("--gsm8k", type=int, default=60)
    ap.add_argument("--analyse-only", action="store_true", help="score the answers kept by the last run")
    args = ap.parse_args()
    fitted = fitted_ids()
    wanted = {"mmlu": args.mmlu, "gsm8k": args.gsm8k}
    cluster = start_cluster()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.time()
    report: dict[str, Any] = {"started": started, "fitted_on": len(fitted), "datasets": {}}
    if args.analyse_only:
        report = json.loads((RESULTS / "out-of-box.json").read_text())
        report["analysed"] = started
    try:
        dsn = pgreflect_database(cluster)
        register_packaged(dsn, DEFAULT_MODEL, activate=True)
        no_followups(dsn)
        ring = keyring()
        env = cli_env(cluster, dsn, ring)
        results: list[dict[str, Any]] = []
        for name, n in wanted.items():
            if n <= 0:
                continue
            if args.analyse_only:
                out = RESULTS / f"out-of-box-{name}.jsonl"
                results += [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
                continue
            items = fresh_items(name, n, fitted)
            assert not {it["id"] for it in items} & fitted
            qfile = RESULTS / f"out-of-box-{name}.questions.jsonl"
            qfile.write_text("".join(json.dumps(it) + "\n" for it in items))
            out, md = RESULTS / f"out-of-box-{name}.jsonl", RESULTS / f"out-of-box-{name}.md"
            t = time.time()
            done = subprocess.run([sys.executable, "-m", "pgreflect.cli", "eval", "--file", str(qfile), "--out",
                                   str(out), "--report", str(md), "--max-tokens", str(DATASETS[name][2]),
                                   "--eval-memory", "off", "--record-labels", "off", "--run-label",
                                   f"out-of-box-{name}", "--timeout", "36000"],
                                  env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"eval of {name} failed:\n{done.stderr[-3000:]}")
            rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
            results += rows
            report["datasets"][name] = {"questions": len(items), "minutes": (time.time() - t) / 60,
                                        "calibrated_share": sum(bool(r["calibrated"]) for r in rows) / len(rows)}
            print(f"{name}: {len(items)} answered in {(time.time() - t) / 60:.1f} min", flush=True)
        shipped = [{**r, "confidence": c} for r, c in zip(results, shipped_confidences(dsn, results), strict=True)]
        with Client(cluster.dsn(user="pgreflect_app"), keyring=ring) as client:
            for name in report["datasets"]:
                d = report["datasets"][name]
                d["metrics"] = metrics(client, [r for r in shipped if r["dataset"] == name])
                d.update(served_against_shipped([r for r in results if r["dataset"] == name],
                                                [r for r in shipped if r["dataset"] == name]))
                if d["same_before_first_difference"] < FIRST_REFIT and d["same_before_first_difference"] < len(
                        [r for r in results if r["dataset"] == name]) and name == next(iter(report["datasets"])):
                    raise SystemExit(f"{name}: the shipped calibrator's confidence differs from the served one from "
                                     f"answer {d['same_before_first_difference'] + 1}, before any refit could run")
                if d["served_differs"]:
                    d["served_metrics"] = metrics(client, [r for r in results if r["dataset"] == name])
            report["pooled"] = metrics(client, shipped)
            if any(d["served_differs"] for d in report["datasets"].values()):
                report["served_pooled"] = metrics(client, results)
    finally:
        cluster.destroy()
    if not args.analyse_only:
        report["minutes"] = (time.time() - t0) / 60
    (RESULTS / "out-of-box.json").write_text(json.dumps(report, indent=1) + "\n")
    text = write_markdown(report, args)
    (RESULTS / "out-of-box.md").write_text(text)
    print(text)


def served_against_shipped(served: list[dict[str, Any]], shipped: list[dict[str, Any]]) -> dict[str, Any]:
    """How the confidences the run served compare with the shipped calibrator's on the same signals: the
    answers in request order up to the first that differs (what was served before a refit) and the largest
    difference there, which checks the rescoring against the served path."""
    pairs = sorted(zip(served, shipped, strict=True), key=lambda p: p[0]["request_id"])
    diffs = [abs(a["confidence"] - b["confidence"]) for a, b in pairs]
    same = next((i for i, d in enumerate(diffs) if d > 1e-9), len(diffs))
    return {"served_differs": same < len(diffs), "same_before_first_difference": same,
            "max_difference_before": max(diffs[:same], default=None), "max_difference": max(diffs, default=None)}


def _ci(m: dict[str, Any], key: str) -> str:
    ci = m.get(f"{key}_ci") or [None, None]
    return "n/a" if m.get(key) is None else f"{m[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def write_markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Out of the box: the shipped calibrator on questions it was not fitted on", "",
        f"Command: `.venv/bin/python bench/out_of_box_bench.py --mmlu {args.mmlu} --gsm8k {args.gsm8k}` "
        f"({report['started']}, {report['minutes']:.0f} min, 2 cores"
        + (f"; scored again with `--analyse-only` {report['analysed']}" if report.get("analysed") else "")
        + "). A fresh database set up as `pgreflect up` "
        "does (default model, the shipped calibrator installed, no labels); `pgreflect eval`, memory off, no "
        "follow-ups (each answer as returned); the questions: the next ones after the "
        f"{report['fitted_on']} the shipped calibrator was fitted on, same split, order and token budget. "
        "Intervals: bootstrap 95%; ECE beside the ECE of a perfectly calibrated confidence at this n; share: "
        "selective gain at 80% coverage as a share of the oracle's.", "",
        "| questions | n | calibrated | accuracy | mean confidence | AUROC | ECE (floor, gap) | share of oracle gain |",
        "|---|---|---|---|---|---|---|---|"]
    rows = [(name, d["metrics"], f"{d['calibrated_share']:.0%}") for name, d in report["datasets"].items()]
    rows.append(("pooled", report["pooled"], ""))
    served = [(f"{name}, as served", d["served_metrics"], f"{d['calibrated_share']:.0%}")
              for name, d in report["datasets"].items() if d.get("served_metrics")]
    if served:
        served.append(("pooled, as served", report["served_pooled"], ""))
    for name, m, calibrated in rows + served:
        share = m.get("selective_gain_share")
        lines.append(f"| {name} | {m['n']} | {calibrated} | {_ci(m, 'accuracy')} | {m['mean_confidence']:.3f} | "
                     f"{_ci(m, 'auroc')} | {m['ece']:.3f} ({m['ece_floor']:.3f}, {m['ece'] - m['ece_floor']:+.3f}) | "
                     f"{'n/a' if share is None else f'{share:.0%}'} |")
    lines += ["", "Rows: each answer's confidence under the shipped calibrator, from the signals it was served with "
              "(reflect._confidence, the function that scores served answers). Rows 'as served': the confidence "
              "the run returned, where it differs."]
    for name, d in report["datasets"].items():
        lines.append(f"- {name}: {d['same_before_first_difference']} answers, in request order, served with the "
                     "shipped calibrator's confidence (largest difference "
                     f"{d['max_difference_before'] if d['max_difference_before'] is not None else 'n/a'}), "
                     + ("then refits on the run's own labels scored the rest (largest difference "
                        f"{d['max_difference']:.3f})." if d["served_differs"] else "all of them."))
    lines += ["", "Targets (issue 8): AUROC >= 0.80, ECE <= floor + 0.02, share >= 70%."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
