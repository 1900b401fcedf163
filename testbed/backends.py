"""Shared Pulumi backends for the sharing tests: PostgreSQL (Debian's server) and an
S3-compatible object store (SeaweedFS, a real server built from its Go module).

Both listen on 127.0.0.1 only, keep their data in one temporary directory and are stopped
with the test bed that started them (they are its processes).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from testbed.cluster import LOOPBACK, Testbed, TestbedError, free_port
from testbed.toolchain import postgres_bin

S3_BUCKET = "preview-env-state"
PG_USER = "postgres"


@dataclass(frozen=True)
class SharedBackends:
    postgres_url: str
    s3_url: str
    s3_env: dict[str, str]
    data_dir: Path

    def urls(self) -> dict[str, str]:
        return {"postgres": self.postgres_url, "s3": self.s3_url}


def _free_port_pair(offset: int = 10000) -> int:
    """A port free together with port + offset (SeaweedFS puts gRPC there)."""
    for _ in range(50):
        port = free_port()
        if port + offset < 65536:
            with socket.socket() as probe:
                try:
                    probe.bind((LOOPBACK, port + offset))
                except OSError:
                    continue
            return port
    raise TestbedError("no free port pair for SeaweedFS")


def start_shared_backends(bed: Testbed, timeout: float = 90.0) -> SharedBackends:
    """Start PostgreSQL and SeaweedFS as processes of `bed`; wait until both serve."""
    deadline = time.monotonic() + timeout
    # PostgreSQL refuses to run as root and must reach its data directory: a directory in
    # /tmp owned by the postgres user, removed by stop_shared_backends.
    data = Path(tempfile.mkdtemp(prefix="preview-env-backends-"))
    os.chmod(data, 0o755)
    pg_url = _start_postgres(bed, data, deadline)
    s3_url, s3_env = _start_seaweedfs(bed, data, deadline)
    return SharedBackends(pg_url, s3_url, s3_env, data)


def stop_shared_backends(backends: SharedBackends) -> None:
    shutil.rmtree(backends.data_dir, ignore_errors=True)


def _start_postgres(bed: Testbed, data: Path, deadline: float) -> str:
    bindir = postgres_bin()
    if bindir is None:
        raise TestbedError("PostgreSQL is not installed (apt-get install postgresql)")
    user = pwd.getpwnam(PG_USER)
    pgdata, sockets = data / "pg", data / "pg-sockets"
    for d in (pgdata, sockets):
        d.mkdir()
        os.chown(d, user.pw_uid, user.pw_gid)
    as_postgres = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    server = [*as_postgres] if bed.detached else [*as_postgres, "--pdeathsig=SIGKILL"]
    init = subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", PG_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        raise TestbedError(f"initdb failed: {init.stderr.strip()[-500:]}")
    port = free_port()
    bed._spawn(
        "postgres",
        [
            *server,  # the uid change clears the bed's parent-death signal: set it again
            str(bindir / "postgres"),
            "-D",
            str(pgdata),
            "-h",
            LOOPBACK,
            "-p",
            str(port),
            "-k",
            str(sockets),
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ],
    )
    bed._wait("postgres", deadline, lambda: _tcp_accepts(port))
    return f"postgres://{PG_USER}@{LOOPBACK}:{port}/postgres?sslmode=disable"


def _start_seaweedfs(bed: Testbed, data: Path, deadline: float) -> tuple[str, dict[str, str]]:
    weed_dir = data / "seaweedfs"
    weed_dir.mkdir()
    master, volume, filer, s3 = (_free_port_pair() for _ in range(4))
    bed._spawn(
        "seaweedfs",
        [
            str(bed.toolchain.weed),
            "server",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-dir={weed_dir}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            "-volume.max=0",
            "-master.volumeSizeLimitMB=64",
            "-metricsPort=0",
        ],
    )
    endpoint = f"http://{LOOPBACK}:{s3}"
    bed._wait("seaweedfs s3", deadline, lambda: _create_bucket(endpoint))
    url = f"s3://{S3_BUCKET}?endpoint={endpoint}&use_path_style=true&region=us-east-1"
    env = {
        "AWS_ACCESS_KEY_ID": "testbed",
        "AWS_SECRET_ACCESS_KEY": "testbed",
        # SeaweedFS sends no response checksums; the AWS SDK would warn on every call.
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }
    return url, env


def _tcp_accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _create_bucket(endpoint: str) -> bool:
    request = urllib.request.Request(f"{endpoint}/{S3_BUCKET}", method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=3) as resp:
            return resp.status in (200, 204)
    except urllib.error.HTTPError as exc:
        return exc.code == 409  # BucketAlreadyOwnedByYou
    except (urllib.error.URLError, OSError):
        return False
