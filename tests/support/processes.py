"""Killing a CLI mid-run the way a crash would, without leaving its provider plugin behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any


def _orphaned_providers() -> set[int]:
    """PIDs of pulumi-resource-kubernetes processes whose parent died (reparented to 1)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"pulumi-resource-kubernetes" in cmdline and ppid == 1:
            found.add(int(proc.name))
    return found


def kill_process_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a CLI started with start_new_session=True and everything in its group, then
    the provider plugin it left behind (plugins run in a group of their own)."""
    before = _orphaned_providers()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    for pid in _orphaned_providers() - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
