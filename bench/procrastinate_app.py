"""The procrastinate side of bench/queue_bench.py: one no-op task."""

import os

import procrastinate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("BENCH_PROCRASTINATE_DSN", ""))
)


@app.task(name="noop")
def noop() -> None:
    return None
