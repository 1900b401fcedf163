"""A `file://` backend's store: checkpoints, lock files and holder records in its directory,
at the keys preview_stack.backends names."""

from __future__ import annotations

import os
from pathlib import Path

from adapters.backend.checkpoints import CheckpointStore, stack_keys
from preview_stack import backends
from preview_stack.checkpoints import layout_is_known


class FileStore:
    """`<root>/.pulumi/stacks/<project>/<stack>.json[.gz|.zst]`, locks and holder records
    under `<root>/.pulumi/locks/...` and `<root>/.pulumi/preview-env/holders/...`."""

    def __init__(self, root: Path, project: str) -> None:
        self.root, self.project = root, project
        self.stacks_dir = root / backends.stacks_folder(project)
        self.locks_dir = root / backends.locks_folder(project)

    def checkpoints(self) -> CheckpointStore | None:
        """This store when its layout is the project-scoped one this code reads."""
        try:
            meta = (self.root / backends.META).read_text()
        except OSError:
            return None
        return self if layout_is_known(meta) else None

    # ------------------------------------------------------------------ checkpoints
    def stacks(self) -> dict[str, bool]:
        try:
            # Pulumi lists files only (a folder here is too deep to be a stack).
            names = [p.name for p in self.stacks_dir.iterdir() if not p.is_dir()]
        except FileNotFoundError:
            return {}
        keys = stack_keys(names, str(self.stacks_dir))
        try:
            locked = {p.name for p in self.locks_dir.iterdir() if any(p.glob("*.json"))}
        except FileNotFoundError:
            locked = set()
        return {key: key in locked for key in sorted(keys)}

    def read(self, key: str) -> bytes | None:
        found = []
        for name in backends.checkpoint_keys(self.project, key):
            path = self.root / name
            try:
                found.append((path.stat().st_mtime_ns, path.read_bytes()))
            except FileNotFoundError:
                continue
        return max(found)[1] if found else None  # Pulumi writes one; the newer if both

    # ------------------------------------------------------------------ locks
    def locks(self, stack: str) -> list[tuple[str, str, str]]:
        folder = self.root / backends.locks_folder(self.project, stack)
        found = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                found.append((path.name, str(path), path.read_text()))
            except OSError:
                continue  # released while we looked
        return found

    def delete_lock(self, stack: str, name: str) -> None:
        (self.root / backends.locks_folder(self.project, stack) / name).unlink(missing_ok=True)

    def _holder(self, stack: str, name: str) -> Path:
        return self.root / backends.holders_folder(self.project, stack) / name

    def read_holder(self, stack: str, name: str) -> str | None:
        try:
            return self._holder(stack, name).read_text()
        except OSError:
            return None

    def write_holder(self, stack: str, name: str, text: str) -> None:
        path = self._holder(stack, name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{name}.{os.getpid()}")
        partial.write_text(text)
        partial.replace(path)

    def delete_holder(self, stack: str, name: str) -> None:
        self._holder(stack, name).unlink(missing_ok=True)
