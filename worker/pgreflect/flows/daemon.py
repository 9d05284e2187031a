"""The background processes that `pgreflect up` starts (and `worker --daemon`): the worker and the HTTP API
server, each with a pid file and a log file under the project's home."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pgreflect.paths import home, logs_dir

DAEMONS = ("worker", "serve")


def paths(name: str = "worker") -> tuple[Path, Path]:
    assert name in DAEMONS
    return home() / f"{name}.pid", logs_dir() / f"{name}.log"


def running_pid(name: str = "worker") -> int | None:
    pid_file, _ = paths(name)
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start(args: list[str] | None = None, name: str = "worker") -> int:
    """Starts `pgreflect NAME` in its own session (returns the running one's pid when there is one)."""
    pid = running_pid(name)
    if pid:
        return pid
    pid_file, log_file = paths(name)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    args = [a for a in (args or []) if a != "--daemon"]
    with log_file.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pgreflect.cli", name, *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def exited(pid: int) -> bool:
    """Whether a process we started has exited (reaping it if it is our child)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not our child: ask the kernel
        try:
            os.kill(pid, 0)
            return False
        except OSError:
            return True


def stop(timeout: float = 60, name: str = "worker") -> bool:
    """SIGTERM (a worker finishes or releases its in-flight work), then waits up to `timeout` for it to exit."""
    pid = running_pid(name)
    if not pid:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited(pid):
            break
        time.sleep(0.2)
    paths(name)[0].unlink(missing_ok=True)
    return True
