"""What the HTTP API adds: a chat completion through `pgreflect serve` against the same question over SQL (the
app path: INSERT into reflect.app_requests as the app's login, LISTEN request_done, read the answer), at the same
concurrency, side by side in one run, with the no-op backend (so the model's time does not hide the layer).

    .venv/bin/python bench/api_overhead_bench.py [--requests 1000] [--concurrency 1,16] [--rounds 3]

Rounds alternate SQL and HTTP so that drift on this noisy 2-core machine falls on both. The load generator, the
worker, the server and PostgreSQL share the two cores, as they would on one small box. Writes
bench/results/api.md (newest run first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pgreflect.client import Client  # noqa: E402
from pgreflect.keys import Keyring, save_keyring  # noqa: E402

from bench_cluster import cli_env, free_port, keyring, no_followups, pgreflect_database, register, start_cluster  # noqa: E402

QUESTION = "no-op"


def sql_round(dsn: str, ring: Keyring, n: int, concurrency: int) -> tuple[list[float], float]:
    """n questions over SQL from `concurrency` threads, each with its own app connection and listener."""
    latencies: list[float] = []
    lock = threading.Lock()
    left = [n]

    def run() -> None:
        with Client(dsn, keyring=ring, application_name="bench-sql") as c:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                t0 = time.perf_counter()
                rid = c.submit(QUESTION, params={"max_tokens": 1}, model_version="noop", caller="bench")
                row = c.wait(rid, timeout=60)
                assert row["state"] == "succeeded", row
                with lock:
                    latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


async def direct_round(api_dsn: str, key: str, n: int, concurrency: int) -> tuple[list[float], float]:
    """The server's own request path (submit, wait on the shared LISTEN, shape the completion) called in-process:
    everything `pgreflect serve` does except HTTP, so HTTP minus this is what the HTTP layer adds."""
    from pgreflect.service import openai_shape as shape
    from pgreflect.service.server import Api, ServeConfig

    api = Api(ServeConfig(api_dsn=api_dsn))
    latencies: list[float] = []
    left = [n]
    body = {"model": "noop", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1, "user": "bench"}
    async with api.lifespan(None):  # type: ignore[arg-type]
        assert api.keys is not None
        identity = await api.keys.identify(key)
        assert identity is not None
        pool = await api.connections.app(identity.app)

        async def run() -> None:
            while left[0] > 0:
                left[0] -= 1
                t0 = time.perf_counter()
                chat = shape.parse_chat(json.loads(json.dumps(body)))
                row = await api._wait(pool, await api._submit(pool, chat, None))
                json.dumps(shape.completion(row), default=str)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(run() for _ in range(concurrency)))
        return latencies, time.perf_counter() - t0


async def http_round(url: str, key: str, n: int, concurrency: int) -> tuple[list[float], float]:
    """n POST /v1/chat/completions from `concurrency` keep-alive connections. The client is a few lines of HTTP/1.1
    over asyncio streams, so the load generator spends next to nothing per request on the shared cores (httpx, under
    the openai client, spends ~0.8 ms: see openai_client_round)."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    payload = json.dumps({"model": "noop", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1,
                          "user": "bench"}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload
    latencies: list[float] = []
    left = [n]

    async def run() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while left[0] > 0:
                left[0] -= 1
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(concurrency)))
    return latencies, time.perf_counter() - t0


def openai_client_round(url: str, key: str, n: int) -> list[float]:
    """One caller with the official openai client: what a user's client library adds on top of the server."""
    import openai

    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.chat.completions.create(model="noop", max_tokens=1, user="bench",
                                       messages=[{"role": "user", "content": QUESTION}])
        latencies.append(time.perf_counter() - t0)
    return latencies


