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
from pgreflect.cluster import pg_bin

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
    """`cluster run` becomes postgres itself (a runuser parent would SIGKILL it 2 s after a stop signal), and
    the image's stop signal, SIGINT to that process alone, shuts it down cleanly with a client connected."""
    root = Path(tempfile.mkdtemp(prefix="pgrc-", dir="/tmp"))
    root.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGREFLECT_")}
    env.update({"PGREFLECT_CLUSTER_DIR": str(root / "pg"), "PGREFLECT_PORT": str(port),
                "PGREFLECT_HOME": str(root / "home")})
    log = (root / "out.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "pgreflect.cli", "cluster", "run"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dsn = f"host={root / 'pg' / 'run'} port={port} dbname=pgreflect user=pgreflect_worker"

    def serving_in_foreground() -> bool:  # not the server setup starts and stops before
        pid_file = root / "pg" / "data" / "postmaster.pid"
        try:
            if int(pid_file.read_text().split()[0]) != proc.pid:
                return False
            with psycopg.connect(dsn, connect_timeout=1) as conn:
                return conn.execute("SELECT count(*) FROM reflect.queue_status").fetchone() is not None
        except (OSError, IndexError, ValueError, psycopg.Error):
            return False

    try:
        wait_for(serving_in_foreground, timeout=60, interval=0.2, what="the container entry point to serve")
        assert not (root / "home" / "keyring.json").exists()  # database hosts hold no keys
        with psycopg.connect(dsn):  # a connected worker must not hold the shutdown up
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0, (root / "out.log").read_text()[-2000:]
        as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        control = subprocess.run([*as_owner, pg_bin("pg_controldata"), str(root / "pg" / "data")],
                                 capture_output=True, text=True, check=True).stdout
        assert re.search(r"Database cluster state:\s+shut down$", control, re.M), control
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)
