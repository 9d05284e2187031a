"""How far apart are related and unrelated prompts? The data behind the memory relevance cutoff
(reflect.settings memory_max_distance): retrieval should reach memories of the same kind of question and
leave prompts of another kind alone.

    .venv/bin/python bench/memory_distance.py --memories 2000 --queries 500 --out bench/results/memory-distance.md

Memories: MMLU train-split questions (as a user who labelled MMLU answers has). Queries: MMLU held-out
questions (the same kind) and GSM8K held-out problems (another kind). For each query, the cosine distance to
its nearest memory (all-MiniLM-L6-v2, as the worker embeds prompts). The cutoff is chosen so that 95% of
other-kind queries retrieve nothing; the report says what share of same-kind queries still retrieve at
least one memory, and how often their nearest memory is of the same MMLU subject (a proxy for relevance; it
does not say the memory helps the answer: that needs the model, see the issue's memory on/off benchmark).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from pgreflect import datasets
from pgreflect.embeddings import Embedder


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memories", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--unrelated-kept", type=float, default=0.05, help="share of other-kind queries allowed a memory")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    memories = datasets.select("mmlu", "train", args.memories, seed=1)
    same = datasets.select("mmlu", "heldout", args.queries, seed=2)
    other = datasets.select("gsm8k", "heldout", args.queries, seed=3)
    emb = Embedder()
    t0 = time.perf_counter()
    m = emb.embed([it["question"] for it in memories])
    q_same = emb.embed([it["question"] for it in same])
    q_other = emb.embed([it["question"] for it in other])
    secs = time.perf_counter() - t0

    def nearest(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims = q @ m.T
        idx = sims.argmax(axis=1)
        return 1 - sims[np.arange(len(q)), idx], idx

    d_same, idx_same = nearest(q_same)
    d_other, _ = nearest(q_other)
    cutoff = float(np.quantile(d_other, args.unrelated_kept))
    kept = d_same <= cutoff
    same_topic = np.array([memories[i].get("topic") == s.get("topic") for i, s in zip(idx_same, same, strict=True)])
    rng = np.random.default_rng(0)

    def boot(x: np.ndarray) -> tuple[float, float]:
        means = [x[rng.integers(0, len(x), len(x))].mean() for _ in range(2000)]
        return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))

    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    lines = [
        "# Memory relevance: nearest-memory distances", "",
        f"Command: `.venv/bin/python bench/memory_distance.py --memories {args.memories} --queries {args.queries}`",
        "", f"{len(memories)} MMLU train questions as memories; {len(same)} MMLU held-out and {len(other)} GSM8K "
        f"held-out questions as queries; embedding {len(memories) + len(same) + len(other)} texts took {secs:.0f} s.",
        "", "| queries | cosine distance to the nearest memory: " + " / ".join(f"p{int(x * 100)}" for x in q) + " |",
        "|---|---|",
        f"| MMLU held-out (same kind) | {' / '.join(f'{v:.3f}' for v in np.quantile(d_same, q))} |",
        f"| GSM8K held-out (other kind) | {' / '.join(f'{v:.3f}' for v in np.quantile(d_other, q))} |", "",
        f"Cutoff at the {args.unrelated_kept:.0%} quantile of the other kind's nearest distances: **{cutoff:.3f}** "
        "(cosine distance; memories farther than this are not retrieved).", "",
        f"- same-kind queries that still retrieve at least one memory: {kept.mean():.3f} "
        f"[{boot(kept.astype(float))[0]:.3f}, {boot(kept.astype(float))[1]:.3f}] (bootstrap 95%)",
        f"- of those, nearest memory of the same MMLU subject: {same_topic[kept].mean():.3f}; of the ones cut off: "
        f"{same_topic[~kept].mean() if (~kept).any() else float('nan'):.3f}",
        f"- other-kind queries that retrieve a memory: {(d_other <= cutoff).mean():.3f} (by construction)", "",
        "What this does not show: whether a retrieved memory makes the answer better. That needs the model "
        "answering with memory on and off on held-out items (not run here).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
