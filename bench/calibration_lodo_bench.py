"""Leave-one-dataset-out calibration on the default model, and the calibrator pgreflect ships for it.

    .venv/bin/python bench/calibration_lodo_bench.py [--ship VARIANT]                # answer, label, analyse
    .venv/bin/python bench/calibration_lodo_bench.py --collect-only                  # answer and label only
    .venv/bin/python bench/calibration_lodo_bench.py --answers FILE [--ship VARIANT] # analyse collected answers

1. Collect: answers each packaged dataset's questions through `pgreflect eval` (memory off, follow-ups off:
   the per-answer signals only, as served traffic has them), each answer labelled with its ground truth, and
   keeps every answer's features, label and final-layer hidden state in a file outside the repository
   (~/.cache/pgreflect/bench/lodo-answers.jsonl, about 20 MB: hidden states are large), and the same answers
   without their hidden states in the repository (bench/results/lodo-answers/<name>.jsonl.gz, ~100 KB), so
   that a refit or a new analysis of the signals never needs the hours of answering again.
2. Analyse (see bench/lodo_analysis.py): per held-out dataset, a calibrator fitted on the other datasets'
   answers, measured on the held-out one; each signal alone and the calibrator without it (ablation); the
   hidden-state probe; the all-data fits (every signal, without P(True), without the answer span and the option
   distribution: lodo_analysis.VARIANTS) written beside the answers as candidate documents, and with --ship
   VARIANT the chosen one where set-up installs it (shipped: without-span-options).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lodo_analysis import VARIANTS, analyse  # noqa: E402

from pgreflect import datasets  # noqa: E402
from pgreflect.models import DEFAULT_MODEL, packaged_path, verified_sha256  # noqa: E402
from pgreflect.paths import datasets_dir  # noqa: E402

from bench_cluster import cli_env, keyring, no_followups, pgreflect_database, register, start_cluster  # noqa: E402

# name -> (split, questions, max_tokens). Twelve sources, four kinds: multiple choice (MMLU, BIG-bench date
# understanding, Social IQa), numbers (GSM8K worked solutions, two-digit products, counting, "plus one"
# addition), short text (Wikidata statements, chemical elements, plurals, colour names, answers from a
# counterfactual context). The budgets let the model finish the way it answers each (it reasons out date
# arithmetic, many MMLU questions and GSM8K: ~9 s a GSM8K answer here).
DATASETS = {
    "mmlu": ("heldout", 200, 256),  # 16 tokens cut off the answers the model reasons out first (48 of 200)
    "gsm8k": ("all", 180, 512),  # 256 tokens cut off 22 of 40 worked solutions
    "bb-multiply-2digit": ("all", 180, 16),
    "bb-object-counting": ("all", 180, 16),
    "bb-wikidata": ("all", 220, 24),
    "bb-date-understanding": ("all", 180, 512),  # reasons, then \boxed{X}: 28 of 180 answers run past 256
    "bb-plus-one-addition": ("all", 180, 16),
    "bb-periodic-elements": ("all", 180, 16),
    "bb-social-iqa": ("all", 180, 16),
    "bb-plural": ("all", 180, 16),
    "bb-color-rgb": ("all", 180, 48),  # the model restates the question first: at 16 tokens all 180 were cut off
    "bb-context-qa": ("all", 180, 24),
}
SEED = 21


def answers_file() -> Path:
    return datasets_dir().parent / "bench" / "lodo-answers.jsonl"


def collect(names: list[str], scale: float, out: Path) -> tuple[Path, float]:
    model = packaged_path(DEFAULT_MODEL)
    sha = verified_sha256(model)
    results = HERE / "results"
    cluster = start_cluster()
    started = time.time()
    try:
        dsn = pgreflect_database(cluster)
        register(dsn, DEFAULT_MODEL, str(model), sha)
        no_followups(dsn)
        env = cli_env(cluster, dsn, keyring())
        for name in names:
            split, n, max_tokens = DATASETS[name]
            tag = name.replace("-", "_")
            qfile = results / f"lodo-{name}.questions.jsonl"
            items = datasets.select(name, split, max(1, round(n * scale)), seed=SEED)
            qfile.write_text("".join(json.dumps({**it, "dataset": tag}) + "\n" for it in items))
            t = time.time()
            done = subprocess.run([sys.executable, "-m", "pgreflect.cli", "eval", "--file", str(qfile),
                                   "--out", str(results / f"lodo-{name}.jsonl"), "--max-tokens", str(max_tokens),
                                   "--eval-memory", "off", "--run-label", "lodo", "--timeout", "36000"],
                                  env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"eval of {name} failed:\n{done.stderr[-3000:]}")
            print(f"{name}: {len(items)} answered in {(time.time() - t) / 60:.1f} min", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with psycopg.connect(dsn, autocommit=True) as conn, out.open("w") as f:
            for row in conn.execute("""
                    SELECT er.dataset, er.item_id, l.is_correct, reflect._feature_values_of(l.request_id),
                           s.state::real[]
                    FROM reflect.eval_requests er
                    JOIN reflect.labels l ON l.request_id = er.request_id
                    LEFT JOIN reflect.answer_states s ON s.request_id = er.request_id
                    WHERE er.run_label = 'lodo' ORDER BY er.request_id"""):
                f.write(json.dumps({"dataset": row[0], "id": row[1], "correct": row[2], "features": row[3],
                                    "state": row[4]}) + "\n")
        print(f"signals kept in {keep_signals(out)}", flush=True)
    finally:
        cluster.destroy()
    return out, (time.time() - started) / 60


def keep_signals(answers: Path) -> Path:
    """The collected answers without their hidden states, compressed, where the repository keeps them."""
    target = HERE / "results" / "lodo-answers" / f"{answers.stem}.jsonl.gz"
    target.parent.mkdir(exist_ok=True)
    with answers.open() as src, gzip.open(target, "wt") as dst:
        for line in src:
            if line.strip():
                row = json.loads(line)
                row.pop("state", None)
                dst.write(json.dumps(row, sort_keys=True) + "\n")
    return target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--scale", type=float, default=1.0, help="share of each dataset's question count")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help=f"where to collect (default {answers_file()})")
    ap.add_argument("--answers", type=Path, nargs="+", help="analyse these collected answers instead of collecting")
    ap.add_argument("--ship", choices=list(VARIANTS), default=None,
                    help="write this variant of the all-data fit where set-up installs it")
    ap.add_argument("--p-true-from", metavar="FILE:KEY", default=None,
                    help="analyse with the answers' P(True) replaced by KEY from FILE (bench/p_true_questions.py's "
                         "values, when the served question changed after the answers were collected)")
    ap.add_argument("--agreement", action="store_true",
                    help="analyse with the agreement signal where bench/agreement_bench.py drew samples")
    ap.add_argument("--p-true-min-tokens", type=int, default=0,
                    help="analyse the answers as a worker with this --p-true-min-tokens serves them (P(True) only "
                         "after answers of at least this many tokens)")
    args = ap.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    minutes = None
    paths = args.answers
    if paths is None:
        path, minutes = collect(names, args.scale, args.out or answers_file())
        print(f"collected into {path} in {minutes:.0f} min", flush=True)
        paths = [path]
    if not args.collect_only:
        p_true_from = None
        if args.p_true_from:
            file, _, key = args.p_true_from.rpartition(":")
            p_true_from = (Path(file), key)
        analyse(paths, ship=args.ship, command=" ".join(["bench/calibration_lodo_bench.py", *sys.argv[1:]]),
                collect_minutes=minutes, p_true_from=p_true_from, agreement_samples=args.agreement,
                p_true_min_tokens=args.p_true_min_tokens)


if __name__ == "__main__":
    main()
