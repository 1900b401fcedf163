"""Fixtures for end-to-end tests through the real `preview-env` entry point."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kclient
from kubernetes import config as kconfig

from testbed import Testbed
from testbed.backends import SharedBackends, start_shared_backends, stop_shared_backends
from tests.support.cli import Cli, run_cli
from tests.support.kube import Kube
from tests.support.paths import EXAMPLES, REPO
from tests.support.teams import BACKEND_KINDS, Backend, User, make_backend


@pytest.fixture(scope="session")
def cli(testbed: Testbed) -> Cli:
    """Run `python -m cli ARGS` in a subprocess against the test bed."""
    return run_cli


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


# ---------------------------------------------------------------- teams on shared backends
@pytest.fixture(scope="session")
def shared_backends(testbed: Testbed) -> Iterator[SharedBackends]:
    """PostgreSQL and SeaweedFS (S3) on 127.0.0.1, stopped with the test bed."""
    backends = start_shared_backends(testbed)
    try:
        yield backends
    finally:
        stop_shared_backends(backends)


@pytest.fixture(params=BACKEND_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """Each sharing test runs on a file, a PostgreSQL and an S3 backend."""
    return make_backend(request.param, request, tmp_path_factory.mktemp("backend"))


@pytest.fixture
def team(backend: Backend, tmp_path: Path, testbed: Testbed) -> Callable[[str], User]:
    """`team("ann")`: a user on host `ann-host` sharing the test's backend and cluster."""

    def user(name: str, host: str | None = None) -> User:
        home = tmp_path / f"home-{name}"
        home.mkdir(exist_ok=True)
        return User(name, host or f"{name}-host", backend, home)

    return user


@pytest.fixture
def namespace(testbed: Testbed) -> Iterator[str]:
    """A namespace of the test's own (deleted afterwards, without waiting)."""
    name = f"t-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        testbed.kubectl("delete", "namespace", name, "--wait=false")


# ---------------------------------------------------------------- the `pulumi up` front door
@pytest.fixture
def stack_config() -> Iterator[Any]:
    """Write Pulumi.<key>.yaml next to Pulumi.yaml (after `stack init`); removed after."""
    written: list[Path] = []

    def write(key: str, config: dict[str, Any]) -> None:
        path = REPO / f"Pulumi.{key}.yaml"
        existing = yaml.safe_load(path.read_text()) if path.exists() else {}
        existing = existing or {}
        existing["config"] = {f"preview-env:{k}": v for k, v in config.items()}
        path.write_text(yaml.safe_dump(existing))
        written.append(path)

    yield write
    for path in written:
        path.unlink(missing_ok=True)
