"""Teammates sharing one cluster and one backend (a file, PostgreSQL or S3 store), each
through the real CLI with their own HOME, PULUMI_HOME and host name."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.backends import SharedBackends
from tests.support.cli import Result, cli_argv, cli_env
from tests.support.paths import REPO
from tests.support.stacks import stack_names

BACKEND_KINDS = ("file", "postgres", "s3")


@dataclass(frozen=True)
class Backend:
    kind: str
    url: str
    env: dict[str, str]

    def stack_keys(self) -> set[str]:
        """The environment stacks this backend holds (asked of Pulumi, the authority)."""
        names = stack_names({"PULUMI_BACKEND_URL": self.url, **self.env})
        return {name.rsplit("/", 1)[-1] for name in names}


def make_backend(kind: str, request: pytest.FixtureRequest, tmp: Path) -> Backend:
    """A backend of `kind`: a directory under `tmp`, or the session's shared servers."""
    env = {"PULUMI_CONFIG_PASSPHRASE": "team-secret"}
    if kind == "file":
        return Backend(kind, f"file://{tmp}", env)
    shared: SharedBackends = request.getfixturevalue("shared_backends")
    if kind == "s3":
        env.update(shared.s3_env)
    return Backend(kind, shared.urls()[kind], env)


@dataclass
class User:
    """A teammate: own HOME and PULUMI_HOME, own host name (a UTS namespace), one backend."""

    name: str
    host: str
    backend: Backend
    home: Path

    def env(self) -> dict[str, str]:
        return cli_env(
            {
                "HOME": str(self.home),
                "PULUMI_HOME": str(self.home / ".pulumi"),
                "PULUMI_BACKEND_URL": self.backend.url,
                "PREVIEW_ENV_OWNER": self.name,
                **self.backend.env,
            }
        )

    def argv(self, *args: str) -> list[str]:
        return [
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.host,
            *cli_argv(*args),
        ]

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> Result:
        done = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env={**self.env(), **(env or {})},
            cwd=REPO,
            timeout=timeout,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            env={**self.env(), **(env or {})},
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
