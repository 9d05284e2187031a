"""Web accounts: `pgreflect users add NAME --role reviewer|analyst` makes the login person_NAME in that group and a
password (made by the database, printed once, kept only as a bcrypt hash). The server checks the password with its
own login, then acts as person_NAME, so every decryption and verdict is recorded under the person's name."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgreflect.errors import translate
from pgreflect.sql import query

GROUPS = {"reviewer": "reflect_reviewer", "analyst": "reflect_analyst"}


def add(name: str, role: str, admin_dsn: str) -> dict[str, Any]:
    """{"name", "login", "role", "password"}; a person who exists gets a new password."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        try:
            with conn.transaction():
                login, password = conn.execute(query("set_person"), {"name": name, "role": role}).fetchone()
                conn.execute(query("ensure_login_role"), {"login": login, "group_role": GROUPS[role]})
        except psycopg.Error as exc:
            raise translate(exc) from exc
    return {"name": name, "login": login, "role": role, "password": password}


def list_people(admin_dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("people")).fetchall()


def revoke(name: str, admin_dsn: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        try:
            (login,) = conn.execute(query("revoke_person"), {"name": name}).fetchone()
        except psycopg.Error as exc:
            raise translate(exc) from exc
        conn.execute(query("terminate_login_sessions"), {"login": login})
    return login
