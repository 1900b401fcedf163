"""A stack's Pulumi locks in a self-managed backend, and the holder records preview-env
keeps beside them: listed, read and removed one object at a time.

Pulumi's diy backends (file, S3 and PostgreSQL alike, through gocloud's blob API) keep a
held stack lock as `.pulumi/locks/<org>/<project>/<stack>/<id>.json` (pid, username,
hostname, timestamp), one object per holder; `pulumi cancel` removes every one of them.
A stale lock's takeover removes exactly the lock it judged, through this store, so a
fresh lock taken meanwhile (by another id) is never touched.

Pulumi's lock says nothing that survives PID namespaces (containers and CI runners share
host names), so the update preview-env runs writes who holds it, once the lock is there:
`.pulumi/preview-env/holders/<org>/<project>/<stack>/<id>.json` (boot id, PID namespace,
PID and its start time), read by a later takeover (preview_stack.reaping).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

from preview_stack import backends
from preview_stack.reaping import Here, Holder, Lock

ORGANIZATION = "organization"  # the only organization of a DIY backend
LOCKS = ".pulumi/locks"
HOLDERS = ".pulumi/preview-env/holders"


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


def _folder(kind: str, project: str, stack: str) -> str:
    return f"{kind}/{ORGANIZATION}/{project}/{stack}"


class FileLocks:
    """A `file://` backend's lock files."""

    def __init__(self, root: Path, project: str) -> None:
        self.root, self.project = root, project

    def _path(self, kind: str, stack: str, name: str = "") -> Path:
        return self.root / _folder(kind, self.project, stack) / name

    def locks(self, stack: str) -> list[tuple[str, str, str]]:
        folder = self._path(LOCKS, stack)
        found = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                found.append((path.name, str(path), path.read_text()))
            except OSError:
                continue  # released while we looked
        return found

    def delete_lock(self, stack: str, name: str) -> None:
        self._path(LOCKS, stack, name).unlink(missing_ok=True)

    def read_holder(self, stack: str, name: str) -> str | None:
        try:
            return self._path(HOLDERS, stack, name).read_text()
        except OSError:
            return None

    def write_holder(self, stack: str, name: str, text: str) -> None:
        path = self._path(HOLDERS, stack, name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{name}.{os.getpid()}")
        partial.write_text(text)
        partial.replace(path)

    def delete_holder(self, stack: str, name: str) -> None:
        self._path(HOLDERS, stack, name).unlink(missing_ok=True)


class S3Locks:
    """An S3 backend's lock objects (credentials as `pulumi` finds them: adapters.backend.s3)."""

    def __init__(self, url: str, project: str) -> None:
        from adapters.backend.s3 import client_and_prefix  # S3 client only for S3 backends

        self.client, self.bucket, self.prefix = client_and_prefix(url)
        self.project = project

    def _key(self, kind: str, stack: str, name: str = "") -> str:
        return f"{self.prefix}{_folder(kind, self.project, stack)}/{name}"

    def locks(self, stack: str) -> list[tuple[str, str, str]]:
        found = []
        for item in self.client.list_objects(self.bucket, prefix=self._key(LOCKS, stack)):
            key = item.object_name or ""
            if not key.endswith(".json"):
                continue
            text = self._get(key)
            if text is not None:
                found.append((key.rsplit("/", 1)[-1], f"s3://{self.bucket}/{key}", text))
        return sorted(found)

    def _get(self, key: str) -> str | None:
        from minio.error import MinioException

        try:
            response = self.client.get_object(self.bucket, key)
        except MinioException:
            return None  # released while we looked
        try:
            return response.data.decode("utf-8", "replace")
        finally:
            response.close()
            response.release_conn()

    def delete_lock(self, stack: str, name: str) -> None:
        self.client.remove_object(self.bucket, self._key(LOCKS, stack, name))

    def read_holder(self, stack: str, name: str) -> str | None:
        return self._get(self._key(HOLDERS, stack, name))

    def write_holder(self, stack: str, name: str, text: str) -> None:
        import io

        data = text.encode()
        self.client.put_object(
            self.bucket, self._key(HOLDERS, stack, name), io.BytesIO(data), len(data)
        )

    def delete_holder(self, stack: str, name: str) -> None:
        self.client.remove_object(self.bucket, self._key(HOLDERS, stack, name))


class PostgresLocks:
    """A PostgreSQL backend's lock rows: Pulumi keeps each blob as a row of its table
    (`table` parameter, default `pulumi_state`): `key`, and `data` = {"data": base64}."""

    def __init__(self, url: str, project: str) -> None:
        parsed = urlparse(url)
        params = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        self.table = params.get("table", "pulumi_state")
        if not self.table.replace("_", "").replace(".", "").isalnum():
            raise OSError(f"unexpected table name {self.table!r}")
        # One PostgreSQL client for the project: psycopg (libpq), as the db copy reads with.
        self.connect_args: dict[str, Any] = {
            "user": unquote(parsed.username or os.environ.get("PGUSER", "postgres")),
            "password": unquote(parsed.password) if parsed.password else None,
            "host": parsed.hostname or "localhost",
            "port": parsed.port or 5432,
            "dbname": unquote(parsed.path.lstrip("/")) or "postgres",
            "sslmode": params.get("sslmode", "require"),
            "connect_timeout": 10,
        }
        # Pulumi prefixes every key of a non-file backend with its URL's path (here the
        # database name): `postgres/.pulumi/locks/...`.
        path = parsed.path.strip("/")
        self.prefix = f"{path}/" if path else ""
        self.project = project

    def _run(self, sql: str, **values: str) -> list[list[object]]:
        import psycopg
        from psycopg.conninfo import make_conninfo

        try:
            conninfo = make_conninfo(**self.connect_args)
            connection = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise OSError(f"PostgreSQL backend: {str(exc).strip().splitlines()[0]}") from None
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, values)
                rows = cursor.fetchall() if cursor.description else []
            return [list(row) for row in rows]
        except psycopg.Error as exc:
            raise OSError(f"PostgreSQL backend: {str(exc).strip().splitlines()[0]}") from None
        finally:
            connection.close()

    @staticmethod
    def _decode(data: object) -> str:
        document = json.loads(data) if isinstance(data, str) else data
        raw = document.get("data", "") if isinstance(document, dict) else ""
        return base64.b64decode(raw).decode("utf-8", "replace")

    def _key(self, kind: str, stack: str, name: str = "") -> str:
        return f"{self.prefix}{_folder(kind, self.project, stack)}/{name}"

    def locks(self, stack: str) -> list[tuple[str, str, str]]:
        prefix = self._key(LOCKS, stack)
        rows = self._run(
            f"SELECT key, data FROM {self.table} WHERE starts_with(key, %(prefix)s)", prefix=prefix
        )
        found = []
        for key, data in rows:
            name = str(key)[len(prefix) :]
            if "/" not in name and name.endswith(".json"):
                found.append((name, f"postgres table {self.table}: {key}", self._decode(data)))
        return sorted(found)

    def delete_lock(self, stack: str, name: str) -> None:
        self._run(
            f"DELETE FROM {self.table} WHERE key = %(key)s", key=self._key(LOCKS, stack, name)
        )

    def read_holder(self, stack: str, name: str) -> str | None:
        rows = self._run(
            f"SELECT data FROM {self.table} WHERE key = %(key)s",
            key=self._key(HOLDERS, stack, name),
        )
        return self._decode(rows[0][0]) if rows else None

    def write_holder(self, stack: str, name: str, text: str) -> None:
        data = json.dumps({"data": base64.b64encode(text.encode()).decode()})
        self._run(
            f"INSERT INTO {self.table} (key, data) VALUES (%(key)s, CAST(%(data)s AS json)) "
            "ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, updated_at = now()",
            key=self._key(HOLDERS, stack, name),
            data=data,
        )

    def delete_holder(self, stack: str, name: str) -> None:
        self._run(
            f"DELETE FROM {self.table} WHERE key = %(key)s", key=self._key(HOLDERS, stack, name)
        )


def open_locks(backend: str, project: str) -> LockStore | None:
    """The lock store of a self-managed backend; None for Pulumi Cloud (whose updates are
    leased by the service) and blob stores this code does not read (gs, azblob)."""
    root = backends.file_backend_root(backend)
    if root is not None:
        return FileLocks(root, project)
    kind = backends.kind(backend)
    try:
        if kind == "s3":
            return S3Locks(backend, project)
        if kind == "postgres":
            return PostgresLocks(backend, project)
    except (OSError, ValueError):
        return None
    return None


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
