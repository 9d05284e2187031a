"""Out of the box on questions the shipped calibrator was not fitted on: a fresh database set up as `pgreflect
up` sets it up (the default model registered, the calibrator pgreflect ships for its bytes installed, no labels),
then `pgreflect eval` on questions of the packaged datasets that are not among the 2,220 answers the shipped
calibrator was fitted on (bench/results/lodo-answers/), answered and scored by the product's own harness.

    .venv/bin/python bench/out_of_box_bench.py [--mmlu 200] [--gsm8k 60]          # a new collection
    .venv/bin/python bench/out_of_box_bench.py --more [--mmlu 200] [--gsm8k 60]   # the next questions, added
    .venv/bin/python bench/out_of_box_bench.py --analyse-only                    # the answers kept

Same selection and budgets as the fit's collection (bench/calibration_lodo_bench.py: MMLU's held-out split,
256 tokens; GSM8K, 512 tokens; order seed 21), taking the next questions after those fitted on. Answers as
returned (no follow-ups), memory off. Results: bench/results/out-of-box.md and .json; the eval reports and
answers beside them, one set per part (out-of-box-<dataset>[-<part>].md / .jsonl / .questions.jsonl), the answers
also compressed in bench/results/out-of-box-answers/ (kept in the repository: what the analysis reads).

`pgreflect eval` records its verdicts as labels, and the product refits a version's calibrator every
calibration_refit_new_labels labels (the pg_cron job): the second dataset's answers would be scored by a refit
on the first's labels, not by the shipped calibrator. The run evaluates with `--record-labels off`.
The analysis scores every kept answer with the shipped calibrator through the database's own function
(reflect._confidence on the answer's served signals) as a worker with --p-true-min-tokens (default: the
worker's) serves it: P(True) dropped after shorter answers (the pass comes after the answer and changes nothing
else, so answers collected with P(True) after every answer are rescored exactly). It checks the rescoring
against the served path: each run's answers scored again by the calibrator that served them (kept beside the
answers, served-calibrator-*.json) with their signals as served give the confidence the run returned, up to the
first automatic refit; and it reports the served confidences where they differ (the run of 2026-12-05 left
refits on).
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
from lodo_analysis import load  # noqa: E402

from pgreflect import datasets  # noqa: E402
from pgreflect.client import Client  # noqa: E402
from pgreflect.evaluate import metrics  # noqa: E402
from pgreflect.flows.setup import register_packaged  # noqa: E402
from pgreflect.meta import shipped as shipped_calibrators  # noqa: E402
from pgreflect.models import DEFAULT_MODEL, PACKAGED  # noqa: E402
from pgreflect.sql import query  # noqa: E402
from pgreflect.worker import WorkerConfig  # noqa: E402

from bench_cluster import cli_env, keyring, no_followups, pgreflect_database, start_cluster  # noqa: E402

RESULTS = HERE / "results"
ANSWERS = RESULTS / "out-of-box-answers"
FIRST_REFIT = 25  # labels before the first automatic refit (calibration_refit_new_labels' default)


def fitted_ids() -> set[str]:
    ids: set[str] = set()
    for path in (RESULTS / "lodo-answers").glob("lodo-answers*.jsonl.gz"):
        with gzip.open(path, "rt") as f:
            ids.update(json.loads(line)["id"] for line in f if line.strip())
    return ids


def fresh_items(name: str, n: int, excluded: set[str]) -> list[dict[str, Any]]:
    split = DATASETS[name][0]
    chosen = [it for it in datasets.select(name, split, None, seed=SEED) if it["id"] not in excluded]
    return chosen[:n]


def part_label(name: str, part: int) -> str:
    """Part 1 of a dataset's answers is out-of-box-<name>; each run with --more adds the next part."""
    return f"out-of-box-{name}" if part == 1 else f"out-of-box-{name}-{part}"


def answers_path(name: str, part: int) -> Path:
    return ANSWERS / f"{part_label(name, part)}.jsonl.gz"


