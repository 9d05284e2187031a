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
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from improve_common import ImproveBench, bootstrap, cost_lines, fmt, gate_lines  # noqa: E402

from pgreflect.models import DEFAULT_MODEL  # noqa: E402
from pgreflect.scoring import is_correct  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--retention", type=int, default=200)
    ap.add_argument("--epochs", type=float, default=8)
    ap.add_argument("--lr", type=float, default=0.0002)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    bench = ImproveBench({"finetune_epochs": args.epochs, "finetune_learning_rate": args.lr,
                          "finetune_seed": args.seed, "curation_heldout_share": 0.0,
                          "gate_max_tokens": args.max_tokens}, args.retention)
    try:
        params_on = {"max_tokens": args.max_tokens, "temperature": 0, "memory": True}
        params_off = {**params_on, "memory": False}

        def answers(prompts: list[str], params: dict, version: str | None) -> list[str]:
            return [row["answer"] or "" for row in bench.ask(prompts, params, version, SYSTEM)]

        # 1. The app asks (memory on: the prompt embeddings are what curation checks), a reviewer corrects.
        t0 = time.time()
        first = bench.ask([f[0] for f in FACTS], params_on, DEFAULT_MODEL, SYSTEM)
        for row, (_a, _b, fact) in zip(first, FACTS, strict=True):
            bench.feedback(row["id"], False, f"{fact}.")
        right_before = sum(is_correct(row["answer"] or "", f[2]) for row, f in zip(first, FACTS, strict=True))

        # 2. improve run, then the worker trains, converts and gates.
        t1 = time.time()
        decision, candidate, training = bench.improve_run()
        t2 = time.time()

        # 3. New wordings, parent and candidate, memory off and on.
        new = [f[1] for f in FACTS]
        table = {}
        for version in (DEFAULT_MODEL, candidate):
            for label, params in (("off", params_off), ("on", params_on)):
                got = answers(new, params, version)
                table[(version, label)] = [float(is_correct(a, f[2])) for a, f in zip(got, FACTS, strict=True)]
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
            *gate_lines(decision),
            "",
            "## Cost",
            "",
            *cost_lines(training, [("asking + correcting", t1 - t0),
                                   ("improve run to decision (train, convert, gate)", t2 - t1),
                                   (f"new-wording evaluation (4 x {len(FACTS)})", t3 - t2),
                                   ("whole benchmark", t3 - bench.started)]),
        ]
        out = HERE / "results" / "improve.md"
        out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        bench.close()


if __name__ == "__main__":
    main()
