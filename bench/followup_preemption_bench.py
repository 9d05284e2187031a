"""Does a request wait for a follow-up? The latency of a short request that arrives while the worker runs a
critique or an agreement follow-up, with preemption on (the default) and off, against the same request on an
idle worker, in one run.

    .venv/bin/python bench/followup_preemption_bench.py [--rounds 4] [--threads N]

Each measurement: a worked arithmetic question is answered (its follow-up of one kind queued, the other off),
the follow-up is claimed, a random 2-8 s later the short request is submitted and timed from before its INSERT
until its answer is read back; then the follow-up is left to finish (released and resumed where preempted) and
its wall time from first claim to completion is taken from the jobs table. The worker (a `pgreflect worker`
process with the default signals, model loaded before timing) is restarted for each mode; modes and kinds
alternate so machine noise hits both. Results: bench/results/followup-preemption.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import psycopg  # noqa: E402

from pgreflect.client import Client  # noqa: E402
from pgreflect.models import DEFAULT_MODEL, packaged_path, verified_sha256  # noqa: E402

from bench_cluster import cli_env, keyring, no_followups, pgreflect_database, register, start_cluster  # noqa: E402

TRIGGER = ("A baker makes 14 trays of 12 rolls each. She sells 97 rolls in the morning and half of the rest in "
           "the afternoon. How many rolls are left? Work it out step by step.")
PROBE = "What is the capital of Japan? Answer in one word."
KINDS = ("critique", "agreement")


def _settings(dsn: str, critique: float, agreement: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE reflect.settings SET value = to_jsonb(%s::float8) WHERE key = 'critique_fraction'",
                     (critique,))
        conn.execute("UPDATE reflect.settings SET value = to_jsonb(%s::float8) WHERE key = 'agreement_fraction'",
                     (agreement,))


def _job(dsn: str, request_id: int) -> tuple[str, int, float | None, dict[str, Any] | None]:
    """The follow-up's state, attempts, seconds from its first claim to its completion, and result."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT state::text, attempts, extract(epoch FROM finished_at - started_at), result "
                           "FROM reflect.jobs WHERE request_id = %s", (request_id,)).fetchone()
    if row is None:
        return "none", 0, None, None
    return row[0], row[1], (float(row[2]) if row[2] is not None else None), row[3]


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def measure(dsn: str, client: Client, kind: str, rng: random.Random) -> dict[str, Any]:
    _settings(dsn, critique=1.0 if kind == "critique" else 0.0, agreement=1.0 if kind == "agreement" else 0.0)
    trigger = client.submit(TRIGGER, params={"max_tokens": 96})
    client.wait(trigger, timeout=600)
    _wait(lambda: _job(dsn, trigger)[0] == "running", 120, f"the {kind} follow-up to start")
    delay = rng.uniform(2, 8)
    time.sleep(delay)
    _settings(dsn, 0.0, 0.0)
    running_at_arrival = _job(dsn, trigger)[0] == "running"
    t0 = time.perf_counter()
    row = client.wait(client.submit(PROBE, params={"max_tokens": 16}), timeout=600)
    latency = time.perf_counter() - t0
    _wait(lambda: _job(dsn, trigger)[0] in ("succeeded", "failed"), 900, f"the {kind} follow-up to finish")
    state, attempts, seconds, result = _job(dsn, trigger)
    return {"kind": kind, "delay_s": round(delay, 2), "latency_s": round(latency, 3), "probe_state": row["state"],
            "followup_running_at_arrival": running_at_arrival, "followup_state": state,
            "followup_attempts": attempts, "followup_s": round(seconds or 0.0, 2),
            "resumed_from": (result or {}).get("resumed_from")}


def idle_latency(client: Client) -> float:
    t0 = time.perf_counter()
    client.wait(client.submit(PROBE, params={"max_tokens": 16}), timeout=600)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = packaged_path(DEFAULT_MODEL)
    rng = random.Random(args.seed)
    cluster = start_cluster(durable=True)
    rows: list[dict[str, Any]] = []
    idle: list[float] = []
    worker: subprocess.Popen | None = None
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t_start = time.monotonic()
    try:
        dsn = pgreflect_database(cluster)
        register(dsn, "m", str(model), verified_sha256(model))
        ring = keyring()
        no_followups(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE reflect.settings SET value = '\"all\"' WHERE key = 'followups_scope'")
        env = cli_env(cluster, dsn, ring)
        client = Client(cluster.dsn(user="pgreflect_app"), keyring=ring)
        for r in range(args.rounds):
            modes = ("on", "off") if r % 2 == 0 else ("off", "on")
            for mode in modes:
                worker = subprocess.Popen([sys.executable, "-m", "pgreflect.cli", "worker", "--threads",
                                           str(args.threads), "--poll-interval", "2", "--preempt-followups", mode],
                                          env=env)
                # Warm-up (the worker loads the model), with another question: the idle measurement then reuses
                # no more of the prompt cache than the one after a follow-up does.
                client.wait(client.submit("Hello", params={"max_tokens": 8}), timeout=600)
                idle.append(idle_latency(client))
                kinds = KINDS if (r + (mode == "off")) % 2 == 0 else KINDS[::-1]
                for kind in kinds:
                    m = measure(dsn, client, kind, rng)
                    rows.append({"round": r, "preempt": mode, **m})
                    print(json.dumps(rows[-1]), flush=True)
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=120)
                worker = None
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=120)
        cluster.destroy()
    write(args, model.name, started, time.monotonic() - t_start, rows, idle)


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})" if values else "-"


def write(args: argparse.Namespace, model: str, started: str, took: float, rows: list[dict[str, Any]],
          idle: list[float]) -> None:
    lines = [
        "# A request that arrives during a follow-up: preemption on and off",
        "",
        f"Command: `.venv/bin/python bench/followup_preemption_bench.py --rounds {args.rounds}` (model {model}, "
        f"{args.threads} threads, worker defaults otherwise; {started}, {took / 60:.0f} min). The short request: "
        f"\"{PROBE}\" (16 tokens at most); the follow-up: on the answer to a worked arithmetic question (96 tokens "
        "at most), agreement with 3 samples or the grammar-constrained critique; the request arrives 2-8 s after "
        "the follow-up was claimed.",
        "",
        "Seconds, median (min-max) over the measurements:",
        "",
        "| follow-up running | preemption | n | request latency (s) | follow-up wall time, first claim to done (s) |",
        "|---|---|---|---|---|",
        f"| none (idle worker) | - | {len(idle)} | {_summary(idle)} | - |",
    ]
    for kind in KINDS:
        for mode in ("on", "off"):
            sel = [r for r in rows if r["kind"] == kind and r["preempt"] == mode]
            lines.append(f"| {kind} | {mode} | {len(sel)} | {_summary([r['latency_s'] for r in sel])} | "
                         f"{_summary([r['followup_s'] for r in sel])} |")
    lines += ["", "Each measurement:", "",
              "| round | preemption | follow-up | arrived after (s) | running then | latency (s) | follow-up attempts "
              "| resumed from sample | follow-up (s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {r['preempt']} | {r['kind']} | {r['delay_s']} | "
                     f"{'yes' if r['followup_running_at_arrival'] else 'no'} | {r['latency_s']} | "
                     f"{r['followup_attempts']} | {r['resumed_from'] if r['resumed_from'] is not None else '-'} | "
                     f"{r['followup_s']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / "followup-preemption"
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "idle_latency_s": idle}, indent=1) + "\n")


if __name__ == "__main__":
    main()
