"""Which environments are due for reaping, and when a stack lock is stale (pure).

The reaper finds candidates in the backend (never in the cluster's records, which anyone
with a namespace could plant); the re-check under the stack's lock decides. A lock is
taken over by one rule, the same on every backend (Pulumi's lock error names holder, host,
PID and time everywhere): its holder is provably gone (a process on this host that no
longer runs), or the lock is older than the threshold, which is always longer than the
longest update preview-env runs (creation timeouts are capped at
MAX_CREATION_TIMEOUT_SECONDS).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from preview_stack.ttl import parse_rfc3339

DEFAULT_STALE_LOCK_SECONDS = 30 * 60
# The longest a preview-env update may wait for pods; an update adds at most a few minutes
# of engine and API time on top, so a lock younger than MIN_STALE_LOCK_SECONDS may be live.
MAX_CREATION_TIMEOUT_SECONDS = 10 * 60
MIN_STALE_LOCK_SECONDS = 15 * 60
_LOCK_LINE = re.compile(
    r"(?P<path>\S+?\.json)(?:\?\S*)?: created by (?P<user>\S+)@(?P<host>[^\s@]+) "
    r"\(pid (?P<pid>\d+)\) at (?P<time>\S+)"
)


@dataclass(frozen=True)
class Due:
    key: str
    expires_at: dt.datetime


def due_without_spec(expires_at: str | None, now: dt.datetime) -> dt.datetime | None:
    """When a stack with no committed spec is due, or None while it is not. A kept failed
    first start keeps the TTL its objects were declared with (`expires_at` from the stack's
    state: RFC 3339 or "never"); a stack whose state says nothing (emptied, or never
    deployed) is due at once: removing it is all that is left."""
    if expires_at == "never":
        return None
    if expires_at is None:
        return now
    moment = parse_rfc3339(expires_at)
    return moment if moment <= now else None


@dataclass(frozen=True)
class Lock:
    """A Pulumi stack lock, as every self-managed backend's lock error describes it."""

    pid: int
    hostname: str
    timestamp: dt.datetime
    path: str
    user: str = ""

    def describe(self) -> str:
        since = self.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.user}@{self.hostname} (pid {self.pid}) since {since}"


def parse_locks(message: str) -> list[Lock]:
    """The locks named in Pulumi's "the stack is currently locked" error, any backend."""
    found: dict[str, Lock] = {}
    for match in _LOCK_LINE.finditer(message):
        try:
            stamp = parse_rfc3339(match["time"])
        except ValueError:
            continue
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        found[match["path"]] = Lock(
            pid=int(match["pid"]),
            hostname=match["host"],
            timestamp=stamp,
            path=match["path"],
            user=match["user"],
        )
    return list(found.values())


def lock_is_stale(
    lock: Lock,
    *,
    now: dt.datetime,
    this_host: str,
    pid_alive: Callable[[int], bool],
    threshold_seconds: float,
) -> bool:
    """Gone for sure (same host, PID not running), or older than any live update can be."""
    if lock.hostname == this_host and not pid_alive(lock.pid):
        return True
    return (now - lock.timestamp).total_seconds() >= threshold_seconds


@dataclass(frozen=True)
class Expiring:
    key: str
    expires_at: dt.datetime
    owner: str


def expiring_within(
    expiries: Mapping[str, tuple[dt.datetime | None, str]], now: dt.datetime, seconds: float
) -> list[Expiring]:
    """Environments (key -> (expiry, owner)) still alive that expire within `seconds`:
    the ones to warn. Already due ones are the reaper's, infinite ones never expire."""
    horizon = now + dt.timedelta(seconds=seconds)
    found = [
        Expiring(key=key, expires_at=moment, owner=owner)
        for key, (moment, owner) in expiries.items()
        if moment is not None and now < moment <= horizon
    ]
    return sorted(found, key=lambda e: (e.expires_at, e.key))


def lock_from_json(text: str, path: str) -> Lock | None:
    """A lock file of Pulumi's diy backends (`.pulumi/locks/<org>/<project>/<stack>/*.json`:
    pid, username, hostname, timestamp); None when it cannot be read."""
    try:
        doc = json.loads(text)
        stamp = parse_rfc3339(str(doc["timestamp"]))
        return Lock(
            pid=int(doc["pid"]),
            hostname=str(doc["hostname"]),
            timestamp=stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC),
            path=path,
            user=str(doc.get("username", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None
