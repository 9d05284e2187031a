"""The openai backend's cost: the same prompts to the same OpenAI-compatible server, called directly (the official
`openai` client, `concurrency` threads, no log-probabilities: what a user gets without pgreflect) and through
pgreflect (INSERT into reflect.app_requests, one `pgreflect worker --backend openai --concurrency C` process,
answers read back), at each concurrency, alternating, in one run.

    .venv/bin/python bench/remote_backend_bench.py [--model PATH.gguf] [--requests 24] [--max-tokens 48]
        [--concurrency 1,4,8] [--rounds 2] [--p-true off|on]

The server is llama-cpp-python's `llama_cpp.server` on loopback (SmolLM2-135M by default), so on this 2-core
machine it shares the cores with PostgreSQL, the worker and the load generator, and it answers one request at a
time (no batching): a GPU server that batches is where concurrency pays. Memory retrieval is off (it embeds
each prompt on the worker's CPU, which here is the server's CPU too); P(True) is off unless asked (it is one more
call to the server per answer). Writes bench/results/remote.md (newest run first).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import openai
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pgreflect.backends.openai_server import alternatives_asked  # noqa: E402
from pgreflect.client import Client  # noqa: E402
from pgreflect.sql import query  # noqa: E402

from bench_cluster import cli_env, free_port, keyring, no_followups, pgreflect_database, start_cluster  # noqa: E402

PROMPTS = [f"Write two sentences about {topic}." for topic in (
    "rivers", "mountains", "bread", "bicycles", "the moon", "libraries", "tea", "winter", "bees", "trains",
    "clocks", "maps", "rain", "chess", "coffee", "lighthouses", "owls", "bridges", "music", "gardens",
    "volcanoes", "paper", "salt", "wind")]


def smollm2() -> str:
    from pgreflect.models import PACKAGED, package_file

    m = PACKAGED["smollm2-135m-instruct-q4_1"]  # the packaged SmolLM2 GGUF (requirements-models.lock)
    return str(package_file(m.modules[0], m.relative_paths[0]))


def start_server(model: str, port: int, log: Path, llama_server: str | None) -> subprocess.Popen:
    """llama-cpp-python's llama_cpp.server, or llama.cpp's own C++ `llama-server` when its path is given."""
    out = open(log, "wb")  # noqa: SIM115
    if llama_server:
        cmd = [llama_server, "-m", model, "--alias", "m", "--host", "127.0.0.1", "--port", str(port), "-c", "8192",
               "-np", "4"]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--model_alias", "m", "--host",
               "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--interrupt_requests", "False"]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"llama_cpp.server did not start: {log}")


def direct(url: str, prompts: list[str], concurrency: int, max_tokens: int,
           logprobs: bool = False) -> tuple[float, int]:
    """Seconds for all prompts and completion tokens, `concurrency` threads each with its own client. With
    `logprobs`, each call asks what the openai backend asks (streamed, log-probabilities, 10 alternatives)."""
    todo, lock, tokens = list(prompts), threading.Lock(), [0]

    def run() -> None:
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        while True:
            with lock:
                if not todo:
                    return
                prompt = todo.pop()
            messages = [{"role": "user", "content": prompt}]
            if logprobs:
                n = 0
                for chunk in c.chat.completions.create(model="m", messages=messages, max_tokens=max_tokens,
                                                       temperature=0, stream=True, logprobs=True,
                                                       top_logprobs=alternatives_asked(prompt)):
                    if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                        n += len(chunk.choices[0].logprobs.content)
            else:
                n = c.chat.completions.create(model="m", messages=messages, max_tokens=max_tokens,
                                              temperature=0).usage.completion_tokens
            with lock:
                tokens[0] += n

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, tokens[0]


def through_pgreflect(app_dsn: str, ring, prompts: list[str], max_tokens: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """All prompts submitted at once to the running worker; seconds from the first submit to the last answer."""
    with Client(app_dsn, keyring=ring) as c:
        t0 = time.perf_counter()
        ids = [c.submit(p, params={"max_tokens": max_tokens, "temperature": 0, "memory": False},
                        model_version="remote") for p in prompts]
        rows = [c.wait(rid, timeout=600) for rid in ids]
        took = time.perf_counter() - t0
    assert all(r["state"] == "succeeded" for r in rows), [r["last_error"] for r in rows]
    return took, sum(int(r["tokens"] or 0) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="GGUF served by llama_cpp.server (default: packaged SmolLM2)")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--p-true", default="off", choices=["on", "off"])
    ap.add_argument("--llama-server", default=None,
                    help="path of llama.cpp's C++ llama-server (4 slots, continuous batching), not llama_cpp.server")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    prompts = (PROMPTS * (args.requests // len(PROMPTS) + 1))[: args.requests]
    model = args.model or smollm2()
    work = Path(tempfile.mkdtemp(prefix="pgr-remote-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    server = start_server(model, port, work / "server.log", args.llama_server)
    server_name = "llama.cpp's llama-server (4 slots)" if args.llama_server else "llama_cpp.server"
    cluster = start_cluster()
    try:
        dsn = pgreflect_database(cluster, "bench")
        no_followups(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(query("register_remote_model"), {"name": "remote", "base_url": url, "remote_model": "m",
                                                          "n_ctx": 2048, "parent": None, "activate": True})
        ring = keyring()
        env = {**os.environ, **cli_env(cluster, dsn, ring)}
        app_dsn = cluster.dsn(user="pgreflect_app", dbname="bench")
        direct(url, prompts[:2], 1, args.max_tokens)  # warm the server
        paths = ("direct", "direct+logprobs", "pgreflect")
        results: dict[int, dict[str, list[tuple[float, int]]]] = {c: {p: [] for p in paths} for c in levels}
        for level in levels:
            worker = subprocess.Popen([sys.executable, "-m", "pgreflect.cli", "worker", "--backend", "openai",
                                       "--concurrency", str(level), "--memory", "off", "--p-true", args.p_true,
                                       "--followups", "off", "--poll-interval", "0.2"], env=env,
                                      stdout=open(work / f"worker-{level}.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
            try:
                through_pgreflect(app_dsn, ring, prompts[:2], args.max_tokens)  # warm the worker
                for r in range(args.rounds):
                    for path in paths if r % 2 == 0 else paths[::-1]:
                        got = through_pgreflect(app_dsn, ring, prompts, args.max_tokens) if path == "pgreflect" \
                            else direct(url, prompts, level, args.max_tokens, logprobs=path != "direct")
                        results[level][path].append(got)
                        print(level, path, got, flush=True)
            finally:
                worker.terminate()
                worker.wait(timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
        cluster.destroy()

    lines = [f"## Run of {time.strftime('%Y-%m-%d %H:%M')} UTC", "",
             f"Command: `.venv/bin/python bench/remote_backend_bench.py --requests {args.requests} --max-tokens "
             f"{args.max_tokens} --concurrency {args.concurrency} --rounds {args.rounds} --p-true {args.p_true}"
             f"{' --llama-server PATH' if args.llama_server else ''}` "
             f"(this 2-core CPU machine; server: {server_name} with `{Path(model).name}` on loopback; "
             f"{args.requests} prompts per round and path, greedy; rounds alternate which path goes first).", "",
             "Paths: **direct** = the plain call a user makes (no log-probabilities); **direct+logprobs** = the "
             "call the openai backend makes (streamed, `logprobs`, with as many alternatives per token as it asks for "
             f"these prompts: {alternatives_asked(PROMPTS[0])}); **pgreflect** = "
             "INSERT -> answer through a worker. Ratios are of tokens/s (requests/s in brackets).", "",
             "| concurrency | direct tok/s | direct+logprobs tok/s | pgreflect tok/s | pgreflect / direct | "
             "pgreflect / direct+logprobs | per round (pgreflect / direct) |", "|---|---|---|---|---|---|---|"]

    def rate(runs: list[tuple[float, int]]) -> tuple[float, float]:
        seconds = sum(x[0] for x in runs)
        return sum(x[1] for x in runs) / seconds, len(runs) * args.requests / seconds

    for level in levels:
        (d, dr), (dl, dlr), (p, pr) = (rate(results[level][path]) for path in paths)
        per_round = ", ".join(f"{(pt / ps) / (dt / ds):.3f}" for (ds, dt), (ps, pt)
                              in zip(results[level]["direct"], results[level]["pgreflect"], strict=True))
        lines.append(f"| {level} | {d:.1f} | {dl:.1f} | {p:.1f} | **{p / d:.3f}** ({pr / dr:.3f}) | "
                     f"{p / dl:.3f} ({pr / dlr:.3f}) | {per_round} |")
    out = HERE / "results" / "remote.md"
    head = "# Remote backend (openai): pgreflect vs the same server called directly\n\n"
    old = out.read_text()[len(head):] if out.exists() else ""
    out.write_text(head + "\n".join(lines) + "\n\n" + old)
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)  # the server's and workers' logs (kept when the run fails)


if __name__ == "__main__":
    main()
