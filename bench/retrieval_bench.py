"""Memory retrieval benchmark: HNSW (the index reflect.memories uses) against exact search.

    .venv/bin/python bench/retrieval_bench.py [--sizes 10000 100000] [--queries 200]

Vectors: 384-dimensional, unit length, drawn around 2,000 random centres (a stand-in for sentence
embeddings of many related questions; uniform random vectors would be harder than real data, identical
copies easier). Queries come from the same distribution but are not in the table. For each size: HNSW
build time, p50/p95 latency of the top-10 query through the index (the ORDER BY embedding <=> q LIMIT 10
that reflect.recall_v1 runs), the same for exact search (index scans off), and recall@10 of HNSW against
exact, at hnsw.ef_search 40 (pgvector's default) and 100. Results: bench/results/retrieval.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cluster import start_cluster  # noqa: E402

DIM = 384


def vectors(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    picks = centres[rng.integers(0, len(centres), size=n)]
    v = picks + rng.normal(scale=0.6 / np.sqrt(DIM), size=(n, DIM))  # noise of norm ~0.6 around a unit centre
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2000, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    queries = vectors(rng, centres, args.queries)
    cluster = start_cluster()
    rows = []
    try:
        cluster.ensure_database("bench")
        with psycopg.connect(cluster.dsn(dbname="bench"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            for size in args.sizes:
                conn.execute("DROP TABLE IF EXISTS mem")
                conn.execute(f"CREATE TABLE mem (id bigint PRIMARY KEY, embedding vector({DIM}) NOT NULL)")
                data = vectors(rng, centres, size)
                with conn.cursor().copy("COPY mem (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "vector"])
                    for i, v in enumerate(data):
                        copy.write_row((i, v))
                conn.execute("SET maintenance_work_mem = '1GB'")
                t0 = time.perf_counter()
                conn.execute("CREATE INDEX ON mem USING hnsw (embedding vector_cosine_ops)")
                build_s = time.perf_counter() - t0
                conn.execute("ANALYZE mem")
                sql = "SELECT id FROM mem ORDER BY embedding <=> %s LIMIT 10"
                exact, exact_ms = [], []
                conn.execute("SET enable_indexscan = off")
                for q in queries:
                    t0 = time.perf_counter()
                    exact.append({r[0] for r in conn.execute(sql, (q,))})
                    exact_ms.append((time.perf_counter() - t0) * 1000)
                conn.execute("SET enable_indexscan = on")
                conn.execute("SET enable_seqscan = off")  # small tables would otherwise be scanned exactly
                for ef in (40, 100):
                    conn.execute(f"SET hnsw.ef_search = {ef}")
                    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, (queries[0],)))
                    assert "mem_embedding_idx" in plan, plan
                    ms, recall = [], []
                    for q, truth in zip(queries, exact, strict=True):
                        t0 = time.perf_counter()
                        got = {r[0] for r in conn.execute(sql, (q,))}
                        ms.append((time.perf_counter() - t0) * 1000)
                        recall.append(len(got & truth) / 10)
                    rows.append((size, ef, build_s, pct(ms, 50), pct(ms, 95), float(np.mean(recall)),
                                 pct(exact_ms, 50), pct(exact_ms, 95)))
                    print(rows[-1], file=sys.stderr)
    finally:
        cluster.destroy()
    text = "\n".join([
        f"Command: `.venv/bin/python bench/retrieval_bench.py --sizes {' '.join(map(str, args.sizes))} "
        f"--queries {args.queries}`  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; pgvector 0.8.0 HNSW (m 16, ef_construction 64,"
        " cosine), 384 dimensions, 2 cores; latency measured from Python, round trip included.",
        "",
        "| rows | ef_search | HNSW build s | HNSW p50 ms | HNSW p95 ms | recall@10 | exact p50 ms | exact p95 ms |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {s:,} | {ef} | {b:.1f} | {p50:.2f} | {p95:.2f} | {rc:.3f} | {e50:.1f} | {e95:.1f} |"
          for s, ef, b, p50, p95, rc, e50, e95 in rows],
    ]) + "\n"
    print(text)
    (HERE / "results" / "retrieval.md").write_text(text)


if __name__ == "__main__":
    main()
