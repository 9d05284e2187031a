"""A throwaway cluster for benchmarks (same settings as the project's cluster, durability relaxed like the
test cluster so that disk flushes do not dominate a 2-core machine)."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import psycopg

from pgreflect.cluster import LocalCluster
from pgreflect.db import LOGIN_ROLES
from pgreflect.keys import Keyring, new_key, new_key_id
from pgreflect.migrate import migrate
from pgreflect.sql import query


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_on_sigterm() -> None:
    # SIGTERM runs the `finally` blocks (cluster.destroy) instead of leaving a server behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def start_cluster(durable: bool = False) -> LocalCluster:
    _exit_on_sigterm()
    root = Path(tempfile.mkdtemp(prefix="pgrb-", dir="/tmp"))
    root.chmod(0o755)
    atexit.register(shutil.rmtree, root, True)  # after cluster.destroy() has stopped the server
    extra = {} if durable else {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    cluster = LocalCluster(directory=root / "pg", port=free_port(), dbname="bench", extra_settings=extra)
    cluster.init()
    cluster.start()
    cluster.wait_ready()
    return cluster


def pgreflect_database(cluster: LocalCluster, name: str = "bench") -> str:
    cluster.ensure_database(name)
    dsn = cluster.dsn(dbname=name)
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for login, group in LOGIN_ROLES.values():
            conn.execute(query("ensure_login_role"), {"login": login, "group_role": group})
    return dsn


def register(dsn: str, name: str, path: str, sha256: str, n_ctx: int = 4096, backend: str = "llama") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query("register_model"), {"name": name, "gguf_path": path, "sha256": sha256,
                                               "source": f"path:{path}", "n_ctx": n_ctx, "parent": None,
                                               "activate": True, "backend": backend})


def keyring() -> Keyring:
    key_id = new_key_id()
    return Keyring(current=key_id, keys={key_id: new_key()})


def no_followups(dsn: str) -> None:
    """No critique / agreement follow-ups (extra generations that would compete for the cores) and no memory
    exploration (a random 5% of requests under another memory policy would blur what a benchmark compares)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE reflect.settings SET value = '0' WHERE key IN ('critique_fraction', 'agreement_fraction')")
        conn.execute("UPDATE reflect.settings SET value = '0' WHERE key = 'memory_explore_share'")


def cli_env(cluster: LocalCluster, dsn: str, ring: Keyring) -> dict[str, str]:
    """The environment for `pgreflect` commands against a bench cluster: the administrator, app and worker
    logins, one encryption key, warnings only."""
    return {**os.environ, "PGREFLECT_DSN": dsn, "PGREFLECT_APP_DSN": cluster.dsn(user="pgreflect_app"),
            "PGREFLECT_WORKER_DSN": cluster.dsn(user="pgreflect_worker"),
            "PGREFLECT_KEY": ring.keys[ring.current], "PGREFLECT_KEY_ID": ring.current,
            "PGREFLECT_LOG_LEVEL": "WARNING"}
