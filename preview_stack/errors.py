"""One error hierarchy; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from preview_stack.changes import Applied


class PreviewError(Exception):
    """Base class: `str(error)` is the user-facing one-liner, `exit_code` the process code."""

    exit_code = 1


class BadInput(PreviewError):
    """The user's config, flags or key are wrong; nothing was created."""

    exit_code = 2


class NotFound(PreviewError):
    """A target, container or namespace named by the user does not exist."""

    exit_code = 2


class Busy(PreviewError):
    """Another update holds the environment's stack; `locks` names the holders."""

    def __init__(self, message: str, *, locks: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.locks = list(locks)


class DeployFailed(PreviewError):
    """Pulumi or the cluster could not make the environment live. `applied` is what the
    change saw under the lock (None: it never ran), so a failed start can undo itself."""

    def __init__(self, message: str, *, applied: Applied | None = None) -> None:
        super().__init__(message)
        self.applied = applied


class Unreachable(PreviewError):
    """The cluster or the backend cannot be reached, or refused our credentials."""
