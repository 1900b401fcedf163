"""The two front doors as subprocesses: `python -m cli` (the real entry point) and `pulumi`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.paths import REPO


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


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> Result:
    """Run `python -m cli ARGS` to completion in the current environment (the `cli` fixture)."""
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


def spawn_cli(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """The CLI as a background process (for kills, signals and concurrent starts)."""
    return subprocess.Popen(cli_argv(*args), cwd=REPO, env=cli_env(), text=True, **popen)


def start_argv(target: str, key: str, *extra: str, image: str | None = None) -> list[str]:
    """`start` of deployment/<target> in staging with JSON output (image acme/<target>:1)."""
    return [
        "start",
        "-t",
        f"deployment/{target}",
        "-n",
        "staging",
        "-i",
        image or f"acme/{target}:1",
        "-k",
        key,
        "--output",
        "json",
        *extra,
    ]


def pulumi(*args: str) -> subprocess.CompletedProcess[str]:
    """The `pulumi` CLI on the repository's Pulumi.yaml (the `pulumi up` front door)."""
    return subprocess.run(
        ["pulumi", *args, "--cwd", str(REPO), "--non-interactive"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"},
    )
