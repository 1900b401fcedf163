"""Where a self-managed backend keeps its stacks' checkpoints, listed and read directly.

One listing and one read per stack in this process replace `pulumi stack ls` and one
`pulumi stack output` per stack (a second each on a loaded machine). Only layouts checked
against Pulumi v3.274 are read; `open_store` gives None for anything else and the caller
keeps asking `pulumi`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import yaml

from preview_stack import backends

ORGANIZATION = "organization"  # the only organization of a DIY backend
SUFFIXES = (".json", ".json.gz")


class CheckpointStore(Protocol):
    def stacks(self) -> dict[str, bool]:
        """Every stack of the project, mapped to whether its lock is held."""
        ...

    def read(self, key: str) -> bytes | None:
        """The checkpoint bytes of stack `key`; None when it has none."""
        ...


class FileStore:
    """A `file://` backend: `.pulumi/stacks/<project>/<stack>.json[.gz]`, locks under
    `.pulumi/locks/<org>/<project>/<stack>/`."""

    def __init__(self, root: Path, project: str) -> None:
        self.stacks_dir = root / ".pulumi" / "stacks" / project
        self.locks_dir = root / ".pulumi" / "locks" / ORGANIZATION / project

    def stacks(self) -> dict[str, bool]:
        keys = set()
        try:
            names = [p.name for p in self.stacks_dir.iterdir()]
        except FileNotFoundError:
            return {}
        for name in names:
            for suffix in SUFFIXES:
                if name.endswith(suffix):
                    keys.add(name[: -len(suffix)])
        try:
            locked = {p.name for p in self.locks_dir.iterdir() if any(p.glob("*.json"))}
        except FileNotFoundError:
            locked = set()
        return {key: key in locked for key in sorted(keys)}

    def read(self, key: str) -> bytes | None:
        found = []
        for suffix in SUFFIXES:
            path = self.stacks_dir / f"{key}{suffix}"
            try:
                found.append((path.stat().st_mtime_ns, path.read_bytes()))
            except FileNotFoundError:
                continue
        return max(found)[1] if found else None  # Pulumi writes one; the newer if both


def open_store(backend: str, project: str) -> CheckpointStore | None:
    """The store of `backend` when its layout is the project-scoped one this code reads
    (`.pulumi/meta.yaml` version 1); None otherwise."""
    root = backends.file_backend_root(backend)
    if root is None:
        return None
    try:
        meta = yaml.safe_load((root / ".pulumi" / "meta.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != 1:
        return None
    return FileStore(root, project)
