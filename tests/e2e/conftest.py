"""Fixtures for end-to-end tests through the real `preview-env` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


Cli = Callable[..., Result]


def cli_argv(*args: str) -> list[str]:
    """The real entry point, `python -m cli`, with these arguments."""
    return [sys.executable, "-m", "cli", *args]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **(extra or {})}


def spawn_cli(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """The CLI as a background process (for kills, signals and concurrent starts)."""
    return subprocess.Popen(cli_argv(*args), cwd=REPO, env=cli_env(), text=True, **popen)


@pytest.fixture(scope="session")
def cli(testbed: Testbed) -> Cli:
    """Run `python -m cli ARGS` in a subprocess against the test bed."""

    def run(
        *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
    ) -> Result:
        done = subprocess.run(
            cli_argv(*args),
            capture_output=True,
            text=True,
            env=cli_env(env),
            cwd=cwd or REPO,
            timeout=timeout,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    return run


@dataclass
class Kube:
    core: Any
    apps: Any
    discovery: Any
    custom: Any


@pytest.fixture(scope="session")
def kube(testbed: Testbed) -> Kube:
    api = kconfig.new_client_from_config(config_file=str(testbed.kubeconfig))
    return Kube(
        kclient.CoreV1Api(api),
        kclient.AppsV1Api(api),
        kclient.DiscoveryV1Api(api),
        kclient.CustomObjectsApi(api),
    )


@pytest.fixture(scope="session")
def staging(testbed: Testbed) -> str:
    """examples/staging/ applied and rolled out; returns the namespace."""
    testbed.kubectl("apply", "-f", str(EXAMPLES / "staging"))
    testbed.kubectl(
        "-n",
        "staging",
        "rollout",
        "status",
        "deployment/users",
        "deployment/orders",
        "deployment/frontend",
        "--timeout=90s",
    )
    return "staging"
