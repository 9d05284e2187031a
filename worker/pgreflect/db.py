"""Connection strings per role, and connections that carry the session's encryption keys.

Local cluster (default): one login role per group role, all over the project's Unix socket:
    admin   postgres            (migrate, register models, rotate keys)
    app     pgreflect_app       (submit and read answers)
    worker  pgreflect_worker    (claim and complete through functions only)
    analyst pgreflect_analyst   (views without plaintext)
    api     pgreflect_api       (the HTTP server: verifies API keys and listens; it acts as each key's app)
With PGREFLECT_DSN set, an existing server is used instead, and every role's DSN defaults to it;
PGREFLECT_APP_DSN, PGREFLECT_WORKER_DSN, PGREFLECT_ANALYST_DSN and PGREFLECT_API_DSN override each one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg

from pgreflect.keys import Keyring, install_keys, load_keyring

LOGIN_ROLES = {"app": ("pgreflect_app", "reflect_app"),
               "worker": ("pgreflect_worker", "reflect_worker"),
               "analyst": ("pgreflect_analyst", "reflect_analyst"),
               "api": ("pgreflect_api", "reflect_api")}


@dataclass(frozen=True)
class Dsns:
    admin: str
    app: str
    worker: str
    analyst: str
    api: str
    local: bool


def dsns() -> Dsns:
    external = os.environ.get("PGREFLECT_DSN")
    if external:
        base = {"admin": external, "app": external, "worker": external, "analyst": external, "api": external}
        local = False
    else:
        from pgreflect.cluster import LocalCluster

        cluster = LocalCluster()
        base = {"admin": cluster.dsn()} | {r: cluster.dsn(user=login) for r, (login, _) in LOGIN_ROLES.items()}
        local = True
    for role in LOGIN_ROLES:
        base[role] = os.environ.get(f"PGREFLECT_{role.upper()}_DSN", base[role])
    return Dsns(local=local, **base)


def connect(dsn: str, *, application_name: str = "pgreflect", keyring: Keyring | None = None,
            with_keys: bool = True, autocommit: bool = True, **kwargs: object) -> psycopg.Connection:
    """A connection with every key of the keyring loaded into its session (unless with_keys=False)."""
    conn = psycopg.connect(dsn, autocommit=autocommit, application_name=application_name, **kwargs)
    if with_keys:
        try:
            install_keys(conn, keyring or load_keyring())
        except BaseException:
            conn.close()
            raise
    return conn
