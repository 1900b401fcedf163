"""Which environments are due for reaping, and when a stack lock is stale (pure).

The reaper finds candidates in the backend (never in the cluster's records, which anyone
with a namespace could plant); the re-check under the stack's lock decides. A lock is
taken over by one rule, the same on every backend: its holder is provably gone, or the
lock is older than the threshold, which is always longer than the longest update
preview-env runs (creation timeouts are capped at MAX_CREATION_TIMEOUT_SECONDS, and one
update may wait for a branch server, its copy Job and the preview in turn).

"Provably gone" needs more than Pulumi's lock (host name and PID): containers and CI
runners share host names but not PID namespaces. The update that holds a lock records
its process beside it (Holder: boot id, PID namespace, PID and that PID's start time);
only a process on the same boot, in the same PID namespace and on the same host, that
finds no process with that PID and start time, may call the holder gone.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from preview_stack.ttl import parse_rfc3339

# The longest a preview-env update may wait for one object to become ready. One update
# waits for at most three in turn (a database branch's server, its copy Job, then the
# preview that reads it), plus a few minutes of engine and API time: a lock younger than
# MIN_STALE_LOCK_SECONDS may be live.
MAX_CREATION_TIMEOUT_SECONDS = 10 * 60
SEQUENTIAL_WAITS = 3
MIN_STALE_LOCK_SECONDS = SEQUENTIAL_WAITS * MAX_CREATION_TIMEOUT_SECONDS + 10 * 60
DEFAULT_STALE_LOCK_SECONDS = 60 * 60
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


@dataclass(frozen=True)
class Holder:
    """The process that holds a lock, as the update that took it recorded it: what
    identifies a process across PID namespaces and PID reuse."""

    boot_id: str
    pid_namespace: str
    pid: int
    start_time: int  # clock ticks after boot (/proc/<pid>/stat field 22)
    hostname: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "bootId": self.boot_id,
                "pidNamespace": self.pid_namespace,
                "pid": self.pid,
                "startTime": self.start_time,
                "hostname": self.hostname,
            }
        )


def holder_from_json(text: str | None) -> Holder | None:
    """A holder record; None when missing or not one."""
    if not text:
        return None
    try:
        doc = json.loads(text)
        return Holder(
            boot_id=str(doc["bootId"]),
            pid_namespace=str(doc["pidNamespace"]),
            pid=int(doc["pid"]),
            start_time=int(doc["startTime"]),
            hostname=str(doc["hostname"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Here:
    """Where the judging process runs: its boot, PID namespace and host name (empty
    boot id or namespace when they cannot be read: then nothing is provable here)."""

    boot_id: str
    pid_namespace: str
    hostname: str


def holder_is_gone(
    lock: Lock,
    holder: Holder | None,
    *,
    here: Here,
    start_time_of: Callable[[int], int | None],
) -> bool:
    """Provably gone: the lock's own holder record (same PID and host as the lock) says it
    ran on this boot, in this PID namespace, on this host, and no process with that PID
    and start time runs. Anything less (no record, another namespace or boot) proves
    nothing: a process we cannot see may still hold the lock."""
    if holder is None or not here.boot_id or not here.pid_namespace:
        return False
    if (holder.pid, holder.hostname) != (lock.pid, lock.hostname):
        return False
    if (holder.boot_id, holder.pid_namespace, holder.hostname) != (
        here.boot_id,
        here.pid_namespace,
        here.hostname,
    ):
        return False
    return start_time_of(holder.pid) != holder.start_time


def lock_is_stale(
    lock: Lock,
    *,
    now: dt.datetime,
    holder: Holder | None,
    here: Here,
    start_time_of: Callable[[int], int | None],
    threshold_seconds: float,
) -> bool:
    """Gone for sure (holder_is_gone), or older than any live update can be."""
    if holder_is_gone(lock, holder, here=here, start_time_of=start_time_of):
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
