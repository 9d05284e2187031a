"""Inference overhead: tokens/s of the full path (INSERT -> answer read back) against calling
llama-cpp-python directly on the same model and prompts, in one run.

    .venv/bin/python bench/inference_overhead.py [--model PATH] [--rounds 3] [--max-tokens 64]

Direct: Llama.create_chat_completion (greedy), timed around the call. Full path: a pgreflect worker process
(model loaded before timing) answers requests submitted by the app client; timed from before the INSERT
until the answer has been read back. Both use the same thread count; runs alternate (direct, full, direct,
full, ...) so machine noise hits both. tokens/s = generated tokens / wall time, prompt evaluation included.
Results (markdown) go to stdout; the runs recorded are bench/results/inference-signals-off.md and -on.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402

from pgreflect.client import Client  # noqa: E402
from pgreflect.models import DEFAULT_MODEL, packaged_path, verified_sha256  # noqa: E402

from bench_cluster import keyring, no_followups, pgreflect_database, register, start_cluster  # noqa: E402

PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a Python function that reverses a string, with a docstring.",
    "List five uses of a paperclip.",
    "Describe how a hash table works.",
    "What are the main differences between TCP and UDP?",
]
# Short questions with short answers (--prompts short): where the P(True) pass weighs most.
SHORT_PROMPTS = [f"What is {a} times {b}? Answer with only the number." for a, b in
                 ((17, 23), (48, 39), (66, 12), (91, 57), (34, 78), (25, 25), (83, 46), (59, 61), (72, 14), (38, 95))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help=f"GGUF path (default: the packaged {DEFAULT_MODEL})")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompts", default="speed", choices=["speed", "short"],
                    help="speed: 5 prompts with long answers; short: 10 two-digit products, the number alone")
    ap.add_argument("--signals", default="on", choices=["on", "off"],
                    help="off: no P(True) pass, no memory retrieval (the bare request loop)")
    ap.add_argument("--p-true", default="worker", choices=["worker", "on", "off"],
                    help="with --signals on: the P(True) pass as the worker's default has it (after answers of "
                         "--p-true-min-tokens or more), or forced after every answer / none")
    args = ap.parse_args()
    model = Path(args.model) if args.model else packaged_path(DEFAULT_MODEL)

    cluster = start_cluster(durable=True)
    worker = None
    try:
        dsn = pgreflect_database(cluster)
        register(dsn, "m", str(model), verified_sha256(model))
        ring = keyring()
        env = {**os.environ, "PGREFLECT_DSN": dsn, "PGREFLECT_WORKER_DSN": cluster.dsn(user="pgreflect_worker"),
               "PGREFLECT_KEY": ring.keys[ring.current], "PGREFLECT_KEY_ID": ring.current,
               "PGREFLECT_LOG_LEVEL": "WARNING"}
        extra = ["--p-true", "off", "--memory", "off"] if args.signals == "off" else ["--memory", "on"]
        if args.signals == "on" and args.p_true != "worker":
            extra += ["--p-true", args.p_true, *(["--p-true-min-tokens", "0"] if args.p_true == "on" else [])]
        no_followups(dsn)
        worker = subprocess.Popen([sys.executable, "-m", "pgreflect.cli", "worker", "--threads", str(args.threads),
                                   "--poll-interval", "2", *extra], env=env)
        client = Client(cluster.dsn(user="pgreflect_app"), keyring=ring)
        direct = llama_cpp.Llama(model_path=str(model), n_ctx=4096, n_threads=args.threads,
                                 n_threads_batch=args.threads, verbose=False)
        params = {"max_tokens": args.max_tokens, "temperature": 0}
        # Warm-up (page cache, worker model load) outside the timings.
        client.wait(client.submit("Hello", params=params), timeout=600)
        direct.create_chat_completion([{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0)

        d_tokens = d_time = f_tokens = f_time = 0.0
        asked = 0
        per_round = []
        pairs: list[tuple[float, float, float, float]] = []
        timed: dict[int, float] = {}  # full-path request id -> seconds from before the INSERT to the answer read
        for _ in range(args.rounds):
            for prompt in PROMPTS if args.prompts == "speed" else SHORT_PROMPTS:
                t0 = time.perf_counter()
                out = direct.create_chat_completion([{"role": "user", "content": prompt}],
                                                    max_tokens=args.max_tokens, temperature=0)
                dt = time.perf_counter() - t0
                dn = out["usage"]["completion_tokens"]
                t0 = time.perf_counter()
                request_id = client.submit(prompt, params=params)
                row = client.wait(request_id, timeout=600)
                ft = time.perf_counter() - t0
                timed[request_id] = ft
                fn = row["tokens"]
                asked += "p_true" in (row.get("signals") or {})
                d_tokens, d_time, f_tokens, f_time = d_tokens + dn, d_time + dt, f_tokens + fn, f_time + ft
                per_round.append((fn / ft) / (dn / dt))
                pairs.append((dn, dt, fn, ft))
        parts = where_the_time_goes(dsn, timed) | {"direct": statistics.median(p[1] for p in pairs) * 1000}
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        cluster.destroy()

    d_tps, f_tps = d_tokens / d_time, f_tokens / f_time
    low, high = ratio_interval(pairs)
    on = ("on: every per-answer signal (log-probs, answer span, option distribution, kind, rule checks, hidden "
          f"state), prompt embedding and memory retrieval, P(True) pass {p_true_state(args)}")
    text = "\n".join([
        f"Command: `.venv/bin/python bench/inference_overhead.py --rounds {args.rounds} "
        f"--max-tokens {args.max_tokens} --signals {args.signals}"
        f"{' --prompts short' if args.prompts == 'short' else ''}"
        f"{f' --p-true {args.p_true}' if args.p_true != 'worker' else ''}` (model {model.name}, {args.threads} "
        f"threads; signals {on if args.signals == 'on' else 'off'}; no follow-ups)  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {len(per_round)} prompt pairs, alternating.",
        "",
        "| path | tokens | seconds | tokens/s |",
        "|---|---|---|---|",
        f"| llama-cpp-python create_chat_completion | {d_tokens:.0f} | {d_time:.1f} | {d_tps:.2f} |",
        f"| pgreflect INSERT -> answer | {f_tokens:.0f} | {f_time:.1f} | {f_tps:.2f} |",
        "",
        f"Ratio full path / direct: {f_tps / d_tps:.3f} (bootstrap 95% over the pairs [{low:.3f}, {high:.3f}]; "
        f"per-pair median {statistics.median(per_round):.3f}, min {min(per_round):.3f}, max {max(per_round):.3f}). "
        f"P(True) measured after {asked} of the {len(per_round)} full-path answers.",
        "",
        "Where a full-path request's time goes (median ms per request; from the database's timestamps and the "
        "worker's own timings):",
        "",
        "| queue wait (INSERT to claim) | model (prompt evaluation + generation) | rest of the worker's lease "
        "(decrypt, embedding + memory lookup, signals, reports) | client (INSERT, notification, read back) | total | "
        "direct, for comparison |",
        "|---|---|---|---|---|---|",
        "| " + " | ".join(f"{parts[k]:.1f}" for k in ("queue", "model", "worker", "client", "total", "direct")) + " |",
    ]) + "\n"
    print(text)
    suffix = f"-p-true-{args.p_true}" if args.signals == "on" and args.p_true != "worker" else ""
    suffix += "-short" if args.prompts == "short" else ""
    (HERE / "results" / f"inference-signals-{args.signals}{suffix}.md").write_text(text)


def where_the_time_goes(dsn: str, timed: dict[int, float]) -> dict[str, float]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT r.id, extract(epoch FROM r.claimed_at - r.created_at)::float8 * 1000, "
            "extract(epoch FROM r.finished_at - r.claimed_at)::float8 * 1000, a.prompt_eval_ms + a.generation_ms, "
            "extract(epoch FROM r.finished_at - r.created_at)::float8 * 1000 "
            "FROM reflect.requests r JOIN reflect.answers a ON a.request_id = r.id WHERE r.id = ANY(%s)",
            [list(timed)]).fetchall()
    parts: dict[str, list[float]] = {"queue": [], "model": [], "worker": [], "client": [], "total": []}
    for request_id, queue, lease, model, server in rows:
        total = timed[request_id] * 1000
        for key, value in (("queue", queue), ("model", model), ("worker", lease - model),
                           ("client", total - server), ("total", total)):
            parts[key].append(value)
    return {key: statistics.median(values) for key, values in parts.items()}


def ratio_interval(pairs: list[tuple[float, float, float, float]], reps: int = 2000) -> tuple[float, float]:
    """Bootstrap 95% interval of the ratio of the two paths' tokens/s, resampling the (direct, full) pairs: a pair
    ran back to back, so machine noise that hits both stays paired."""
    a = np.asarray(pairs, dtype=float)
    idx = np.random.default_rng(0).integers(0, len(a), size=(reps, len(a)))
    s = a[idx].sum(axis=1)  # (reps, 4): direct tokens, direct seconds, full tokens, full seconds
    ratios = (s[:, 2] / s[:, 3]) / (s[:, 0] / s[:, 1])
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def p_true_state(args: argparse.Namespace) -> str:
    from pgreflect.worker import WorkerConfig

    if args.p_true != "worker":
        return "after every answer" if args.p_true == "on" else "off"
    config = WorkerConfig()
    if not config.p_true:
        return "off (the worker's default)"
    return f"after answers of {config.p_true_min_tokens} tokens or more (the worker's default)"


if __name__ == "__main__":
    main()
