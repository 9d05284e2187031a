"""Queue benchmark: pgreflect (no-op backend) against procrastinate (no-op task), same server, same run.

    .venv/bin/python bench/queue_bench.py [--jobs 3000] [--concurrency 4] [--rate 40] [--trickle 400]

Drain: N jobs inserted first, then one worker process (concurrency C) started; jobs/s from the first
claim to the last completion. Pick-up latency: a worker waits idle while jobs arrive one by one at --rate
per second; insert->claim p50/p95 from each system's own event timestamps (server clock).
Results (markdown) go to stdout and bench/results/queue.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pgreflect.client import Client  # noqa: E402

from bench_cluster import keyring, no_followups, pgreflect_database, register, start_cluster  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def wait_until(pred, timeout: float = 600) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.05)


# -- pgreflect -------------------------------------------------------------------------------------------
class Pgreflect:
    name = "pgreflect"

    def __init__(self, cluster, concurrency: int):  # type: ignore[no-untyped-def]
        self.dsn = pgreflect_database(cluster, "bench_pgreflect")
        register(self.dsn, "noop", "noop", "0" * 64, backend="noop")
        no_followups(self.dsn)  # the queue alone
        with psycopg.connect(self.dsn, autocommit=True) as conn:  # the drain queues all its jobs before a worker
            conn.execute("UPDATE reflect.settings SET value = '0' WHERE key = 'max_queued_per_version'")
        self.cluster, self.concurrency, self.ring = cluster, concurrency, keyring()
        self.client = Client(cluster.dsn(user="pgreflect_app", dbname="bench_pgreflect"), keyring=self.ring)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGREFLECT_DSN": self.dsn,
                "PGREFLECT_WORKER_DSN": self.cluster.dsn(user="pgreflect_worker", dbname="bench_pgreflect"),
                "PGREFLECT_KEY": self.ring.keys[self.ring.current], "PGREFLECT_KEY_ID": self.ring.current,
                "PGREFLECT_LOG_LEVEL": "WARNING"}

    def start_worker(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pgreflect.cli", "worker", "--backend", "noop",
                                 "--concurrency", str(self.concurrency)], env=self.env())

    def insert(self, n: int) -> None:
        for _ in range(n):
            self.client.submit("no-op", params={"max_tokens": 1})

    def done(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute("SELECT count(*) FROM reflect.requests WHERE state = 'succeeded'").fetchone()[0]

    def window(self) -> tuple[float, float]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute("""SELECT extract(epoch FROM min(at) FILTER (WHERE event = 'claimed')),
                                          extract(epoch FROM max(at) FILTER (WHERE event = 'succeeded'))
                                   FROM reflect.request_events""").fetchone()

    def latencies(self, since_id: int) -> list[float]:
        with psycopg.connect(self.dsn) as conn:
            return [r[0] for r in conn.execute("""
                SELECT extract(epoch FROM c.at - s.at) * 1000 FROM reflect.request_events s
                JOIN reflect.request_events c ON c.request_id = s.request_id AND c.event = 'claimed'
                WHERE s.event = 'submitted' AND s.request_id > %s""", (since_id,))]

    def max_id(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute("SELECT coalesce(max(id), 0) FROM reflect.requests").fetchone()[0]


# -- procrastinate ---------------------------------------------------------------------------------------
class Procrastinate:
    name = "procrastinate 3.10"

    def __init__(self, cluster, concurrency: int):  # type: ignore[no-untyped-def]
        cluster.ensure_database("bench_procrastinate")
        self.dsn = cluster.dsn(dbname="bench_procrastinate")
        self.concurrency = concurrency
        os.environ["BENCH_PROCRASTINATE_DSN"] = self.dsn
        import procrastinate_app

        self.app = procrastinate_app.app
        self.task = procrastinate_app.noop
        self.app.open()
        self.app.schema_manager.apply_schema()

    def start_worker(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(HERE), "BENCH_PROCRASTINATE_DSN": self.dsn}
        return subprocess.Popen([sys.executable, "-m", "procrastinate", "--app=procrastinate_app.app", "--verbose",
                                 "worker", f"--concurrency={self.concurrency}"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def insert(self, n: int) -> None:
        for _ in range(n):
            self.task.defer()

    def done(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'").fetchone()[0]

    def window(self) -> tuple[float, float]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute("""SELECT extract(epoch FROM min(at) FILTER (WHERE type = 'started')),
                                          extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded'))
                                   FROM procrastinate_events""").fetchone()

    def latencies(self, since_id: int) -> list[float]:
        with psycopg.connect(self.dsn) as conn:
            return [r[0] for r in conn.execute("""
                SELECT extract(epoch FROM s.at - d.at) * 1000 FROM procrastinate_events d
                JOIN procrastinate_events s ON s.job_id = d.job_id AND s.type = 'started'
                WHERE d.type = 'deferred' AND d.job_id > %s""", (since_id,))]

    def max_id(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs").fetchone()[0]


def run(system, jobs: int, rate: float, trickle: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    system.insert(jobs)
    worker = system.start_worker()
    try:
        wait_until(lambda: system.done() >= jobs)
        start, end = system.window()
        drain = jobs / (float(end) - float(start))
        since = system.max_id()
        for _ in range(trickle):
            system.insert(1)
            time.sleep(1 / rate)
        wait_until(lambda: system.done() >= jobs + trickle)
        lat = system.latencies(since)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    return {"drain": drain, "p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95), "n_lat": len(lat)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--trickle", type=int, default=400)
    args = ap.parse_args()
    cluster = start_cluster()
    try:
        results = {}
        for system in (Pgreflect(cluster, args.concurrency), Procrastinate(cluster, args.concurrency)):
            results[system.name] = run(system, args.jobs, args.rate, args.trickle)
            print(system.name, results[system.name], file=sys.stderr)
    finally:
        cluster.destroy()
    p, q = results["pgreflect"], results["procrastinate 3.10"]
    lines = [
        f"Command: `.venv/bin/python bench/queue_bench.py --jobs {args.jobs} --concurrency {args.concurrency} "
        f"--rate {args.rate:g} --trickle {args.trickle}`  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, one worker process each, concurrency "
        f"{args.concurrency}, PostgreSQL 15 on the same throwaway cluster (fsync off), 2 cores.",
        "",
        "| system | drain jobs/s | insert->claim p50 ms | insert->claim p95 ms |",
        "|---|---|---|---|",
        *[f"| {name} | {r['drain']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} |" for name, r in results.items()],
        "",
        f"Ratios pgreflect/procrastinate: drain {p['drain'] / q['drain']:.2f}x, "
        f"p50 latency {p['p50'] / q['p50']:.2f}x, p95 latency {p['p95'] / q['p95']:.2f}x (lower latency is better).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results" / "queue.md").write_text(text)


if __name__ == "__main__":
    main()