def p(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def bootstrap_diff(a: list[float], b: list[float], q: float, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of percentile_q(b) - percentile_q(a), in ms (resampling each path's latencies)."""
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a) * 1000, np.asarray(b) * 1000
    d = [np.percentile(rng.choice(xb, xb.size), q) - np.percentile(rng.choice(xa, xa.size), q) for _ in range(reps)]
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000, help="per path and round")
    ap.add_argument("--concurrency", default="1,16", help="requests in flight, comma-separated levels")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    cluster = start_cluster()
    procs: list[subprocess.Popen] = []
    try:
        dsn = pgreflect_database(cluster)
        register(dsn, "noop", "noop", "0" * 64, backend="noop")
        no_followups(dsn)
        ring = keyring()
        home = Path(tempfile.mkdtemp(prefix="pgrb-home-"))
        save_keyring(ring, home / "keyring.json")
        env = {k: v for k, v in cli_env(cluster, dsn, ring).items() if k not in ("PGREFLECT_KEY", "PGREFLECT_KEY_ID")}
        env.update({"PGREFLECT_HOME": str(home), "PGREFLECT_KEYRING": str(home / "keyring.json"),
                    "PGREFLECT_API_DSN": cluster.dsn(user="pgreflect_api", dbname="bench")})
        out = subprocess.run([sys.executable, "-m", "pgreflect.cli", "apikeys", "create", "bench", "--json"], env=env,
                             capture_output=True, text=True, check=True)
        key = json.loads(out.stdout)["key"]
        os.environ["PGREFLECT_HOME"] = str(home)  # where the in-process path finds the app's credentials
        creds = json.loads((home / "apps" / "bench.json").read_text())
        app_ring = Keyring(current=creds["key_id"], keys={creds["key_id"]: creds["key"]})

        logs = home / "logs"
        logs.mkdir(exist_ok=True)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pgreflect.cli", "worker", "--backend", "noop", "--memory", "off",
             "--p-true", "off", "--model-version", "noop", "--concurrency", "4"],
            env=env, stdout=open(logs / "worker.log", "wb"), stderr=subprocess.STDOUT))  # noqa: SIM115
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "pgreflect.cli", "serve", "--port", str(port)], env=env,
                                      stdout=open(logs / "serve.log", "wb"), stderr=subprocess.STDOUT))  # noqa: SIM115
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

        # warm-up: connections, pools, the key check, the worker's first claims
        api_dsn = env["PGREFLECT_API_DSN"]
        levels = [int(c) for c in args.concurrency.split(",")]
        sql_round(creds["dsn"], app_ring, 50, max(levels))
        asyncio.run(direct_round(api_dsn, key, 50, max(levels)))
        asyncio.run(http_round(url, key, 50, max(levels)))
        results = []
        for level in levels:
            lat: dict[str, list[float]] = {"client": [], "direct": [], "http": []}
            rounds = []
            paths = {"client": lambda: sql_round(creds["dsn"], app_ring, args.requests, level),  # noqa: B023
                     "direct": lambda: asyncio.run(direct_round(api_dsn, key, args.requests, level)),  # noqa: B023
                     "http": lambda: asyncio.run(http_round(url, key, args.requests, level))}  # noqa: B023
            order = list(paths)
            for r in range(args.rounds):
                got = {}
                # each round starts with the next path, so drift (autovacuum, a growing table) falls on all of them
                for name in order[r % 3:] + order[:r % 3]:
                    got[name] = paths[name]()
                    lat[name] += got[name][0]
                rounds.append(tuple(len(got[n][0]) / got[n][1] for n in order) + tuple(p(got[n][0], 50) for n in order))
            results.append((level, lat, rounds))
        openai_lat = openai_client_round(url, key, args.requests)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        cluster.destroy()

    lines = [
        f"## Run of {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `.venv/bin/python bench/api_overhead_bench.py --requests {args.requests} --concurrency "
        f"{args.concurrency} --rounds {args.rounds}` (this 2-core machine; no-op backend, one worker with 4 request "
        "slots, memory and P(True) off; the load generator, worker, server and PostgreSQL share the cores). Paths: "
        "**direct** = the server's own request path called in-process without HTTP (async psycopg: an app-login "
        "pool, INSERT into reflect.app_requests, one shared LISTEN, the completion shaped as JSON); **HTTP** = "
        "`pgreflect serve` (access log on, as shipped), POST /v1/chat/completions over keep-alive connections from a "
        "minimal HTTP/1.1 client; **client** = SQL as "
        "`pgreflect.client.Client` does it (a thread, a connection and a LISTEN connection per caller).",
        "",
    ]
    for level, lat, rounds in results:
        direct, http = lat["direct"], lat["http"]
        lo50, hi50 = bootstrap_diff(direct, http, 50)
        lo95, hi95 = bootstrap_diff(direct, http, 95)
        rps = {name: float(np.mean([r[i] for r in rounds])) for i, name in enumerate(("client", "direct", "http"))}
        add50, add95 = p(http, 50) - p(direct, 50), p(http, 95) - p(direct, 95)
        lines += [
            f"### {level} request(s) in flight",
            "",
            "| path | requests | p50 ms | p95 ms | requests/s (mean of rounds) |",
            "|---|---|---|---|---|",
            *(f"| {name} | {len(lat[name])} | {p(lat[name], 50):.2f} | {p(lat[name], 95):.2f} | {rps[name]:.0f} |"
              for name in ("direct", "http", "client")),
            "",
            f"Added by the HTTP layer (HTTP against direct): p50 **{add50:+.2f} ms** [{lo50:+.2f}, {hi50:+.2f}], "
            f"p95 {add95:+.2f} ms [{lo95:+.2f}, {hi95:+.2f}] (bootstrap 95% intervals); throughput "
            f"{rps['http'] / rps['direct']:.2f}x. Target: at most +2 ms at p50: "
            f"**{'met' if add50 <= 2 else 'missed'}**.",
            "",
            "Per round (requests/s client, direct, HTTP; p50 ms client, direct, HTTP): "
            + "; ".join(", ".join(f"{v:.0f}" for v in r[:3]) + " | " + ", ".join(f"{v:.2f}" for v in r[3:])
                        for r in rounds),
            "",
        ]
    lines += [f"With the official `openai` client (one caller, {len(openai_lat)} requests): p50 "
              f"{p(openai_lat, 50):.2f} ms, p95 {p(openai_lat, 95):.2f} ms; the client library's own share is the "
              "difference from the HTTP row at 1 request in flight.", ""]
    out_file = HERE / "results" / "api.md"
    header = "# HTTP API overhead against the SQL path (no-op backend)\n\nNewest run first.\n\n"
    old = out_file.read_text().removeprefix(header) if out_file.exists() else ""
    out_file.write_text(header + "\n".join(lines) + "\n" + old)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
