"""Apps as a new app developer meets them: `pgreflect apps add`, password auth over loopback TCP, the README's
app example run exactly as written, keys that never reach the server log on an error path, and `ask` taking
its prompt from standard input."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgreflect.cluster import LocalCluster, pg_bin
from pgreflect.db import connect
from pgreflect.keys import Keyring, new_key, save_keyring

from conftest import Database, free_port
from helpers import BackgroundWorker, use_noop, wait_for, worker

README = Path(__file__).resolve().parents[1] / "README.md"


def _cli_env(db: Database, home: Path, ring: Keyring) -> dict[str, str]:
    """A pgreflect environment with a keyring file (apps add writes app keys into it) instead of PGREFLECT_KEY."""
    env = {k: v for k, v in db.env(ring).items() if k not in ("PGREFLECT_KEY", "PGREFLECT_KEY_ID")}
    save_keyring(ring, home / "keyring.json")
    env.update({"PGREFLECT_HOME": str(home), "PGREFLECT_KEYRING": str(home / "keyring.json")})
    return env


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgreflect.cli", *args], env=env, capture_output=True, text=True,
                          input=stdin, timeout=120)


def _tcp(dsn: str, db: Database) -> str:
    """The app's DSN pointed at the test cluster's loopback TCP port (the local cluster's own apps get this)."""
    login = re.search(r"user=(\S+)", dsn).group(1)  # type: ignore[union-attr]
    password = re.search(r"password=(\S+)", dsn).group(1)  # type: ignore[union-attr]
    return db.cluster.tcp_dsn(login, password, dbname=db.name)


def test_apps_add_gives_a_login_a_key_and_a_private_credentials_file(db: Database, keyring: Keyring,
                                                                     tmp_path: Path) -> None:
    env = _cli_env(db, tmp_path, keyring)
    out = _cli(env, "apps", "add", "billing", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert {"dsn", "key_id", "credentials_file", "how_to_get_the_key"} <= info.keys()
    creds_file = Path(info["credentials_file"])
    creds = json.loads(creds_file.read_text())
    assert creds_file.stat().st_mode & 0o777 == 0o600
    assert creds["key"] not in out.stdout + out.stderr and "password=" in creds["dsn"]
    assert re.search(r"password=(\S+)", creds["dsn"]).group(1) not in out.stdout  # type: ignore[union-attr]
    ring_keys = json.loads((tmp_path / "keyring.json").read_text())["keys"]
    assert creds["key_id"] == info["key_id"] and creds["key_id"] in ring_keys

    tcp = _tcp(creds["dsn"], db)
    with psycopg.connect(tcp) as conn:  # password auth (scram) over loopback TCP
        assert conn.execute("SELECT current_user, inet_server_addr() IS NOT NULL").fetchone() == ("app_billing", True)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(re.sub(r"password=\S+", "password=wrong", tcp))
    # The password went to the server only as a scram verifier, even with log_statement = 'all'.
    password = re.search(r"password=(\S+)", creds["dsn"]).group(1)  # type: ignore[union-attr]
    assert password not in db.cluster.log_file.read_text(errors="replace")

    listed = _cli(env, "apps", "list", "--json")
    assert [a["name"] for a in json.loads(listed.stdout)] == ["billing"]
    assert _cli(env, "apps", "revoke", "billing").returncode == 0
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(tcp)
    bad = _cli(env, "apps", "add", "Bad-Name")
    assert bad.returncode == 2 and "app name must match" in bad.stderr


def _readme_block(marker: str) -> str:
    blocks = re.findall(r"```(?:python|sql|sh)\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README has {len(found)} blocks marked {marker!r}"
    return found[0]


def test_the_readme_app_example_runs_as_written(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """The README's Python app example, extracted and run unchanged against a fresh app and a live worker."""
    use_noop(db)
    checkout = tmp_path / "checkout"
    home = checkout / ".pgreflect"
    home.mkdir(parents=True)
    env = _cli_env(db, home, keyring)
    out = _cli(env, "apps", "add", "my_app", "--json")
    assert out.returncode == 0, out.stderr
    creds_file = home / "apps" / "my_app.json"
    creds = json.loads(creds_file.read_text())
    creds["dsn"] = _tcp(creds["dsn"], db)  # the test cluster's port and database
    creds_file.write_text(json.dumps(creds))
    code = _readme_block("# readme-test: app-example")
    (checkout / "app.py").write_text(code)
    w = worker(db, Keyring(current=creds["key_id"], keys={**keyring.keys, creds["key_id"]: creds["key"]}),
               backend="noop")
    with BackgroundWorker(w):
        ran = subprocess.run([sys.executable, "app.py"], cwd=checkout, capture_output=True, text=True, timeout=120,
                             env={k: v for k, v in os.environ.items() if not k.startswith("PGREFLECT_")})
    assert ran.returncode == 0, ran.stderr
    assert "succeeded ok" in ran.stdout  # the noop backend's answer, read back through the app's view
    assert db.scalar("SELECT submitted_by FROM reflect.requests") == "app_my_app"

    # The README's psql example: keys go in as startup options, the INSERT as plain SQL.
    shell = _readme_block("# readme-test: psql-example")
    root = README.parent
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", shell.replace(".venv/bin/pgreflect", "pgreflect")],
                         cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert db.scalar("SELECT count(*) FROM reflect.requests WHERE submitted_by = 'app_my_app'") == 2


def test_a_key_typed_into_psql_never_reaches_the_log_of_pgreflects_cluster(tmp_path: Path) -> None:
    """PostgreSQL 15's psql cannot bind parameters, so a person may type a key as a literal; a statement that
    fails is logged with its text by default. pgreflect's cluster settings keep it out; the same statement
    with PostgreSQL's default setting does reach the log, so this test can fail."""
    with _scratch_cluster(listen="") as cluster:
        secret, control = new_key(), new_key()
        psql = [pg_bin("psql"), "-X", cluster.dsn()]
        subprocess.run([*psql, "-c", f"SELECT reflect.use_key_v1('bad-id', '{secret}')"], capture_output=True)
        subprocess.run([*psql, "-c", "SET log_min_error_statement = error",
                        "-c", f"SELECT reflect.use_key_v1('bad-id', '{control}')"], capture_output=True)
        log = wait_for(lambda: control in (t := cluster.log_file.read_text(errors="replace")) and t, timeout=10,
                       what="the control statement in the log")
        assert secret not in log


def test_beyond_loopback_the_cluster_takes_passwords_over_tls_only(tmp_path: Path) -> None:
    """Listening on an address beyond 127.0.0.1 makes a certificate, turns TLS on, and lets other hosts in
    only through hostssl rules with scram. (A connection from another source address needs another host;
    the rules are read back as the server parsed them, and TLS is used for real on 127.0.0.2.)"""
    with _scratch_cluster(listen="127.0.0.1,127.0.0.2") as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE ROLE remote_app LOGIN PASSWORD 'correct horse battery staple'")
            rules = conn.execute("SELECT type, address, auth_method, error FROM pg_hba_file_rules").fetchall()
        assert all(error is None for *_, error in rules)
        assert ("local", None, "trust", None) in rules
        beyond = [r for r in rules if r[0] != "local" and r[1] not in ("127.0.0.1", "::1")]
        assert beyond and all(t == "hostssl" and auth == "scram-sha-256" for t, _, auth, _ in beyond), rules
        assert {r[2] for r in rules if r[0] != "local"} == {"scram-sha-256"}
        ca = cluster.data_dir / "server.crt"
        base = f"host=127.0.0.2 port={cluster.port} dbname=postgres user=remote_app " \
               "password='correct horse battery staple'"
        with psycopg.connect(base + f" sslmode=verify-ca sslrootcert={ca}") as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(base.replace("staple", "stable") + f" sslmode=verify-ca sslrootcert={ca}")


@contextlib.contextmanager
def _scratch_cluster(listen: str) -> Iterator[LocalCluster]:
    """A cluster of its own with pgreflect's own settings (not the test cluster's), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="pgs-", dir="/tmp"))
    root.chmod(0o755)
    cluster = LocalCluster(directory=root / "pg", port=free_port(), dbname="postgres", listen=listen)
    try:
        cluster.init()
        cluster.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_ask_reads_its_prompt_from_stdin(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    env = db.env(keyring)
    out = _cli(env, "ask", "--json", "--backend", "noop", "--model-version", "noop",
               stdin="a prompt that ps must not show")
    assert out.returncode == 0, out.stderr
    rid = json.loads(out.stdout)["id"]
    with connect(db.dsn("app"), keyring=keyring) as conn:
        prompt = conn.execute("SELECT prompt FROM reflect.app_requests WHERE id = %s", (rid,)).fetchone()[0]
    assert prompt == "a prompt that ps must not show"
