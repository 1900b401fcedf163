"""Which backend this process uses, and what names it: the file-system side of
preview_stack.backends (the logged-in backend, the private default directory, a file
backend's id kept in the backend itself)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from preview_stack.backends import BACKEND_ID_FILE, Backend
from preview_stack.errors import BadInput


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "preview-env"


def logged_in_backend() -> str | None:
    """The backend `pulumi login` chose, from PULUMI_HOME's credentials file."""
    home = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")
    try:
        current = json.loads((home / "credentials.json").read_text()).get("current")
    except (OSError, ValueError):
        return None
    return str(current) if current else None


def file_backend_root(url: str) -> Path | None:
    """The directory of a `file://` backend as Pulumi reads it (`~` expanded, a relative path
    taken from the working directory, query parameters dropped); None for other kinds."""
    root = Backend.parse(url).file_root
    return root.expanduser().resolve() if root is not None else None


def resolve(flag: str | None) -> Backend:
    """--backend, else PULUMI_BACKEND_URL, else the logged-in backend, else a local dir.

    File backends come back absolute (Pulumi runs inline programs from a temporary
    directory, so a relative path would point elsewhere), created and private (0700).
    """
    url = flag or os.environ.get("PULUMI_BACKEND_URL") or logged_in_backend()
    default = not url
    if not url:
        url = f"file://{default_state_dir() / 'backend'}"
    path = file_backend_root(url)
    if path is None:
        return Backend.parse(url)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if default:  # ours: private even if an older version created it readable
            path.parent.chmod(0o700)
            path.chmod(0o700)
    except OSError as exc:
        raise BadInput(
            f"backend {url} cannot be created: {exc.strerror}; pass --backend file://<writable dir>"
        ) from None
    if not os.access(path, os.W_OK):
        raise BadInput(f"backend {url} is not writable; pass --backend file://<writable dir>")
    query = url.split("?", 1)[1] if "?" in url else ""
    return Backend.parse(f"file://{path}" + (f"?{query}" if query else ""))


def identity(backend: Backend) -> str:
    """What names this backend in owner labels: the same for every client of one backend,
    different for two backends, never containing credentials.

    File backends get a random id kept in the backend itself: two laptops' backends at the
    same path are different backends, one shared directory is one backend.
    """
    if backend.file_root is None:
        return backend.url_identity
    marker = backend.file_root.expanduser().resolve() / BACKEND_ID_FILE
    try:
        return f"file:{marker.read_text().strip()}"
    except OSError:
        pass
    marker.parent.mkdir(parents=True, exist_ok=True)
    candidate = marker.with_name(f"{marker.name}.{uuid.uuid4().hex}")
    candidate.write_text(uuid.uuid4().hex)
    try:
        os.link(candidate, marker)  # atomic: the first writer's id wins
    except FileExistsError:
        pass
    finally:
        candidate.unlink(missing_ok=True)
    return f"file:{marker.read_text().strip()}"
