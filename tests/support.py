"""Small helpers shared by the cluster tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll `check` until it holds or `timeout` seconds pass; the last answer is returned."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.5)
    return check()


def apply_unschedulable_target(testbed: Any, name: str, namespace: str = "staging") -> None:
    """A Deployment whose pods can never be scheduled: under kwok, the stand-in for pods
    that never become Ready (an unpullable image, a crash loop)."""
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"disktype": "none"},
                    "containers": [{"name": name, "image": f"{name}:1"}],
                },
            },
        },
    }
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


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
