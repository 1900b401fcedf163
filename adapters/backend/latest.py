"""Read an environment's spec from the backend, the authority, while the lock is held.

The Pulumi program calls this when the engine runs it, that is after the update took the
stack's lock: what it reads is the latest deployed spec, not a copy read before the lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping

from preview_stack import backends, naming
from preview_stack.errors import Unreachable
from preview_stack.spec import EnvironmentSpec


def read_latest_spec(
    key: str, *, organization: str, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> EnvironmentSpec | None:
    """The `spec` output of stack `key` as last deployed; None for a new or emptied stack."""
    pulumi = shutil.which("pulumi", path=(env or os.environ).get("PATH")) or "pulumi"
    done = subprocess.run(
        [
            pulumi,
            "stack",
            "output",
            "--json",
            "--show-secrets",
            "--non-interactive",
            "--stack",
            f"{organization}/{naming.PROJECT}/{key}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )
    if done.returncode != 0:
        if backends.wrong_passphrase(done.stderr):
            raise Unreachable(
                backends.wrong_passphrase_message(f"the secrets of environment {key!r}")
            )
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise Unreachable(f"cannot read environment {key!r} from the backend: {last}")
    raw = json.loads(done.stdout or "{}").get("spec")
    return EnvironmentSpec.model_validate(raw) if raw else None
