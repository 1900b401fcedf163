"""Fixtures for end-to-end tests through the real `preview-env` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kclient
from kubernetes import config as kconfig
from pulumi import automation as auto

from preview_stack import naming
from testbed import Testbed
from testbed.backends import SharedBackends, start_shared_backends, stop_shared_backends

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
    # No mesh accepts routes on the test bed: a short wait before `start` says so.
    return {"PREVIEW_ENV_ROUTE_WAIT": "1", **os.environ, "PYTHONPATH": str(REPO), **(extra or {})}


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


# ---------------------------------------------------------------- teams on shared backends
BACKEND_KINDS = ("file", "postgres", "s3")


@pytest.fixture(scope="session")
def shared_backends(testbed: Testbed) -> Iterator[SharedBackends]:
    """PostgreSQL and SeaweedFS (S3) on 127.0.0.1, stopped with the test bed."""
    backends = start_shared_backends(testbed)
    try:
        yield backends
    finally:
        stop_shared_backends(backends)


@dataclass(frozen=True)
class Backend:
    kind: str
    url: str
    env: dict[str, str]

    def stack_keys(self) -> set[str]:
        """The environment stacks this backend holds (asked of Pulumi, the authority)."""
        ws = auto.LocalWorkspace(
            env_vars={"PULUMI_BACKEND_URL": self.url, **self.env},
            project_settings=auto.ProjectSettings(name=naming.PROJECT, runtime="python"),
        )
        return {s.name.rsplit("/", 1)[-1] for s in ws.list_stacks()}


def make_backend(kind: str, request: pytest.FixtureRequest, tmp: Path) -> Backend:
    env = {"PULUMI_CONFIG_PASSPHRASE": "team-secret"}
    if kind == "file":
        return Backend(kind, f"file://{tmp}", env)
    shared: SharedBackends = request.getfixturevalue("shared_backends")
    if kind == "s3":
        env.update(shared.s3_env)
    return Backend(kind, shared.urls()[kind], env)


@pytest.fixture(params=BACKEND_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """Each sharing test runs on a file, a PostgreSQL and an S3 backend."""
    return make_backend(request.param, request, tmp_path_factory.mktemp("backend"))


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
def pulumi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pulumi", *args, "--cwd", str(REPO), "--non-interactive"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"},
    )


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
