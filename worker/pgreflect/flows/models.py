"""Model versions: register a local GGUF (or the test backend) or a model on an OpenAI-compatible server, list
them with their states, activate one. The database decides what is allowed; its refusals come back as
pgreflect.errors exceptions (InvalidInput, UnknownModel, ...) with nothing changed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgreflect.db import dsns
from pgreflect.errors import InvalidInput, translate
from pgreflect.sql import query


@dataclass(frozen=True)
class ModelVersion:
    name: str
    active: bool
    state: str  # the improvement loop's state (reflect.model_states): active, candidate, canary, rejected, ...
    backend: str
    sha256: str | None
    base_url: str | None
    remote_model: str | None
    n_ctx: int
    parent: str | None
    base: str | None  # for an adapter version: the version whose GGUF it runs on
    adapter_sha256: str | None
    last_decision: str | None
    reason: str | None


def _admin(name: str, params: dict[str, Any] | None = None, admin_dsn: str | None = None) -> list[tuple]:
    with psycopg.connect(admin_dsn or dsns().admin, autocommit=True) as conn:
        try:
            cur = conn.execute(query(name), params or {})
            return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise translate(exc) from exc


def versions() -> list[ModelVersion]:
    with psycopg.connect(dsns().admin, autocommit=True, row_factory=dict_row) as conn:
        registry = conn.execute(query("list_models")).fetchall()
        states = {m["name"]: m for m in conn.execute(query("model_states"))}
    out = []
    for r in registry:
        m = states.get(r["name"], {})
        out.append(ModelVersion(
            name=r["name"], active=bool(r["is_active"]), state=m.get("state", "registered"), backend=r["backend"],
            sha256=r["sha256"], base_url=r["base_url"], remote_model=r["remote_model"], n_ctx=r["n_ctx"],
            parent=m.get("parent"), base=m.get("base"), adapter_sha256=m.get("adapter_sha256"),
            last_decision=m.get("last_decision"), reason=m.get("reason")))
    return out


def register_gguf(name: str, path: Path, *, n_ctx: int, parent: str | None = None, activate: bool = False,
                  source: str | None = None) -> str:
    """Registers a GGUF file as a version of the llama backend, pinned to its sha256 (read now)."""
    from pgreflect.models import verified_sha256

    path = path.resolve()
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file")
    return register(name, str(path), verified_sha256(path, progress=True), source or f"path:{path}", n_ctx=n_ctx,
                    parent=parent, activate=activate)


def register_noop(name: str, *, n_ctx: int, parent: str | None = None, activate: bool = False,
                  source: str | None = None) -> str:
    """A version of the test backend: no file; it answers "ok"."""
    return register(name, "noop", "0" * 64, source or "noop", n_ctx=n_ctx, parent=parent, activate=activate,
                    backend="noop")


def register(name: str, path: str, sha256: str, source: str, *, n_ctx: int, parent: str | None = None,
             activate: bool = False, backend: str = "llama", admin_dsn: str | None = None) -> str:
    """Registers a version whose file (for llama) is already checked against `sha256`."""
    _admin("register_model", {"name": name, "gguf_path": path, "sha256": sha256, "source": source, "n_ctx": n_ctx,
                              "parent": parent, "activate": activate, "backend": backend}, admin_dsn)
    return name


def register_remote(name: str, base_url: str, remote_model: str, *, n_ctx: int, parent: str | None = None,
                    activate: bool = False) -> str:
    """Registers a model served by an OpenAI-compatible server (the openai backend's workers call it)."""
    _admin("register_remote_model", {"name": name, "base_url": base_url, "remote_model": remote_model,
                                     "n_ctx": n_ctx, "parent": parent, "activate": activate})
    return name


def activate(name: str) -> str:
    _admin("activate_model", {"name": name})
    return name
