"""Calibration benchmark on the default model: does pgreflect know when it is wrong?

    .venv/bin/python bench/calibration_bench.py [--dataset mmlu] [--train 400] [--heldout 200] [--max-tokens 16]

1. Answers --train questions of the dataset's train split through `pgreflect eval` (labels recorded as
   ground truth), with memory off so that the two splits are comparable.
2. Fits the calibrator on those labels (reflect.fit_calibrator_v1).
3. Answers --heldout questions of the held-out split: their confidences now come from the calibrator.
Reports the held-out accuracy, AUROC of the calibrated confidence for detecting wrong answers, ECE, Brier,
accuracy at 80% coverage, and each signal's AUROC on its own, to bench/results/calibration.md (+ the eval
reports and reliability diagram beside it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pgreflect.models import DEFAULT_MODEL, packaged_path, verified_sha256  # noqa: E402
from pgreflect.sql import query  # noqa: E402

from bench_cluster import cli_env, keyring, no_followups, pgreflect_database, register, start_cluster  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mmlu", choices=["mmlu", "gsm8k"])
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--followups", default="off", choices=["on", "off"],
                    help="critique and agreement for every question (about 30 s more per question here)")
    args = ap.parse_args()
    results = HERE / "results"
    model = packaged_path(DEFAULT_MODEL)
    cluster = start_cluster()
    started = time.time()
    try:
        dsn = pgreflect_database(cluster)
        register(dsn, DEFAULT_MODEL, str(model), verified_sha256(model))
        if args.followups == "off":
            no_followups(dsn)
        env = cli_env(cluster, dsn, keyring())

        def cli(*a: str) -> str:
            done = subprocess.run([sys.executable, "-m", "pgreflect.cli", *a], env=env, capture_output=True,
                                  text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"pgreflect {' '.join(a)} failed:\n{done.stderr[-3000:]}")
            return done.stdout

        summaries = {}
        for split, n in (("train", args.train), ("heldout", args.heldout)):
            if n <= 0:
                summaries[split] = {"signals_text": []}
                continue
            qfile = results / f"calibration-{args.dataset}-{split}.questions.jsonl"
            cli("datasets", "export", args.dataset, "--split", split, "--limit", str(n), "--out", str(qfile))
            if split == "heldout":
                with psycopg.connect(dsn, autocommit=True) as conn:
                    cal = conn.execute(query("fit_calibrator"), {"model_version": DEFAULT_MODEL}).fetchone()[0]
                    fit = conn.execute(query("calibrator"), {"id": cal}).fetchone()[0] if cal else None
                    weights = conn.execute("SELECT features, weights FROM reflect.calibrators WHERE id = %s",
                                           (cal,)).fetchone() if cal else None
            out = cli("eval", "--file", str(qfile), "--out", str(results / f"calibration-{args.dataset}-{split}.jsonl"),
                      "--report", str(results / f"calibration-{args.dataset}-{split}.md"),
                      "--plot", str(results / f"calibration-{args.dataset}-{split}.png"),
                      "--max-tokens", str(args.max_tokens), "--eval-memory", "off", "--run-label", split)
            summaries[split] = json.loads(out.splitlines()[0])
            # the per-signal AUROCs of this split, as `pgreflect eval` printed them
            summaries[split]["signals_text"] = [line.strip() for line in out.splitlines()[1:]]
    finally:
        cluster.destroy()

    h = summaries["heldout"]
    lines = [
        f"Command: `.venv/bin/python bench/calibration_bench.py --dataset {args.dataset} --train {args.train} "
        f"--heldout {args.heldout} --max-tokens {args.max_tokens} --followups {args.followups}`  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {DEFAULT_MODEL}, greedy, memory off, "
        f"follow-ups (critique, agreement) {args.followups}, "
        f"{(time.time() - started) / 60:.0f} min on 2 cores.",
        "",
        f"Calibrator fitted on {args.train} labelled train-split answers "
        f"(features {weights[0] if weights else 'n/a'}, "
        f"weights {[round(w, 3) for w in weights[1]] if weights else 'n/a'}; "
        f"its own 80/20 internal held-out: {json.dumps(fit['heldout']) if fit else 'not fitted'}).",
        "",
        "Held-out split (never used for fitting):",
        "",
        "| metric | value | target |",
        "|---|---|---|",
        f"| questions scored | {h.get('scored')} | |",
        f"| accuracy | {h.get('accuracy', 0):.3f} | |",
        f"| AUROC, calibrated confidence, wrong-answer detection | {h.get('auroc') or 0:.3f} | >= 0.80 |",
        f"| ECE (10 bins) | {h.get('ece') or 0:.3f} | <= 0.05 |",
        f"| Brier | {h.get('brier') or 0:.3f} | |",
        f"| accuracy at 80% coverage | {h.get('accuracy_at_80') or 0:.3f} "
        f"| >= accuracy + 0.10 = {h.get('accuracy', 0) + 0.1:.3f} |",
        f"| share of answers with a calibrated confidence | {h.get('calibrated_share', 0):.2f} | |",
        "",
        "Each signal on its own, held-out split (AUROC for detecting wrong answers; 0.5 = no information):",
        "",
        "```",
        *h["signals_text"],
        "```",
        "",
        f"Train split: accuracy {summaries['train'].get('accuracy', 0):.3f}, uncalibrated-default AUROC "
        f"{summaries['train'].get('auroc') or 0:.3f}, ECE {summaries['train'].get('ece') or 0:.3f}.",
        f"Reports: calibration-{args.dataset}-heldout.md, reliability diagram calibration-{args.dataset}-heldout.png.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (results / "calibration.md").write_text(text)


if __name__ == "__main__":
    main()
