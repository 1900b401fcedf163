"""A PostgreSQL backend's store: lock rows and holder records in Pulumi's table, at the
keys preview_stack.backends names, through psycopg (the project's one PostgreSQL client,
as the database copy reads with). Pulumi keeps each blob as a row: `key`, and `data` =
{"data": base64}. Checkpoints are not read here: `pulumi` reads them."""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import unquote

from adapters.backend.checkpoints import CheckpointStore
from preview_stack import backends
from preview_stack.backends import PostgresLocation


class PostgresStore:
    """The rows of one backend's table under its key prefix (the database name)."""

    def __init__(self, location: PostgresLocation, project: str) -> None:
        if not location.safe_table:
            raise OSError(f"unexpected table name {location.table!r}")
        self.table, self.prefix, self.project = location.table, location.prefix, project
        self.connect_args: dict[str, Any] = {
            "user": location.user or unquote(os.environ.get("PGUSER", "postgres")),
            "password": location.password,
            "host": location.host,
            "port": location.port,
            "dbname": location.dbname,
            "sslmode": location.sslmode,
            "connect_timeout": 10,
        }

    def checkpoints(self) -> CheckpointStore | None:
        """None: a PostgreSQL backend's stacks are listed and read by `pulumi`."""
        return None

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

    def _lock(self, stack: str, name: str = "") -> str:
        return f"{self.prefix}{backends.locks_folder(self.project, stack)}/{name}"

    def _holder(self, stack: str, name: str) -> str:
        return f"{self.prefix}{backends.holders_folder(self.project, stack)}/{name}"

    def locks(self, stack: str) -> list[tuple[str, str, str]]:
        prefix = self._lock(stack)
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
        self._run(f"DELETE FROM {self.table} WHERE key = %(key)s", key=self._lock(stack, name))

    def read_holder(self, stack: str, name: str) -> str | None:
        rows = self._run(
            f"SELECT data FROM {self.table} WHERE key = %(key)s", key=self._holder(stack, name)
        )
        return self._decode(rows[0][0]) if rows else None

    def write_holder(self, stack: str, name: str, text: str) -> None:
        data = json.dumps({"data": base64.b64encode(text.encode()).decode()})
        self._run(
            f"INSERT INTO {self.table} (key, data) VALUES (%(key)s, CAST(%(data)s AS json)) "
            "ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, updated_at = now()",
            key=self._holder(stack, name),
            data=data,
        )

    def delete_holder(self, stack: str, name: str) -> None:
        self._run(f"DELETE FROM {self.table} WHERE key = %(key)s", key=self._holder(stack, name))
