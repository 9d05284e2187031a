"""Set-up: the local cluster (when no PGREFLECT_DSN), the schema, login roles, keyring and default model."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from pgreflect import keys
from pgreflect.db import LOGIN_ROLES, connect, dsns
from pgreflect.migrate import migrate
from pgreflect.sql import query

Say = Callable[[str], None]


def setup(say: Say = lambda _msg: None, model: bool = True, keyring: bool = True) -> None:
    """Cluster up (local mode), schema migrated, login roles, keyring (each key's verifier registered),
    default model registered. Idempotent: a second run only checks."""
    if keyring:
        ring = keys.ensure_keyring()
        say(f"keyring ready (current key id {ring.current})")
    d = dsns()
    if d.local:
        from pgreflect.cluster import LocalCluster

        cluster = LocalCluster()
        if cluster.init():
            say(f"created cluster in {cluster.directory}")
        if cluster.start():
            say(f"started PostgreSQL (socket {cluster.socket_dir}, port {cluster.port})")
        else:
            apply_changed_settings(cluster, say)
        cluster.wait_ready()
        cluster.ensure_database()
    result = migrate(d.admin)
    say(f"migrations applied: {result.applied or 'none new'}; {len(result.functions)} function files")
    if d.local:
        with psycopg.connect(d.admin, autocommit=True) as conn:
            for login, group in LOGIN_ROLES.values():
                conn.execute(query("ensure_login_role"), {"login": login, "group_role": group})
    if keyring:
        connect(d.admin, application_name="pgreflect-setup").close()
    if model:
        name = register_packaged(d.admin, None)
        say(f"model version {name} registered")
        _say_calibrator(name, say)
        _ensure_retention(d.admin, say)


def _say_calibrator(name: str, say: Say) -> None:
    from pgreflect.meta import shipped
    from pgreflect.models import PACKAGED

    say(f"shipped calibrator installed for {name}" if shipped.document(PACKAGED[name].sha256) else
        f"no shipped calibrator for {name}: its confidence is uncalibrated until it has labels")


def _ensure_retention(admin_dsn: str, say: Say) -> None:
    """The gate needs a retention set; loading it needs the embedding model and the MMLU package."""
    from pgreflect.embeddings import embedding_available
    from pgreflect.improve import retention

    if retention.count(admin_dsn) > 0:
        return
    if not embedding_available():
        say("retention set not loaded (no embedding model installed): candidates cannot be promoted by the gate")
        return
    say(f"retention set: {retention.load(admin_dsn)} MMLU held-out questions loaded for the promotion gate")


def apply_changed_settings(cluster: object, say: Say) -> None:
    """A running cluster re-reads pg_hba.conf and pgreflect.conf; settings that need a restart (such as
    listen_addresses after an upgrade) get one."""
    cluster.reload()  # type: ignore[attr-defined]
    cluster.wait_ready()  # type: ignore[attr-defined]
    with psycopg.connect(cluster.dsn(dbname="postgres"), autocommit=True) as conn:  # type: ignore[attr-defined]
        pending = [r[0] for r in conn.execute(query("pending_restart"))]
    if pending:
        say(f"restarting PostgreSQL for {', '.join(pending)}")
        cluster.restart()  # type: ignore[attr-defined]


def register_packaged(admin_dsn: str, name: str | None, activate: bool = False) -> str:
    """Assembles a packaged model (if needed), registers it as a model version of the llama backend, and
    installs the calibrator pgreflect ships for its bytes, if any (pgreflect.meta.shipped)."""
    from pgreflect.flows import models
    from pgreflect.meta import shipped
    from pgreflect.models import DEFAULT_MODEL, PACKAGED, packaged_path

    name = name or DEFAULT_MODEL
    model = PACKAGED[name]
    path = packaged_path(name)
    models.register(name, str(path), model.sha256, model.source, n_ctx=model.n_ctx, activate=activate,
                    admin_dsn=admin_dsn)
    shipped.install(admin_dsn, name, model.sha256)
    return name
