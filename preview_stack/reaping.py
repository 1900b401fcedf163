"""Which environments are due for reaping, and when a stack lock is stale (pure).

The reaper finds expired environments from their record ConfigMaps (one API call, no
`pulumi` process per environment) and recovers locks left by killed processes by one rule:
a lock is stale when it is older than the threshold AND its holder is provably gone (a
process on this host that no longer runs) or runs on another host (whose liveness we cannot
check, so age alone decides there: pick a threshold longer than your longest update).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from preview_stack import naming
from preview_stack.ttl import parse_rfc3339

DEFAULT_STALE_LOCK_SECONDS = 30 * 60


@dataclass(frozen=True)
class Due:
    key: str
    expires_at: dt.datetime


def expired(records: Sequence[Mapping[str, Any]], now: dt.datetime) -> list[Due]:
    """Environments whose expiry has passed, oldest first. `now` is computed once per pass."""
    due: dict[str, Due] = {}
    for record in records:
        meta = record.get("metadata", {})
        key = (meta.get("labels") or {}).get(naming.LABEL_KEY)
        raw = (meta.get("annotations") or {}).get(naming.ANNOTATION_EXPIRES_AT)
        if not key or not raw or raw == "never":
            continue
        try:
            moment = parse_rfc3339(raw)
        except ValueError:
            continue
        if moment <= now:
            due[key] = Due(key=key, expires_at=moment)
    return sorted(due.values(), key=lambda d: (d.expires_at, d.key))


@dataclass(frozen=True)
class Lock:
    """A Pulumi stack lock as the file-based backends write it."""

    pid: int
    hostname: str
    timestamp: dt.datetime
    path: str


def lock_is_stale(
    lock: Lock,
    *,
    now: dt.datetime,
    this_host: str,
    pid_alive: Callable[[int], bool],
    threshold_seconds: float,
) -> bool:
    if (now - lock.timestamp).total_seconds() < threshold_seconds:
        return False
    if lock.hostname == this_host:
        return not pid_alive(lock.pid)
    return True
