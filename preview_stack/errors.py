"""One error hierarchy; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations

from collections.abc import Sequence


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
    """Pulumi or the cluster could not make the environment live."""


class Unreachable(PreviewError):
    """The cluster or the backend cannot be reached, or refused our credentials."""