def kept_parts(name: str) -> list[int]:
    found = []
    for path in ANSWERS.glob(f"out-of-box-{name}*.jsonl.gz"):
        tail = path.name.removeprefix(f"out-of-box-{name}").removesuffix(".jsonl.gz")
        if tail == "" or tail.removeprefix("-").isdigit():
            found.append(int(tail.removeprefix("-") or 1))
    return sorted(found)


def served_signals(rows: list[dict[str, Any]], p_true_min_tokens: int) -> list[dict[str, Any]]:
    """The answers' signals as a worker with this --p-true-min-tokens serves them."""
    return [r if r["tokens"] >= p_true_min_tokens or "p_true" not in r["signals"] else
            {**r, "signals": {k: v for k, v in r["signals"].items() if k != "p_true"}} for r in rows]


def install(dsn: str, document: dict[str, Any]) -> None:
    """Installs a calibrator document and makes it the version's active one (install_calibrator activates it
    only where the version has none)."""
    with psycopg.connect(dsn) as conn:
        cal = conn.execute(query("install_calibrator"), {"model_version": DEFAULT_MODEL,
                                                         "document": json.dumps(document)}).fetchone()[0]
        conn.execute("UPDATE reflect.calibrators SET is_active = false WHERE is_active AND model_version_id = "
                     "(SELECT model_version_id FROM reflect.calibrators WHERE id = %s)", (cal,))
        conn.execute("UPDATE reflect.calibrators SET is_active = true WHERE id = %s", (cal,))


def served_by(report: dict[str, Any]) -> dict[str, str]:
    """Each part's label -> the file of the calibrator that served it (the shipped one when the run began)."""
    return {p["label"]: run.get("served_by", "served-calibrator-2026-11-28.json")
            for run in report["runs"] for p in run["parts"]}


def shipped_confidences(dsn: str, rows: list[dict[str, Any]]) -> list[float]:
    """Each answer's confidence under the calibrator the version has now (the shipped one on a fresh setup),
    from the signals it was served with, by the function that scores served answers."""
    with psycopg.connect(dsn) as conn:
        return [conn.execute(
            "SELECT (reflect._confidence(mv.id, reflect._feature_values((%(s)s::jsonb ->> 'logprob_mean')::float8, "
            "(%(s)s::jsonb ->> 'logprob_min')::float8, %(tokens)s, %(s)s::jsonb), %(s)s::jsonb, NULL)).confidence "
            "FROM reflect.model_versions mv WHERE mv.name = %(mv)s",
            {"mv": DEFAULT_MODEL, "tokens": r["tokens"], "s": json.dumps(r["signals"])}).fetchone()[0] for r in rows]


