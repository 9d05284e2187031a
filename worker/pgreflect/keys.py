"""The keyring: encryption keys live in the client's environment, never in the database.

A keyring file (default .pgreflect/keyring.json, mode 0600) holds every key id that may still be needed
to read old rows, and which one encrypts new rows:
    {"current": "k20261126_3f9a", "keys": {"k20261126_3f9a": "<43 random url-safe characters>"}}
PGREFLECT_KEY (with PGREFLECT_KEY_ID, default "env") replaces the file with a single key.
Keys reach the server only as bind parameters of reflect.use_key_v1, and only after checking that the
server does not log bind parameters (log_parameter_max_length = 0).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from pgreflect.errors import InvalidInput, UnsafeLogging, translate
from pgreflect.paths import keyring_path
from pgreflect.sql import query

KEY_ID = re.compile(r"^[a-z0-9_]{1,32}$")


@dataclass
class Keyring:
    current: str
    keys: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key_id, key in self.keys.items():
            if not KEY_ID.match(key_id):
                raise InvalidInput(f"key id {key_id!r} must match {KEY_ID.pattern}")
            if len(key) < 32:
                raise InvalidInput(f"key {key_id!r} is shorter than 32 characters")
        if self.current not in self.keys:
            raise InvalidInput(f"current key id {self.current!r} is not in the keyring")

    def to_json(self) -> str:
        return json.dumps({"current": self.current, "keys": self.keys}, indent=2) + "\n"


def new_key_id() -> str:
    return time.strftime("k%Y%m%d_") + secrets.token_hex(3)


def new_key() -> str:
    return secrets.token_urlsafe(32)


def load_keyring(path: Path | None = None) -> Keyring:
    env_key = os.environ.get("PGREFLECT_KEY")
    if env_key:
        key_id = os.environ.get("PGREFLECT_KEY_ID", "env")
        return Keyring(current=key_id, keys={key_id: env_key})
    path = path or keyring_path()
    if not path.exists():
        raise FileNotFoundError(f"no keyring at {path}: run `pgreflect keys init` (or set PGREFLECT_KEY)")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidInput(f"keyring {path} is readable by others: chmod 600 {path}")
    data = json.loads(path.read_text())
    return Keyring(current=data["current"], keys=dict(data["keys"]))


def save_keyring(ring: Keyring, path: Path | None = None) -> Path:
    path = path or keyring_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(ring.to_json())
    os.replace(tmp, path)
    return path


def ensure_keyring(path: Path | None = None) -> Keyring:
    """The keyring, creating one with a fresh random key when none exists."""
    path = path or keyring_path()
    if os.environ.get("PGREFLECT_KEY") or path.exists():
        return load_keyring(path)
    key_id = new_key_id()
    ring = Keyring(current=key_id, keys={key_id: new_key()})
    save_keyring(ring, path)
    return ring


def add_key(path: Path | None = None) -> Keyring:
    """Adds a fresh key and makes it current; old keys stay so old rows remain readable until rotated."""
    ring = load_keyring(path)
    key_id = new_key_id()
    ring.keys[key_id] = new_key()
    ring.current = key_id
    save_keyring(ring, path)
    return ring


# Server settings under which a bind parameter's value (a key, a prompt) can reach the server log, and the
# value each must have. Statement texts are safe to log: pgreflect sends keys and text only as bind
# parameters, so a statement text holds "$1", never a value. debug_print_plan prints custom plans, in
# which parameters have become constants.
SAFE_LOGGING: dict[str, str] = {
    "log_parameter_max_length": "0",
    "log_parameter_max_length_on_error": "0",
    "debug_print_parse": "off",
    "debug_print_rewritten": "off",
    "debug_print_plan": "off",
}


def unsafe_logging(settings: dict[str, str]) -> list[str]:
    """The settings (name = value) that would let bind parameter values reach the server log."""
    return [f"{name} = {settings.get(name)}" for name, safe in SAFE_LOGGING.items()
            if settings.get(name, safe) != safe]


def refuse_unsafe_logging(settings: dict[str, str]) -> None:
    """Refuses to send keys to a server whose settings (from the logging_settings query) would write bind
    parameter values to its log, unless PGREFLECT_ALLOW_PARAMETER_LOGGING=1."""
    if os.environ.get("PGREFLECT_ALLOW_PARAMETER_LOGGING") == "1":
        return
    bad = unsafe_logging(settings)
    if bad:
        raise UnsafeLogging(
            f"the server could write bind parameter values to its log ({', '.join(bad)}), so encryption keys "
            "and prompts could reach it; a superuser should set log_parameter_max_length and "
            "log_parameter_max_length_on_error to 0 and the debug_print_* settings off (pgreflect's own cluster "
            "does), or set PGREFLECT_ALLOW_PARAMETER_LOGGING=1 to accept the risk"
        )


def check_server_logging(conn: psycopg.Connection) -> None:
    refuse_unsafe_logging(dict(conn.execute(query("logging_settings")).fetchall()))


def install_keys(conn: psycopg.Connection, ring: Keyring) -> None:
    """Loads every key of the ring into this session (bind parameters only)."""
    check_server_logging(conn)
    for key_id, key in ring.keys.items():
        try:
            conn.execute(query("use_key"), {"key_id": key_id, "key": key, "current": key_id == ring.current})
        except psycopg.Error as exc:
            raise translate(exc) from exc


class KeyringWatcher:
    """The keyring file, re-read when it changes, so a running worker picks up keys added since it started
    (a new app's key) without a restart. With PGREFLECT_KEY or a keyring given in code, nothing changes."""

    def __init__(self, ring: Keyring, path: Path | None):
        self.ring, self.path, self.version = ring, path, 0
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns if self.path is not None else None
        except FileNotFoundError:
            return None

    def refresh(self) -> bool:
        """Re-reads the file if it changed; True when the keyring did."""
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return False
        self._mtime = mtime
        ring = load_keyring(self.path)
        if ring == self.ring:
            return False
        self.ring, self.version = ring, self.version + 1
        return True


def startup_options(keys: dict[str, str], current: str) -> str:
    """PGOPTIONS that load keys into a session at connection time (for psql, which cannot bind parameters).
    Each key is still checked against its id's verifier whenever it is used."""
    for key_id, key in keys.items():
        if not KEY_ID.match(key_id) or not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            raise InvalidInput(f"key {key_id!r} cannot be passed as a startup option")
    parts = [f"-c reflect.key_{key_id}={key}" for key_id, key in keys.items()]
    parts += [f"-c reflect.loaded_key_ids={','.join(sorted(keys))}", f"-c reflect.current_key_id={current}"]
    return " ".join(parts)
