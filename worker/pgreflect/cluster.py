"""The project's own PostgreSQL cluster: data, socket and log under a project-owned directory.

initdb, pg_ctl and postgres refuse to run as root, so as root they run as the `postgres` OS user (via
runuser) and the cluster directory is owned by it. Two ways in:
- the Unix socket, in a directory only its owner (and root) can enter, with trust auth: reaching the
  socket is the credential (pgreflect's own commands as root or as the cluster's owner);
- TCP on loopback (127.0.0.1 and ::1) with password auth (scram-sha-256), for apps running as any OS user
  (`pgreflect apps add` creates their logins). Addresses beyond loopback (PGREFLECT_LISTEN) are served
  only over TLS (hostssl), with a certificate made for the cluster on first start.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from pgreflect.paths import home

PG_MAJOR = os.environ.get("PGREFLECT_PG_MAJOR", "15")

# Settings every pgreflect cluster gets. log_parameter_max_length* = 0 keep bind parameters (keys,
# prompts) out of the server log even with log_statement = 'all'.
BASE_SETTINGS: dict[str, str] = {
    "shared_preload_libraries": "'pg_cron'",
    "cron.use_background_workers": "on",
    "max_worker_processes": "16",
    "log_parameter_max_length": "0",
    "log_parameter_max_length_on_error": "0",
    "max_connections": "200",
    "unix_socket_permissions": "0700",
    # A statement that fails is logged with its text by default (log_min_error_statement = error), and a
    # person who types a key as a literal in psql would put it there: statement texts reach the log only on
    # a PANIC. Keys go in as bind parameters (clients) or startup options (pgreflect psql), never as text.
    "log_min_error_statement": "panic",
    "password_encryption": "'scram-sha-256'",
}

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class ClusterError(RuntimeError):
    pass


def pg_bin(name: str) -> str:
    path = Path(os.environ.get("PGREFLECT_PG_BIN", f"/usr/lib/postgresql/{PG_MAJOR}/bin")) / name
    if not path.exists():
        raise ClusterError(f"{path} not found: run scripts/install.sh (installs postgresql-{PG_MAJOR})")
    return str(path)


def _is_root() -> bool:
    return os.geteuid() == 0


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if _is_root() else cmd


def _server_user_can_enter(path: Path) -> bool:
    if not _is_root():
        return True
    return subprocess.run(_as_server_user(["test", "-x", str(path)]), capture_output=True).returncode == 0


def default_cluster_dir() -> Path:
    """<home>/pg, unless the postgres OS user cannot reach it (say, a checkout under /root) or the socket
    path would pass the ~107-byte limit; then /var/lib/pgreflect/<hash of home>."""
    preferred = home() / "pg"
    env = os.environ.get("PGREFLECT_CLUSTER_DIR")
    if env:
        return Path(env)
    socket_path_len = len(str(preferred / "run" / ".s.PGSQL.00000"))
    probe = preferred if preferred.exists() else home().parent
    if socket_path_len < 100 and _server_user_can_enter(probe):
        return preferred
    return Path("/var/lib/pgreflect") / hashlib.sha256(str(home()).encode()).hexdigest()[:12]


@dataclass
class LocalCluster:
    directory: Path = field(default_factory=default_cluster_dir)
    port: int = field(default_factory=lambda: int(os.environ.get("PGREFLECT_PORT", "54329")))
    dbname: str = field(default_factory=lambda: os.environ.get("PGREFLECT_DBNAME", "pgreflect"))
    cron_database: str | None = None  # defaults to dbname
    listen: str = field(default_factory=lambda: os.environ.get("PGREFLECT_LISTEN", "127.0.0.1"))
    # listen_addresses, comma-separated; '' = Unix socket only. Beyond loopback, TLS only.
    extra_settings: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "run"

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / "postgresql.log"

    def dsn(self, user: str = "postgres", dbname: str | None = None) -> str:
        return f"host={self.socket_dir} port={self.port} dbname={dbname or self.dbname} user={user}"

    # -- lifecycle -------------------------------------------------------------------------------
    def _owned_dirs(self) -> None:
        for d in (self.directory, self.socket_dir, self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        if _is_root():
            pw = pwd.getpwnam("postgres")
            for d in (self.directory, self.socket_dir, self.log_file.parent):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        for d in (self.directory, self.socket_dir, self.log_file.parent):
            os.chmod(d, 0o700)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> bool:
        """Creates the cluster if it does not exist. Returns True when it created one."""
        self._owned_dirs()
        if not self.initialized():
            subprocess.run(
                _as_server_user([pg_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres",
                                 "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"]),
                check=True, capture_output=True, text=True,
            )
            created = True
        else:
            created = False
        self._write_settings()
        return created

    def _write_settings(self) -> None:
        settings = {
            **BASE_SETTINGS,
            "listen_addresses": f"'{self.listen}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "cron.database_name": f"'{self.cron_database or self.dbname}'",
            **self.extra_settings,
        }
        conf = self.data_dir / "pgreflect.conf"
        text = "# Written by pgreflect (pgreflect/cluster.py); edits are overwritten.\n" + "".join(
            f"{k} = {v}\n" for k, v in settings.items()
        )
        main_conf = self.data_dir / "postgresql.conf"
        include = "include_if_exists = 'pgreflect.conf'\n"
        if include not in main_conf.read_text():
            with main_conf.open("a") as f:
                f.write(include)
        conf.write_text(text)
        if _is_root():
            pw = pwd.getpwnam("postgres")
            os.chown(conf, pw.pw_uid, pw.pw_gid)
        self._write_hba()

    def listen_beyond_loopback(self) -> bool:
        return any(a.strip() not in LOOPBACK for a in self.listen.split(",") if a.strip())

    def _write_hba(self) -> None:
        """pg_hba.conf, rewritten whole: trust on the socket (its directory is the credential), scram on
        loopback TCP, and scram over TLS only from anywhere else when listening beyond loopback."""
        lines = [
            "# Written by pgreflect (pgreflect/cluster.py); edits are overwritten.",
            "local all all trust",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ]
        if self.listen_beyond_loopback():
            self._ensure_certificate()
            lines += ["hostssl all all 0.0.0.0/0 scram-sha-256", "hostssl all all ::/0 scram-sha-256"]
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n")
        if _is_root():
            pw = pwd.getpwnam("postgres")
            os.chown(hba, pw.pw_uid, pw.pw_gid)

    def _ensure_certificate(self) -> None:
        """A self-signed certificate for the server (replace server.crt / server.key with one from your CA;
        clients then use sslmode=verify-full with that CA)."""
        crt, key = self.data_dir / "server.crt", self.data_dir / "server.key"
        if not crt.exists():
            subprocess.run(_as_server_user([
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "825",
                "-subj", "/CN=pgreflect", "-keyout", str(key), "-out", str(crt)]),
                check=True, capture_output=True)
            os.chmod(key, 0o600)
        conf = self.data_dir / "pgreflect.conf"
        with conf.open("a") as f:
            f.write("ssl = on\n")

    def reload(self) -> None:
        subprocess.run(_as_server_user([pg_bin("pg_ctl"), "-D", str(self.data_dir), "reload"]),
                       check=True, capture_output=True)

    def tcp_dsn(self, user: str, password: str, dbname: str | None = None, host: str = "127.0.0.1") -> str:
        return (f"host={host} port={self.port} dbname={dbname or self.dbname} user={user} "
                f"password={password}")

    def running(self) -> bool:
        if not self.initialized():
            return False
        result = subprocess.run(_as_server_user([pg_bin("pg_ctl"), "-D", str(self.data_dir), "status"]),
                                capture_output=True)
        return result.returncode == 0

    def start(self) -> bool:
        """Starts the server if it is not running. Returns True when it started it."""
        if self.running():
            return False
        # A socket dir under /tmp-like places may have been cleaned; recreate with the right owner.
        self._owned_dirs()
        result = subprocess.run(
            _as_server_user([pg_bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                             "-w", "-t", "60", "start"]),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise ClusterError(f"pg_ctl start failed: {result.stderr.strip()}\n{tail}")
        return True

    def exec_foreground(self) -> NoReturn:
        """Replaces this process with postgres, so that a container's stop signal reaches postgres itself (as
        in PostgreSQL's own image). Not through runuser: runuser answers SIGTERM by passing it on and then
        SIGKILLing postgres two seconds later, a crash on every stop."""
        argv = [pg_bin("postgres"), "-D", str(self.data_dir)]
        if _is_root():
            server = pwd.getpwnam("postgres")
            os.initgroups(server.pw_name, server.pw_gid)
            os.setgid(server.pw_gid)
            os.setuid(server.pw_uid)
            os.environ.update(HOME=server.pw_dir, USER=server.pw_name, LOGNAME=server.pw_name)
        os.execv(argv[0], argv)

    def stop(self, mode: str = "fast") -> bool:
        if not self.running():
            return False
        subprocess.run(_as_server_user([pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]),
                       check=True, capture_output=True)
        return True

    def restart(self) -> None:
        self.stop()
        self.start()

    def ensure_database(self, dbname: str | None = None) -> None:
        import psycopg
        from psycopg import sql

        from pgreflect.sql import query

        dbname = dbname or self.dbname
        with psycopg.connect(self.dsn(dbname="postgres"), autocommit=True) as conn:
            exists = conn.execute(query("database_exists"), {"dbname": dbname}).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))

    def wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(dbname="postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