def collect(env: dict[str, str], name: str, n: int, part: int, excluded: set[str]) -> dict[str, Any]:
    """One part: the next n fresh questions through `pgreflect eval` (labels off: they would refit the
    calibrator being measured)."""
    items = fresh_items(name, n, excluded)
    label = part_label(name, part)
    qfile, out, md = (RESULTS / f"{label}{ext}" for ext in (".questions.jsonl", ".jsonl", ".md"))
    qfile.write_text("".join(json.dumps(it) + "\n" for it in items))
    t = time.time()
    done = subprocess.run([sys.executable, "-m", "pgreflect.cli", "eval", "--file", str(qfile), "--out", str(out),
                           "--report", str(md), "--max-tokens", str(DATASETS[name][2]), "--eval-memory", "off",
                           "--record-labels", "off", "--run-label", label, "--timeout", "36000"],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"eval of {name} failed:\n{done.stderr[-3000:]}")
    ANSWERS.mkdir(exist_ok=True)
    answers_path(name, part).write_bytes(gzip.compress(out.read_bytes(), mtime=0))
    print(f"{label}: {len(items)} answered in {(time.time() - t) / 60:.1f} min", flush=True)
    return {"label": label, "questions": len(items), "minutes": (time.time() - t) / 60}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmlu", type=int, default=200)
    ap.add_argument("--gsm8k", type=int, default=60)
    ap.add_argument("--more", action="store_true",
                    help="answer the next fresh questions as one more part, keeping the parts answered before")
    ap.add_argument("--analyse-only", action="store_true", help="score the answers kept by the runs before")
    ap.add_argument("--p-true-min-tokens", type=int, default=WorkerConfig().p_true_min_tokens,
                    help="score the answers as a worker with this --p-true-min-tokens serves them")
    args = ap.parse_args()
    fitted = fitted_ids()
    wanted = {"mmlu": args.mmlu, "gsm8k": args.gsm8k}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report: dict[str, Any] = {"fitted_on": len(fitted), "runs": [], "datasets": {}}
    if args.analyse_only or args.more:
        report = json.loads((RESULTS / "out-of-box.json").read_text())
        if "runs" not in report:  # written before parts existed: one run, part 1 of each dataset
            report["runs"] = [{"started": report.pop("started"), "minutes": report.pop("minutes"),
                               "command": "--mmlu 200 --gsm8k 80",
                               "parts": [{"label": part_label(n, 1), "questions": d["questions"],
                                          "minutes": d["minutes"]} for n, d in report["datasets"].items()]}]
    report.pop("analysed", None)
    if args.analyse_only:
        report["analysed"] = started
    t0 = time.time()
    cluster = start_cluster()
    try:
        dsn = pgreflect_database(cluster)
        register_packaged(dsn, DEFAULT_MODEL, activate=True)
        no_followups(dsn)
        ring = keyring()
        env = cli_env(cluster, dsn, ring)
        if not args.analyse_only:
            doc = shipped_calibrators.HERE / f"{PACKAGED[DEFAULT_MODEL].sha256}.json"
            kept = ANSWERS / f"served-calibrator-{json.loads(doc.read_text())['fitted_at'][:10]}.json"
            ANSWERS.mkdir(exist_ok=True)
            kept.write_bytes(doc.read_bytes())
            run: dict[str, Any] = {"started": started, "command": f"{'--more ' if args.more else ''}--mmlu "
                                   f"{args.mmlu} --gsm8k {args.gsm8k}", "served_by": kept.name, "parts": []}
            for name, n in wanted.items():
                parts = kept_parts(name)
                if not args.more:  # a new collection: the parts of the one before go
                    for part in parts:
                        for ext in (".questions.jsonl", ".jsonl", ".md"):
                            (RESULTS / f"{part_label(name, part)}{ext}").unlink(missing_ok=True)
                        answers_path(name, part).unlink()
                    parts = []
                if n > 0:
                    used = {r["id"] for part in parts for r in load(answers_path(name, part))}
                    run["parts"].append(collect(env, name, n, (parts[-1] + 1) if parts else 1, fitted | used))
            run["minutes"] = (time.time() - t0) / 60
            report["runs"] = [*report["runs"], run] if args.more else [run]
        results: list[dict[str, Any]] = []
        for name in wanted:
            for part in kept_parts(name):
                results += [{**r, "part": part} for r in load(answers_path(name, part))]
        names = sorted({r["dataset"] for r in results}, key=list(wanted).index)
        report["p_true_min_tokens"] = args.p_true_min_tokens
        as_served = served_signals(results, args.p_true_min_tokens)
        shipped = [{**r, "confidence": c} for r, c in zip(results, shipped_confidences(dsn, as_served), strict=True)]
        # The check: each part scored again by the calibrator that served it, on its signals as served.
        check: dict[int, float] = {}
        by = served_by(report)
        for doc_name in sorted(set(by.values())):
            install(dsn, json.loads((ANSWERS / doc_name).read_text()))
            rows = [(i, r) for i, r in enumerate(results) if by[part_label(r["dataset"], r["part"])] == doc_name]
            check.update(zip([i for i, _ in rows], shipped_confidences(dsn, [r for _, r in rows]), strict=True))
        rescored = [{**r, "confidence": check[i]} for i, r in enumerate(results)]
        report["datasets"] = {}
        with Client(cluster.dsn(user="pgreflect_app"), keyring=ring) as client:
            for name in names:
                served = [r for r in results if r["dataset"] == name]
                d = report["datasets"][name] = {
                    "questions": len(served),
                    "calibrated_share": sum(bool(r["calibrated"]) for r in served) / len(served),
                    "metrics": metrics(client, [r for r in shipped if r["dataset"] == name]),
                    "parts": {str(part): served_against_shipped([r for r in served if r["part"] == part],
                                                                [r for r in rescored if r["dataset"] == name
                                                                 and r["part"] == part])
                              for part in sorted({r["part"] for r in served})}}
                if any(p["served_differs"] for p in d["parts"].values()):
                    d["served_metrics"] = metrics(client, served)
            first = report["datasets"][names[0]]["parts"]
            for part, check in first.items():
                if check["same_before_first_difference"] < min(FIRST_REFIT, check["n"]):
                    raise SystemExit(f"{names[0]} part {part}: the shipped calibrator's confidence differs from the "
                                     f"served one from answer {check['same_before_first_difference'] + 1}, before "
                                     "any refit could run")
            report["pooled"] = metrics(client, shipped)
            if any(d.get("served_metrics") for d in report["datasets"].values()):
                report["served_pooled"] = metrics(client, results)
    finally:
        cluster.destroy()
    (RESULTS / "out-of-box.json").write_text(json.dumps(report, indent=1) + "\n")
    text = write_markdown(report)
    (RESULTS / "out-of-box.md").write_text(text)
    print(text)


