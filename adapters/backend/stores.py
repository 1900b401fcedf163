"""The one client of a self-managed backend's store, for its checkpoints and its lock
files alike: a directory, an S3 bucket (MinIO client) or a PostgreSQL table (psycopg)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from adapters.backend.checkpoints import CheckpointStore
from adapters.backend.files import FileStore
from adapters.backend.locks import LockStore
from preview_stack.backends import Backend


class Store(LockStore, Protocol):
    def checkpoints(self) -> CheckpointStore | None:
        """This store when its checkpoints can be read directly as `pulumi` reads them
        (adapters.backend.checkpoints); None when `pulumi` must read them."""
        ...


def open_store(
    backend: Backend, project: str, env: Mapping[str, str] | None = None
) -> Store | None:
    """The store of `backend`; None for Pulumi Cloud (whose updates are leased by the
    service), blob stores this code does not read (gs, azblob) and URLs it cannot use."""
    if backend.file_root is not None:
        return FileStore(backend.file_root, project)
    try:
        if backend.s3 is not None:
            from adapters.backend.s3 import S3Store  # the S3 client only for S3 backends

            return S3Store(backend.s3, project, env)
        if backend.postgres is not None:
            from adapters.backend.postgres import PostgresStore

            return PostgresStore(backend.postgres, project)
    except (OSError, ValueError):
        return None
    return None


def open_checkpoints(
    backend: Backend, project: str, env: Mapping[str, str] | None = None
) -> CheckpointStore | None:
    """The store of `backend` when its checkpoints can be read directly; None otherwise."""
    store = open_store(backend, project, env)
    return store.checkpoints() if store is not None else None
