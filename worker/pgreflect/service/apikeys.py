"""API keys: `pgreflect apikeys create | list | revoke`. A key acts as one app (`pgreflect apps add`), so over
HTTP that app sees only its own requests, exactly as over SQL. The database makes the secret and keeps only its
bcrypt hash (reflect.create_api_key_v1); the key is returned once, here, and printed once by the CLI."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgreflect import apps
from pgreflect.errors import translate
from pgreflect.sql import query


def create(name: str, *, app: str | None, admin_dsn: str) -> dict[str, Any]:
    """{"id", "name", "app", "key", "app_created"}. The app is made first when it does not exist yet (its
    credentials file is what the server connects with)."""
    app = app or name
    known = {a["name"]: a for a in apps.list_apps(admin_dsn)}
    created = app not in known
    if created:
        apps.add_app(app, admin_dsn=admin_dsn, dsn_for=apps.dsn_builder())
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        try:
            key_id, key = conn.execute(query("create_api_key"), {"name": name, "app": app}).fetchone()
        except psycopg.Error as exc:
            raise translate(exc) from exc
    out = {"id": key_id, "name": name, "app": app, "key": key, "app_created": created}
    if not apps.credentials_path(app).exists():
        out["warning"] = (f"the server acts as app {app} with its credentials file, which is not at "
                          f"{apps.credentials_path(app)} on this machine: re-issue it with `pgreflect apps add {app}`")
    return out


def list_keys(admin_dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("api_key_list")).fetchall()


def revoke(name_or_id: str, admin_dsn: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        try:
            return conn.execute(query("revoke_api_key"), {"name_or_id": name_or_id}).fetchone()[0]
        except psycopg.Error as exc:
            raise translate(exc) from exc