def served_against_shipped(served: list[dict[str, Any]], shipped: list[dict[str, Any]]) -> dict[str, Any]:
    """How the confidences a run served compare with the shipped calibrator's on the same signals: the
    answers in request order up to the first that differs (what was served before a refit) and the largest
    difference there, which checks the rescoring against the served path."""
    pairs = sorted(zip(served, shipped, strict=True), key=lambda p: p[0]["request_id"])
    diffs = [abs(a["confidence"] - b["confidence"]) for a, b in pairs]
    same = next((i for i, d in enumerate(diffs) if d > 1e-9), len(diffs))
    return {"n": len(diffs), "served_differs": same < len(diffs), "same_before_first_difference": same,
            "max_difference_before": max(diffs[:same], default=None), "max_difference": max(diffs, default=None)}


def _ci(m: dict[str, Any], key: str) -> str:
    ci = m.get(f"{key}_ci") or [None, None]
    return "n/a" if m.get(key) is None else f"{m[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def write_markdown(report: dict[str, Any]) -> str:
    runs = "; ".join(
        f"`.venv/bin/python bench/out_of_box_bench.py {run['command']}` ({run['started']}, {run['minutes']:.0f} min: "
        + ", ".join(f"{p['label']} {p['questions']}" for p in run["parts"]) + ")" for run in report["runs"])
    lines = [
        "# Out of the box: the shipped calibrator on questions it was not fitted on", "",
        f"Commands: {runs}, 2 cores"
        + (f"; scored again with `--analyse-only` {report['analysed']}" if report.get("analysed") else "")
        + ". A fresh database set up as `pgreflect up` does (default model, the shipped calibrator installed, no "
        "labels); `pgreflect eval`, memory off, no follow-ups (each answer as returned); the questions: the next "
        f"ones after the {report['fitted_on']} the shipped calibrator was fitted on (and after those of the parts "
        "before), same split, order and token budget. Intervals: bootstrap 95%; ECE beside the ECE of a perfectly "
        "calibrated confidence at this n; share: selective gain at 80% coverage as a share of the oracle's. P(True) "
        f"as a worker with --p-true-min-tokens {report.get('p_true_min_tokens', 0)} serves it (only after answers of "
        "at least that many tokens; the answers were collected with it after every answer and are rescored "
        "exactly).", "",
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
              "the runs returned, where it differs. The check of that rescoring: each part's answers scored again "
              "by the calibrator that served them (kept in bench/results/out-of-box-answers/), against the "
              "confidence they were served with:"]
    for name, d in report["datasets"].items():
        for part, c in d["parts"].items():
            before = c["max_difference_before"]
            lines.append(f"- {part_label(name, int(part))}: {c['same_before_first_difference']} of {c['n']} answers, "
                         "in request order, served with that calibrator's confidence (largest difference "
                         f"{'n/a' if before is None else f'{before:.1e}'})"
                         + (", then refits on the run's own labels scored the rest (largest difference "
                            f"{c['max_difference']:.3f})." if c["served_differs"] else "."))
    lines += ["", "Targets (issue 8): AUROC >= 0.80, ECE <= floor + 0.02, share >= 70%."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
