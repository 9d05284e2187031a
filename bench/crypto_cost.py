"""Cost of pgp_sym_encrypt/decrypt per call with iterated key stretching (s2k-mode=3, pgcrypto's default)
against salted-only (s2k-mode=1, what pgreflect uses: its keys are random 256-bit strings, not passwords).

    .venv/bin/python bench/crypto_cost.py [--n 2000]

Results (markdown) go to stdout and bench/results/crypto.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cluster import start_cluster  # noqa: E402

SQL = """SELECT count(public.pgp_sym_decrypt(public.pgp_sym_encrypt(repeat('x', 400) || g, %(key)s, %(opts)s),
                                            %(key)s))
         FROM generate_series(1, %(n)s) g"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    cluster = start_cluster()
    key = "k" * 43
    rows = []
    try:
        cluster.ensure_database("bench")
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
            for opts in ("cipher-algo=aes256, s2k-mode=3", "cipher-algo=aes256, s2k-mode=1") * 2:
                t0 = time.perf_counter()
                conn.execute(SQL, {"key": key, "opts": opts, "n": args.n})
                rows.append((opts, (time.perf_counter() - t0) / args.n * 1e6))
    finally:
        cluster.destroy()
    best = {o: min(us for oo, us in rows if oo == o) for o, _ in rows}
    m3, m1 = best["cipher-algo=aes256, s2k-mode=3"], best["cipher-algo=aes256, s2k-mode=1"]
    text = "\n".join([
        f"Command: `.venv/bin/python bench/crypto_cost.py --n {args.n}`  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; one encrypt + one decrypt of ~400 characters "
        "per row, best of two runs.",
        "",
        "| options | µs per encrypt+decrypt |",
        "|---|---|",
        f"| s2k-mode=3 (pgcrypto default: iterated) | {m3:.0f} |",
        f"| s2k-mode=1 (salted; pgreflect) | {m1:.0f} |",
        "",
        f"Ratio: s2k-mode=3 costs {m3 / m1:.1f}x s2k-mode=1.",
    ]) + "\n"
    print(text)
    (HERE / "results" / "crypto.md").write_text(text)


if __name__ == "__main__":
    main()
