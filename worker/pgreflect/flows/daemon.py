"""The background worker that `pgreflect up` and `worker --daemon` start: a pid file and a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pgreflect.paths import home, logs_dir


def paths() -> tuple[Path, Path]:
    return home() / "worker.pid", logs_dir() / "worker.log"


def running_pid() -> int | None:
    pid_file, _ = paths()
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start(worker_args: list[str] | None = None) -> int:
    """Starts `pgreflect worker` in its own session (returns the running one's pid when there is one)."""
    pid = running_pid()
    if pid:
        return pid
    pid_file, log_file = paths()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    args = [a for a in (worker_args or []) if a != "--daemon"]
    with log_file.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pgreflect.cli", "worker", *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop(timeout: float = 60) -> bool:
    """SIGTERM (in-flight work finishes or is released), then waits up to `timeout` for it to exit."""
    pid = running_pid()
    if not pid:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.2)
    paths()[0].unlink(missing_ok=True)
    return True
