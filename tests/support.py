"""Small helpers shared by the cluster tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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
