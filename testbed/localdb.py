"""Throw-away PostgreSQL and MariaDB servers on 127.0.0.1 (Debian's packages), for the
`db copy` tests and benchmark: a fresh data directory, a free port, a password user, and
stopped by their own PID."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.toolchain import postgres_bin

LOOPBACK = "127.0.0.1"
PASSWORD = "s3cret:p@ss/word"  # URL-special characters on purpose
MARIADB_SERVER = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL = Path("/usr/bin/mariadb-install-db")
MARIADB_CLIENT = Path("/usr/bin/mariadb")


@dataclass
class Server:
    engine: str  # pg or mysql
    port: int
    user: str
    password: str
    directory: Path
    process: subprocess.Popen[bytes]

    def url(self, database: str = "") -> str:
        from urllib.parse import quote

        scheme = "postgresql" if self.engine == "pg" else "mysql"
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"{scheme}://{auth}@{LOOPBACK}:{self.port}/{quote(database, safe='')}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT if self.engine == "pg" else signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def missing() -> list[str]:
    """The server binaries that are not installed."""
    gone = [] if postgres_bin() is not None else ["/usr/lib/postgresql/*/bin/postgres"]
    return gone + [
        str(p) for p in (MARIADB_SERVER, MARIADB_INSTALL, MARIADB_CLIENT) if not p.exists()
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _as_user(name: str) -> tuple[list[str], int, int]:
    """A setpriv prefix running as `name` when we are root (servers refuse root)."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    user = pwd.getpwnam(name)
    prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    return prefix, user.pw_uid, user.pw_gid


def _workdir(prefix: str, uid: int, gid: int) -> Path:
    top = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(top, 0o755)
    os.chown(top, uid, gid)
    return top


def _wait_tcp(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-800:]}")
        with socket.socket() as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {port}: {log.read_text()[-800:]}")


def start_postgres() -> Server:
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    prefix, uid, gid = _as_user("postgres")
    top = _workdir("preview-env-pg-", uid, gid)
    pwfile = top / "pw"
    pwfile.write_text(PASSWORD + "\n")
    os.chown(pwfile, uid, gid)
    init = subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            *("-D", str(top / "data"), "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"),
            *("--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr[-800:]}")
    port = free_port()
    log = top / "server.log"
    argv = [*prefix, str(bindir / "postgres"), "-D", str(top / "data"), "-h", LOOPBACK]
    argv += ["-p", str(port), "-k", str(top), "-c", "fsync=off", "-c", "full_page_writes=off"]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    server = Server("pg", port, "postgres", PASSWORD, top, process)
    try:
        _wait_tcp(port, process, "postgres", log)
    except BaseException:
        server.stop()
        raise
    return server


def start_mariadb() -> Server:
    prefix, uid, gid = _as_user("mysql")
    top = _workdir("preview-env-mariadb-", uid, gid)
    data, sock = top / "data", top / "mysqld.sock"
    init = subprocess.run(
        [
            *prefix,
            str(MARIADB_INSTALL),
            *("--no-defaults", f"--datadir={data}"),
            *("--skip-test-db", "--auth-root-authentication-method=socket"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        raise RuntimeError(f"mariadb-install-db failed: {init.stderr[-800:]}{init.stdout[-800:]}")
    port = free_port()
    log = top / "server.log"
    argv = [*prefix, str(MARIADB_SERVER), "--no-defaults", f"--datadir={data}"]
    argv += [f"--socket={sock}", f"--port={port}", f"--bind-address={LOOPBACK}"]
    argv += [
        f"--pid-file={top / 'mysqld.pid'}",
        "--skip-name-resolve",
        "--innodb-flush-log-at-trx-commit=0",
    ]
    argv += ["--skip-log-bin", f"--log-error={log}"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server("mysql", port, "branchadmin", PASSWORD, top, process)
    try:
        log.touch()
        _wait_tcp(port, process, "mariadbd", log)
        sql = (
            f"CREATE USER 'branchadmin'@'%' IDENTIFIED BY '{PASSWORD}'; "
            "GRANT ALL ON *.* TO 'branchadmin'@'%' WITH GRANT OPTION;"
        )
        # As the OS user that owns root@localhost's unix_socket authentication.
        user = pwd.getpwuid(os.geteuid()).pw_name
        subprocess.run(
            [str(MARIADB_CLIENT), "--no-defaults", f"--socket={sock}", f"--user={user}", "-e", sql],
            check=True,
            capture_output=True,
        )
    except BaseException:
        server.stop()
        raise
    return server
