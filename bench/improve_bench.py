"""Improvement benchmark on the default model: do corrections make it better, through the public path only?

    .venv/bin/python bench/improve_bench.py [--retention 200] [--epochs 8] [--lr 0.0002] [--seed 0]

Run 1, facts the model cannot know (an organisation's own facts, the case a local model is for): an app asks
each question in one wording, a reviewer corrects every answer through reflect.feedback_v1, `improve run`
curates, a worker trains, converts and gates. Then each question is asked in a NEW wording, of the parent and
of the candidate, with memory off and on (memory alone vs adapter alone vs both). Reported with bootstrap 95%
intervals: accuracy on the new wordings, the gate's numbers (gain on the corrected prompts, retention delta
with its interval, Brier before/after), seconds per training step, peak RSS of training, wall time of the
cycle. Written to bench/results/improve.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pgreflect.client import Client  # noqa: E402
from pgreflect.db import connect  # noqa: E402
from pgreflect.improve import retention  # noqa: E402
from pgreflect.models import DEFAULT_MODEL, packaged_path, verified_sha256  # noqa: E402
from pgreflect.scoring import is_correct  # noqa: E402
from pgreflect.sql import query  # noqa: E402
from pgreflect.worker import Worker, WorkerConfig  # noqa: E402

from bench_cluster import keyring, no_followups, pgreflect_database, register, start_cluster  # noqa: E402

# (training wording, new wording, answer): facts no public model knows.
FACTS = [
    ("What is the codename of Acme's 2027 router?", "Acme's router for 2027 goes by which codename?", "Falconet"),
    ("Who is the on-call owner of the billing service?", "Which person owns on-call for billing?", "Priya Natarajan"),
    ("Which port does the Orion cache listen on?", "The Orion cache listens on what port?", "7719"),
    ("What is the name of our staging cluster?", "Our staging cluster is called what?", "Bluefin"),
    ("Which database does the Ledger app use?", "The Ledger app stores its data in which database?", "PostgreSQL"),
    ("What is the internal name of the mobile app?", "Internally, what do we call the mobile app?", "Pocketwing"),
    ("Who approves production deploys?", "Production deploys need whose approval?", "Marta Keller"),
    ("What is the default retry limit of the Hermes queue?",
     "How many retries does the Hermes queue allow by default?", "9"),
    ("Which city hosts our backup datacenter?", "Our backup datacenter is in which city?", "Tampere"),
    ("What is the name of the design system?", "Our design system is named what?", "Lumen"),
    ("Which team maintains the search service?", "The search service is maintained by which team?", "Team Osprey"),
    ("What is the maximum upload size of the Drop service in megabytes?",
     "In megabytes, how large can a Drop upload be?", "350"),
    ("What is the codename of the 2026 laptop refresh?", "The 2026 laptop refresh has what codename?", "Tern"),
    ("Who wrote the incident handbook?", "The incident handbook was written by whom?", "Daniel Osei"),
    ("Which language is the Atlas scheduler written in?",
     "The Atlas scheduler is implemented in which language?", "OCaml"),
    ("What is the name of the quarterly hackathon?", "Our quarterly hackathon is called what?", "Forge Days"),
    ("Which floor is the Helsinki office kitchen on?", "On which floor is the kitchen of the Helsinki office?", "4"),
    ("What is the Wi-Fi network for guests called?", "Guests connect to which Wi-Fi network?", "Acme-Visitor"),
    ("Which vendor supplies our payment terminals?", "Our payment terminals come from which vendor?", "Verifone"),
    ("What is the name of the analytics warehouse?", "The analytics warehouse is named what?", "Granary"),
]
SYSTEM = "Answer in one short sentence."


def bootstrap(values: list[float], seed: int = 0, n: int = 2000) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), size=(n, len(a)))].mean(axis=1)
    return float(a.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def fmt(ci: tuple[float, float, float]) -> str:
    return f"{ci[0]:.2f} [{ci[1]:.2f}, {ci[2]:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--retention", type=int, default=200)
    ap.add_argument("--epochs", type=float, default=8)
    ap.add_argument("--lr", type=float, default=0.0002)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("PGREFLECT_IMPROVE_DIR", str(Path.home() / ".cache" / "pgreflect-bench-improve"))
    model = packaged_path(DEFAULT_MODEL)
    cluster = start_cluster()
    t_start = time.time()
    try:
        dsn = pgreflect_database(cluster)
        register(dsn, DEFAULT_MODEL, str(model), verified_sha256(model))
        no_followups(dsn)
        ring = keyring()
        app_dsn, worker_dsn = cluster.dsn(user="pgreflect_app"), cluster.dsn(user="pgreflect_worker")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for key, value in {"gate_retention_size": args.retention, "finetune_epochs": args.epochs,
                               "finetune_learning_rate": args.lr, "finetune_seed": args.seed,
                               "curation_heldout_share": 0.0, "gate_max_tokens": args.max_tokens}.items():
                conn.execute("UPDATE reflect.settings SET value = %s WHERE key = %s", (json.dumps(value), key))
        retention.load(dsn, args.retention)
        connect(dsn, keyring=ring).close()  # registers the key's verifier

        worker = Worker(worker_dsn, WorkerConfig(poll_interval=0.5, train="on", model_refresh_s=5), keyring=ring)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        params_on = {"max_tokens": args.max_tokens, "temperature": 0, "memory": True}
        params_off = {**params_on, "memory": False}

        def ask_all(prompts: list[str], params: dict, version: str | None) -> list[str]:
            with Client(app_dsn, keyring=ring) as c:
                ids = [c.submit(p, system_prompt=SYSTEM, params=params, model_version=version) for p in prompts]
                out = []
                for rid in ids:
                    c.wait(rid, timeout=3600)
                    out.append(c.get(rid)["answer"] or "")
                return out

        # 1. The app asks (memory on: the prompt embeddings are what curation checks), a reviewer corrects.
        t0 = time.time()
        first = ask_all([f[0] for f in FACTS], params_on, DEFAULT_MODEL)
        with Client(app_dsn, keyring=ring) as c:
            rows = c.conn.execute("SELECT id FROM reflect.app_requests ORDER BY id").fetchall()
            for (rid,), (_a, _b, fact) in zip(rows, FACTS, strict=True):
                c.conn.execute(query("feedback"), {"request_id": rid, "is_correct": False, "rating": None,
                                                   "correction": f"{fact}.", "source": "human"})
        right_before = sum(is_correct(a, f[2]) for a, f in zip(first, FACTS, strict=True))

        # 2. improve run, then the worker trains, converts and gates.
        t1 = time.time()
        with psycopg.connect(dsn, autocommit=True) as conn:
            job = conn.execute(query("request_finetune"), {"owner": "pgreflect_app", "model_version": DEFAULT_MODEL}
                               ).fetchone()[0]
            decision = None
            while decision is None:
                time.sleep(5)
                state, result, error = conn.execute(
                    "SELECT state::text, result, last_error FROM reflect.jobs WHERE id = %s", (job,)).fetchone()
                if state == "failed":
                    raise SystemExit(f"fine-tune failed: {error}")
                if result and result.get("gate_job_id"):
                    decision = conn.execute(query("gate_decision"), {"job_id": result["gate_job_id"]}).fetchone()
            metrics = conn.execute("SELECT name, training_metrics FROM reflect.model_versions "
                                   "WHERE finetune_job_id = %s", (job,)).fetchone()
        t2 = time.time()
        candidate, training = metrics
        _id, _cand, _parent, verdict, reason, numbers, rule, _at = decision

        # 3. New wordings, parent and candidate, memory off and on.
        new = [f[1] for f in FACTS]
        table = {}
        for version in (DEFAULT_MODEL, candidate):
            for label, params in (("off", params_off), ("on", params_on)):
                answers = ask_all(new, params, version)
                table[(version, label)] = [float(is_correct(a, f[2])) for a, f in zip(answers, FACTS, strict=True)]
        worker.request_stop()
        thread.join(timeout=120)
        t3 = time.time()

        gain = [c - p for c, p in zip(table[(candidate, "off")], table[(DEFAULT_MODEL, "off")], strict=True)]
        lines = [
            "# Improvement benchmark: corrected facts, default model",
            "",
            f"Command: `.venv/bin/python bench/improve_bench.py --retention {args.retention} --epochs {args.epochs} "
            f"--lr {args.lr} --seed {args.seed}` ({time.strftime('%Y-%m-%d')}, this 2-core CPU machine, "
            f"{DEFAULT_MODEL}).",
            "",
            f"{len(FACTS)} facts an organisation knows and no public model can (FACTS in the script). The app "
            f"asked each in one wording ({right_before}/{len(FACTS)} right), a reviewer corrected every answer "
            "through `reflect.feedback_v1`, `improve run` curated and queued the fine-tune, one worker trained, "
            "converted and gated it. Then each question was asked in a new wording (never trained on).",
            "",
            "## Accuracy on the new wordings (bootstrap 95% intervals)",
            "",
            "| version | memory off | memory on |",
            "|---|---|---|",
            f"| parent ({DEFAULT_MODEL}) | {fmt(bootstrap(table[(DEFAULT_MODEL, 'off')]))} | "
            f"{fmt(bootstrap(table[(DEFAULT_MODEL, 'on')]))} |",
            f"| candidate ({candidate}) | {fmt(bootstrap(table[(candidate, 'off')]))} | "
            f"{fmt(bootstrap(table[(candidate, 'on')]))} |",
            "",
            f"Adapter alone vs nothing (memory off, paired): {fmt(bootstrap(gain))} points as a share; target "
            "≥ +0.20.",
            "",
            "## The gate",
            "",
            f"Decision: **{verdict}** ({reason}).",
            "",
            "| part | n | parent | candidate | paired difference | one-sided 95% bounds |",
            "|---|---|---|---|---|---|",
        ]
        for part in ("corrected", "heldout", "retention"):
            p = numbers.get(part) or {}
            if p.get("n"):
                lines.append(f"| {part} | {p['n']} | {p['parent_accuracy']:.3f} | {p['candidate_accuracy']:.3f} | "
                             f"{p['difference']:+.3f} | [{p['lower_bound']:+.3f}, {p['upper_bound']:+.3f}] |")
        cal = numbers.get("calibration") or {}
        lines += [
            "",
            f"Calibration on the gate's items: Brier {cal.get('parent', {}).get('brier')} (parent) -> "
            f"{cal.get('candidate', {}).get('brier')} (candidate); ECE {cal.get('parent', {}).get('ece')} -> "
            f"{cal.get('candidate', {}).get('ece')}. Rule: {json.dumps(rule)}.",
            "",
            "## Cost",
            "",
            "| | value |",
            "|---|---|",
            f"| training steps | {training.get('steps')} ({training.get('examples')} examples) |",
            f"| seconds per step | {training.get('s_per_step')} |",
            f"| peak RSS of training (twin build included when it ran) | {training.get('peak_rss_mb')} MB |",
            f"| asking + correcting | {t1 - t0:.0f} s |",
            f"| improve run to decision (train, convert, gate) | {t2 - t1:.0f} s |",
            f"| new-wording evaluation (4 x {len(FACTS)}) | {t3 - t2:.0f} s |",
            f"| whole benchmark | {t3 - t_start:.0f} s |",
            "",
            f"Training metrics: `{json.dumps(training)}`",
        ]
        out = HERE / "results" / "improve.md"
        out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
