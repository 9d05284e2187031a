"""A running `pgreflect serve` for the tests: its own process against a fresh test database, with its own home
(keyring file, app credentials), and a live worker that holds every app's key."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai

from pgreflect.keys import Keyring, save_keyring

from conftest import Database, free_port
from helpers import BackgroundWorker, wait_for, worker


@dataclass
class Served:
    base_url: str
    env: dict[str, str]
    log: Path
    db: Database

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pgreflect.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=120)

    def key(self, name: str, app: str | None = None) -> str:
        out = self.cli("apikeys", "create", name, "--json", *(["--app", app] if app else []))
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["key"].startswith("pgr-") and info["key"] not in out.stderr
        return info["key"]

    def client(self, key: str, **kw: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, **kw)  # type: ignore[arg-type]

    def requests(self) -> int:
        return int(self.db.scalar("SELECT count(*) FROM reflect.requests"))


@contextlib.contextmanager
def live_worker(db: Database, keyring: Keyring, home: str, **config: Any) -> Iterator[BackgroundWorker]:
    """A worker for the tiny model that holds each app's key (as the keyring file has them after `apps add`),
    started and seen live, as `pgreflect serve` checks before it queues anything."""
    with BackgroundWorker(worker(db, _app_keyring(Path(home), keyring), **config)) as started:
        wait_for(lambda: db.scalar("SELECT reflect.live_worker_count_v1('tiny')"), what="a live worker")
        yield started


def _app_keyring(home: Path, base: Keyring) -> Keyring:
    """The keyring file after `apps add`: the worker decrypts each app's rows with that app's key."""
    ring = json.loads((home / "keyring.json").read_text())
    return Keyring(current=base.current, keys={**ring["keys"], **base.keys})


@contextlib.contextmanager
def served(db: Database, keyring: Keyring, tmp_path: Path, timeout: float = 60) -> Iterator[Served]:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in db.env(keyring).items() if k not in ("PGREFLECT_KEY", "PGREFLECT_KEY_ID")}
    save_keyring(keyring, home / "keyring.json")
    env.update({"PGREFLECT_HOME": str(home), "PGREFLECT_KEYRING": str(home / "keyring.json")})
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pgreflect.cli", "serve", "--port", str(port),
                                 "--request-timeout", str(timeout)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(base, proc, log), timeout=60, interval=0.2, what="pgreflect serve")
        yield Served(base + "/v1", env, log, db)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _up(base: str, proc: subprocess.Popen, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"pgreflect serve exited: {log.read_text()}")
    try:
        return httpx.get(base + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
