"""What reading each signal of reflect.signal_auroc costs per labelled answer, three ways, on a synthetic table
shaped like reflect.labelled_answers (100,000 rows, 12 signal columns): the columns listed in the query, the
listed columns joined to an orientation function like reflect.signal_orientations_v1 (SQL, SET search_path), and
each column read by name from to_jsonb(row). The numbers behind the view's form (db/functions/800_views.sql).

    .venv/bin/python bench/signal_view_cost.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import psycopg  # noqa: E402

from bench_cluster import start_cluster  # noqa: E402

SIGNALS = ["logprob_mean", "logprob_min", "logprob_norm", "p_true", "p_answer", "rule_failed", "agreement",
           "critique_verdict", "option_max_prob", "option_margin", "option_entropy", "probe"]
MISSING = {"agreement", "critique_verdict", "probe"}  # NULL on most answers, as served


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    columns = ", ".join(f"{'NULL::float8' if s in MISSING else 'random()'} AS {s}" for s in SIGNALS)
    orientations = ", ".join(f"('{s}', {'false' if s in ('rule_failed', 'option_entropy') else 'true'})"
                             for s in SIGNALS)
    listed = ", ".join(f"('{s}', la.{s})" for s in SIGNALS)
    oriented = "CASE WHEN o.higher_is_right THEN -v.value ELSE v.value END"
    queries = {
        "columns listed": f"SELECT s.signal, s.score FROM t la CROSS JOIN LATERAL (VALUES {listed}) s(signal, score)",
        "listed, joined to the orientation function": (
            f"SELECT v.signal, {oriented} FROM t la CROSS JOIN LATERAL (VALUES {listed}) v(signal, value) "
            "JOIN orientations() o USING (signal)"),
        "read by name from to_jsonb(row)": (
            "SELECT o.signal, (to_jsonb(la) ->> o.signal)::float8 FROM t la CROSS JOIN orientations() o"),
    }
    cluster = start_cluster()
    try:
        with psycopg.connect(cluster.dsn(dbname="postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE t AS SELECT i AS request_id, (i % 2 = 0) AS is_correct, random() AS "
                         f"confidence, {columns} FROM generate_series(1, {args.rows}) i")
            conn.execute("CREATE FUNCTION orientations() RETURNS TABLE (signal text, higher_is_right boolean) "
                         f"LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ VALUES {orientations} $$")
            conn.execute("VACUUM ANALYZE t")
            best: dict[str, float] = {}
            for _ in range(3):
                for name, q in queries.items():
                    t0 = time.perf_counter()
                    conn.execute(f"SELECT count(score), sum(score) FROM ({q}) x(signal, score)").fetchone()
                    best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    finally:
        cluster.destroy()
    print(f"{args.rows} rows, {len(SIGNALS)} signals, best of 3 ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    for name, seconds in best.items():
        print(f"  {name:45} {seconds:6.3f} s  {seconds / args.rows * 1e6:5.1f} us a row")


if __name__ == "__main__":
    main()
