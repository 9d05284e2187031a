"""psql with encryption keys loaded as startup options (PGOPTIONS): never in a statement's text, so neither
the server log nor pg_stat_activity can show them, whatever the logging settings."""

from __future__ import annotations

import json
import os
import shutil

from pgreflect.db import dsns
from pgreflect.keys import load_keyring, startup_options


def psql_invocation(app: str | None, extra_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment for psql as the administrator (every key of the keyring) or as an app (its
    credentials file)."""
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    if app:
        from pgreflect.apps import credentials_path

        creds = json.loads(credentials_path(app).read_text())
        dsn, options = creds["dsn"], startup_options({creds["key_id"]: creds["key"]}, creds["key_id"])
    else:
        ring = load_keyring()
        dsn, options = dsns().admin, startup_options(ring.keys, ring.current)
    return [psql, dsn, *extra_args], {**os.environ, "PGOPTIONS": options}
