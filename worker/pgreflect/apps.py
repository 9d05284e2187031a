"""Apps: a login role of reflect_app, a password, and an encryption key of its own, handed over in one file.

`pgreflect apps add NAME` creates the login `app_NAME` (password auth, scram-sha-256, over TCP), a key id
of its own (so no two apps ever share a key id, and one app's wrong key cannot touch another's rows),
adds that key to the keyring the workers read (workers pick up new keys without a restart), and writes
everything the app needs to one credentials file readable only by its owner:
    <home>/apps/NAME.json   {"name", "login", "dsn" (with the password), "key_id", "key"}
The password and the key are printed nowhere else. `--os-user` hands the file to the OS user the app
runs as.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgreflect.errors import InvalidInput, NotFound
from pgreflect.keys import Keyring, install_keys, load_keyring, new_key, save_keyring
from pgreflect.paths import home
from pgreflect.sql import query

APP_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


@dataclass(frozen=True)
class AppCredentials:
    name: str
    login: str
    dsn: str  # with the password
    key_id: str
    key: str
    file: Path

    def public(self) -> dict[str, Any]:
        """What may be printed: no password, no key."""
        return {"name": self.name, "login": self.login, "dsn": redact_password(self.dsn),
                "key_id": self.key_id, "credentials_file": str(self.file),
                "how_to_get_the_key": f"read \"key\" (and the full \"dsn\") from {self.file}, readable only by "
                                      "its owner; never pass the key on a command line"}


def redact_password(dsn: str) -> str:
    return re.sub(r"password=\S+", "password=<in the credentials file>", dsn)


def credentials_path(name: str) -> Path:
    return home() / "apps" / f"{name}.json"


def app_login(name: str) -> str:
    return f"app_{name}"


def _app_key_id(name: str) -> str:
    return f"a_{name[:22]}_{secrets.token_hex(3)}"  # within the 32 characters a key id may have


def add_app(name: str, *, admin_dsn: str, dsn_for: Any, os_user: str | None = None,
            keyring_file: Path | None = None) -> AppCredentials:
    """Creates (or re-issues) the app. `dsn_for(login, password)` builds the connection string the app
    uses (the local cluster: loopback TCP)."""
    if not APP_NAME.match(name or ""):
        raise InvalidInput(f"app name must match {APP_NAME.pattern}")
    if os.environ.get("PGREFLECT_KEY"):
        raise InvalidInput("apps add needs the keyring file (PGREFLECT_KEY holds a single key): unset it")
    uid = gid = None
    if os_user is not None:
        try:
            entry = pwd.getpwnam(os_user)
        except KeyError:
            raise InvalidInput(f"no OS user named {os_user!r}") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    ring = load_keyring(keyring_file)
    login = app_login(name)
    password = secrets.token_urlsafe(24)
    key_id, key = _app_key_id(name), new_key()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(query("ensure_login_role"), {"login": login, "group_role": "reflect_app"})
            # The password leaves this process only as a scram verifier (as psql's \password does), so
            # statement logging shows a salted hash, never the password.
            verifier = conn.pgconn.encrypt_password(password.encode(), login.encode(), b"scram-sha-256")
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(login), sql.Literal(verifier.decode())))
            conn.execute(query("app_register"), {"name": name, "login": login, "key_id": key_id})
        install_keys(conn, Keyring(current=key_id, keys={key_id: key}))  # registers the key's verifier
    ring.keys[key_id] = key
    save_keyring(ring, keyring_file)
    creds = AppCredentials(name, login, dsn_for(login, password), key_id, key, credentials_path(name))
    _write_private(creds.file, json.dumps({"name": name, "login": login, "dsn": creds.dsn, "key_id": key_id,
                                           "key": key}, indent=2) + "\n", uid, gid)
    return creds


def _write_private(path: Path, text: str, uid: int | None, gid: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o711)  # others may reach a file handed to them, not list the directory
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if uid is not None and gid is not None:
        os.chown(tmp, uid, gid)
    os.replace(tmp, path)


def list_apps(admin_dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        cols = ["name", "login", "key_id", "created_at", "revoked_at"]
        return [dict(zip(cols, row, strict=True)) for row in conn.execute(query("app_list"))]


def revoke_app(name: str, admin_dsn: str) -> str:
    """Stops the app's login from connecting (NOLOGIN, sessions ended). Its rows and key stay, so its
    history remains readable to workers and reviewers."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(query("app_revoke"), {"name": name}).fetchone()
        if row is None:
            raise NotFound(f"no active app named {name!r}")
        login = row[0]
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(login)))
        conn.execute(query("terminate_login_sessions"), {"login": login})
    credentials_path(name).unlink(missing_ok=True)
    return login



def dsn_builder() -> Any:
    """How apps reach the database: the local cluster over loopback TCP with their password; with
    PGREFLECT_DSN (an existing server), the admin DSN's host, port, database and sslmode."""
    from pgreflect.db import dsns

    d = dsns()
    if d.local:
        from pgreflect.cluster import LocalCluster

        cluster = LocalCluster()
        return lambda login, password: cluster.tcp_dsn(login, password)
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    base = {k: v for k, v in conninfo_to_dict(d.admin).items() if k in ("host", "port", "dbname", "sslmode")}
    return lambda login, password: make_conninfo(**base, user=login, password=password)
