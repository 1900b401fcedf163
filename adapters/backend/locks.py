"""A stack's Pulumi locks in a self-managed backend, the holder records preview-env keeps
beside them, and this machine's processes that may hold them.

Pulumi's diy backends (file, S3 and PostgreSQL alike, through gocloud's blob API) keep a
held stack lock as `.pulumi/locks/<org>/<project>/<stack>/<id>.json` (pid, username,
hostname, timestamp), one object per holder; `pulumi cancel` removes every one of them.
A stale lock's takeover removes exactly the lock it judged, through the backend's store
(adapters.backend.stores), so a fresh lock taken meanwhile (by another id) is never touched.

Pulumi's lock says nothing that survives PID namespaces (containers and CI runners share
host names), so the update preview-env runs writes who holds it, once the lock is there:
`.pulumi/preview-env/holders/<org>/<project>/<stack>/<id>.json` (boot id, PID namespace,
PID and its start time), read by a later takeover (preview_stack.reaping).
"""

from __future__ import annotations

import os
from typing import Protocol

from preview_stack.reaping import Here, Holder, Lock


class LockStore(Protocol):
    def locks(self, stack: str) -> list[tuple[str, str, str]]:
        """(name, where, text) of each lock object of `stack` (name: `<id>.json`; where:
        how to show it)."""
        ...

    def delete_lock(self, stack: str, name: str) -> None:
        """Remove that one lock object (gone already is fine)."""
        ...

    def read_holder(self, stack: str, name: str) -> str | None: ...

    def write_holder(self, stack: str, name: str, text: str) -> None: ...

    def delete_holder(self, stack: str, name: str) -> None: ...


# ---------------------------------------------------------------- this machine's processes
def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    text = _read(f"/proc/{pid}/stat")
    if ")" not in text:
        return None
    return text.rsplit(")", 1)[1].split()


def here() -> Here:
    """This process's boot, PID namespace and host. /proc must be this namespace's own
    (as `unshare --pid --mount-proc` mounts it): otherwise PIDs read there are another
    namespace's and nothing can be proven here."""
    import socket

    try:
        namespace = os.readlink("/proc/self/ns/pid")
        own_proc = int(os.readlink("/proc/self")) == os.getpid()
    except (OSError, ValueError):
        namespace, own_proc = "", False
    boot = _read("/proc/sys/kernel/random/boot_id")
    return Here(
        boot_id=boot if own_proc else "",
        pid_namespace=namespace if own_proc else "",
        hostname=socket.gethostname(),
    )


def start_time_of(pid: int) -> int | None:
    """Clock ticks after boot at which `pid` started; None when no such process runs."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 of /proc/<pid>/stat
    except (IndexError, ValueError):
        return None


def descends_from_us(pid: int, depth: int = 5) -> bool:
    """Whether `pid` is a child (or grandchild...) of this process: the `pulumi` an update
    of ours runs (a wrapper script may stand between)."""
    mine = os.getpid()
    for _ in range(depth):
        fields = _stat(pid)
        if not fields:
            return False
        try:
            pid = int(fields[1])  # field 4: the parent
        except (IndexError, ValueError):
            return False
        if pid == mine:
            return True
        if pid <= 1:
            return False
    return False


def our_holder(lock: Lock) -> Holder | None:
    """The holder record of `lock` when a process of ours on this host holds it."""
    where = here()
    if not where.boot_id or lock.hostname != where.hostname or not descends_from_us(lock.pid):
        return None
    started = start_time_of(lock.pid)
    if started is None:
        return None
    return Holder(where.boot_id, where.pid_namespace, lock.pid, started, where.hostname)
