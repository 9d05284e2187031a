"""Test fixtures: one real throwaway cluster per session (pg_cron, pgvector, pgcrypto, statement logging
on), a migrated template database, and a fresh database cloned from it for each test."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pgreflect.cluster import LocalCluster
from pgreflect.db import LOGIN_ROLES
from pgreflect.keys import Keyring, new_key, new_key_id
from pgreflect.migrate import migrate
from pgreflect.models import verified_sha256
from pgreflect.sql import query

from tiny_model import build_tiny_model, smollm2_path

TEMPLATE = "pgreflect_template"
CRON_DB = "pgreflect_cron"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Database:
    name: str
    cluster: LocalCluster

    def dsn(self, role: str = "admin") -> str:
        user = "postgres" if role == "admin" else LOGIN_ROLES[role][0]
        return self.cluster.dsn(user=user, dbname=self.name)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn(), autocommit=True)

    def scalar(self, sql: str, params: tuple | dict | None = None):  # type: ignore[no-untyped-def]
        with self.admin() as conn:
            row = conn.execute(sql, params).fetchone()
            return row[0] if row else None

    def env(self, keyring: Keyring) -> dict[str, str]:
        """Environment for a pgreflect subprocess pointed at this database."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGREFLECT_")}
        env.update({
            "PGREFLECT_DSN": self.dsn(), "PGREFLECT_APP_DSN": self.dsn("app"),
            "PGREFLECT_WORKER_DSN": self.dsn("worker"), "PGREFLECT_ANALYST_DSN": self.dsn("analyst"),
            "PGREFLECT_API_DSN": self.dsn("api"),
            "PGREFLECT_KEY": keyring.keys[keyring.current], "PGREFLECT_KEY_ID": keyring.current,
            "PYTHONUNBUFFERED": "1",
        })
        return env


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    # Short path: Unix socket paths are limited to ~107 bytes. World-traversable for the postgres user.
    root = Path(tempfile.mkdtemp(prefix="pgr-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_root: Path) -> Path:
    return build_tiny_model(tmp_root / "tiny.gguf")


@pytest.fixture(scope="session")
def cluster(tmp_root: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(
        directory=tmp_root / "pg", port=free_port(), dbname=TEMPLATE, cron_database=CRON_DB,
        extra_settings={
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "log_statement": "'all'", "log_min_error_statement": "info", "log_connections": "on",
            "cron.log_statement": "on",
        },
    )
    c.init()
    c.start()
    c.wait_ready()
    yield c
    c.destroy()


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    key_id = new_key_id()
    return Keyring(current=key_id, keys={key_id: new_key()})


@pytest.fixture(scope="session")
def template_db(cluster: LocalCluster, tiny_model: Path) -> str:
    cluster.ensure_database(TEMPLATE)
    migrate(cluster.dsn(dbname=TEMPLATE))
    with psycopg.connect(cluster.dsn(dbname=TEMPLATE), autocommit=True) as conn:
        for login, group in LOGIN_ROLES.values():
            conn.execute(query("ensure_login_role"), {"login": login, "group_role": group})
        register(conn, "tiny", tiny_model, activate=True)
        register(conn, "smollm2", smollm2_path())
        register_noop(conn, "noop")
        # Follow-ups (critique, agreement) cost extra generations: off unless a test turns them on.
        conn.execute("UPDATE reflect.settings SET value = '0' WHERE key IN ('critique_fraction', 'agreement_fraction')")
        # ... and when a test turns them on, the fractions alone decide (the default scope is tested on its own).
        conn.execute("UPDATE reflect.settings SET value = '\"all\"' WHERE key = 'followups_scope'")
        # Exploring memory policies makes a random 5% of requests differ: off unless a test turns it on.
        conn.execute("UPDATE reflect.settings SET value = '0' WHERE key = 'memory_explore_share'")
    return TEMPLATE


def register(conn: psycopg.Connection, name: str, path: Path, activate: bool = False, n_ctx: int = 4096) -> None:
    conn.execute(query("register_model"), {
        "name": name, "gguf_path": str(path), "sha256": verified_sha256(path), "source": f"path:{path}",
        "n_ctx": n_ctx, "parent": None, "activate": activate, "backend": "llama",
    })


def register_noop(conn: psycopg.Connection, name: str, activate: bool = False) -> None:
    """A version only the noop backend serves: queue tests submit to it (model_version="noop")."""
    conn.execute(query("register_model"), {
        "name": name, "gguf_path": "noop", "sha256": "0" * 64, "source": "noop", "n_ctx": 4096, "parent": None,
        "activate": activate, "backend": "noop",
    })


_counter = itertools.count()


@pytest.fixture
def db(cluster: LocalCluster, template_db: str) -> Iterator[Database]:
    name = f"t_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(cluster.dsn(dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield Database(name, cluster)
    with psycopg.connect(cluster.dsn(dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
