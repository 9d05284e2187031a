"""The container path runs the same steps as the native one: the entry points it uses must work."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

from pgreflect.cli import build_parser

from conftest import free_port
from helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_uses_install_script_and_valid_commands() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    installs = re.findall(r"(?:^RUN |; +|^ +)scripts/install\.sh([^&\n]*)", text, re.M)  # also continued lines
    assert len(installs) == 2, installs
    assert installs, "the images must be built by scripts/install.sh"
    usage = (ROOT / "scripts" / "install.sh").read_text()
    for flags in installs:
        for flag in flags.split():
            assert f"{flag})" in usage, f"install.sh has no {flag}"
    commands = re.findall(r"\.venv/bin/pgreflect ([a-z][^&\"\]]*)", text)
    commands += [" ".join(json_cmd) for json_cmd in
                 [re.findall(r'"([^"]+)"', c)[1:] for c in re.findall(r'CMD \[("\.venv/bin/pgreflect".*)\]', text)]]
    assert len(commands) >= 4
    parser = build_parser()
    for cmd in commands:
        parser.parse_args(shlex.split(cmd))  # SystemExit on an unknown command or flag


def test_cluster_run_is_a_working_container_entrypoint() -> None:
    root = Path(tempfile.mkdtemp(prefix="pgrc-", dir="/tmp"))
    root.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGREFLECT_")}
    env.update({"PGREFLECT_CLUSTER_DIR": str(root / "pg"), "PGREFLECT_PORT": str(port),
                "PGREFLECT_HOME": str(root / "home")})
    proc = subprocess.Popen([sys.executable, "-m", "pgreflect.cli", "cluster", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    dsn = f"host={root / 'pg' / 'run'} port={port} dbname=pgreflect user=pgreflect_worker"

    def ready() -> bool:
        try:
            with psycopg.connect(dsn, connect_timeout=1) as conn:
                return conn.execute("SELECT count(*) FROM reflect.queue_status").fetchone() is not None
        except psycopg.Error:
            return False

    try:
        wait_for(ready, timeout=60, interval=0.2, what="the container entry point to serve")
        assert proc.poll() is None
        assert not (root / "home" / "keyring.json").exists()  # database hosts hold no keys
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(root)], check=False)
