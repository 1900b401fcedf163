"""`python -m testbed` as a subprocess, and whether a process it started is gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO


def testbed_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m testbed ARGS` from the repository; the caller checks the result."""
    return subprocess.run(
        [sys.executable, "-m", "testbed", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def gone(pid: int) -> bool:
    """True when `pid` exited (a zombie awaiting its parent counts as gone)."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return True


# Not a test, though its name starts with "test" (pytest collects what test modules import).
testbed_cli.__test__ = False  # type: ignore[attr-defined]
