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


@pytest.fixture(scope="session")
def cli(testbed: Testbed) -> Cli:
    """Run `python -m cli ARGS` in a subprocess against the test bed."""

    def run(
        *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
    ) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
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
