"""Waiting for the cluster or a process to reach a state."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll `check` until it holds or `timeout` seconds pass; the last answer is returned."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.5)
    return check()
