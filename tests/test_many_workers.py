"""Workers on other hosts: separate processes that reach the database over TCP with TLS only (a CA and a server
certificate made here, `sslmode=verify-full`), each with the worker login's password, answering one queue."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgreflect.cluster import LocalCluster
from pgreflect.keys import Keyring

from conftest import Database
from helpers import client, spawn_worker, wait_for

PASSWORD = "worker-password-for-this-test-only"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(directory: Path) -> Path:
    """A CA, and a certificate for `localhost` it signed; the server's files owned by the server's user."""
    directory.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pgreflect test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
             "-out", "server.csr", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName = DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=directory)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for name in ("server.key", "server.crt"):
            os.chown(directory / name, pw.pw_uid, pw.pw_gid)
    os.chmod(directory / "server.key", 0o600)
    return directory


@pytest.fixture
def tls_only(cluster: LocalCluster, db: Database) -> Iterator[str]:
    """The shared test cluster with TLS on and, for this database over TCP, TLS required; the worker login
    gets a password. Everything is put back afterwards. Yields the CA certificate's path."""
    certs = _certificates(cluster.data_dir / "test-tls")
    hba = cluster.data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"hostnossl {db.name} all 127.0.0.1/32 reject\n"
                   f"hostssl {db.name} pgreflect_worker 127.0.0.1/32 scram-sha-256\n" + original)
    with db.admin() as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET ssl_cert_file = {}").format(sql.Literal(str(certs / "server.crt"))))
        conn.execute(sql.SQL("ALTER SYSTEM SET ssl_key_file = {}").format(sql.Literal(str(certs / "server.key"))))
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute(sql.SQL("ALTER ROLE pgreflect_worker PASSWORD {}").format(sql.Literal(PASSWORD)))
        conn.execute("SELECT pg_reload_conf()")
    try:
        wait_for(lambda: db.scalar("SHOW ssl") == "on", timeout=10, what="ssl on")
        yield str(certs / "ca.crt")
    finally:
        hba.write_text(original)
        with db.admin() as conn:
            conn.execute("ALTER SYSTEM RESET ssl")
            conn.execute("ALTER SYSTEM RESET ssl_cert_file")
            conn.execute("ALTER SYSTEM RESET ssl_key_file")
            conn.execute("ALTER ROLE pgreflect_worker PASSWORD NULL")
            conn.execute("SELECT pg_reload_conf()")
        shutil.rmtree(certs)


def test_workers_in_separate_processes_over_tls_answer_each_request_once(
        cluster: LocalCluster, db: Database, keyring: Keyring, tls_only: str, tmp_path: Path) -> None:
    dsn = (f"host=localhost hostaddr=127.0.0.1 port={cluster.port} dbname={db.name} user=pgreflect_worker "
           f"password={PASSWORD} sslmode=verify-full sslrootcert={tls_only}")
    with pytest.raises(psycopg.OperationalError, match="no encryption"):  # TCP without TLS is refused
        psycopg.connect(dsn.replace("sslmode=verify-full", "sslmode=disable"), connect_timeout=5).close()
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):  # verify-full checks the name
        psycopg.connect(dsn.replace("host=localhost hostaddr=127.0.0.1", "host=127.0.0.1"), connect_timeout=5).close()

    procs = [spawn_worker(db, keyring, "--backend", "noop", "--model-version", "noop", "--concurrency", "2",
                          "--noop-delay", "0.1", "--worker-id", f"host-{n}", "--poll-interval", "0.2",
                          log_path=tmp_path / f"w{n}.log", env={"PGREFLECT_WORKER_DSN": dsn}) for n in (1, 2)]
    try:
        wait_for(lambda: db.scalar("SELECT reflect.live_worker_count_v1('noop')") == 2, timeout=60,
                 what="both workers live")
        with client(db, keyring) as c:  # 0.1 s each: both workers take a share
            ids = [c.submit(f"request {i}", model_version="noop") for i in range(60)]
        wait_for(lambda: db.scalar("SELECT count(*) FROM reflect.requests WHERE state = 'succeeded'") == len(ids),
                 timeout=120, interval=0.2, what="every request answered")
        over_tls = db.scalar("SELECT array_agg(DISTINCT s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s "
                             "USING (pid) WHERE a.usename = 'pgreflect_worker' AND a.datname = %s", (db.name,))
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
    assert over_tls == [True]
    assert db.scalar("SELECT array_agg(DISTINCT attempts) FROM reflect.requests") == [1]
    assert db.scalar("SELECT count(*) FROM reflect.answers") == len(ids)
    assert db.scalar("SELECT count(DISTINCT worker_id) FROM reflect.answers") == 2
    for n in (1, 2):
        assert PASSWORD not in (tmp_path / f"w{n}.log").read_text()
