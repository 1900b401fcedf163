"""Start-up cost: the CLI loads Pulumi's Automation API only when a command runs `pulumi`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_cli_loads_without_pulumi() -> None:
    # Every command module is imported by the app; `status` (checkpoint reads) and the
    # reaper's scan must not pay for pulumi, grpc and protobuf.
    code = (
        "import sys, cli.app\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pulumi', 'pulumi_kubernetes', 'grpc'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_the_lazy_automation_api_is_the_real_one() -> None:
    from pulumi import automation

    from adapters import automation as stacks

    assert stacks.auto.CommandError is automation.CommandError
    made = stacks._stack_class()
    assert issubclass(made, automation.Stack)  # type: ignore[arg-type]
