"""Where the outside systems are: the global options every front door passes to
`adapters.automation.connect` (the backend URL flag, kubeconfig and context)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    backend: str | None = None  # resolved by adapters.backend.resolve
    kubeconfig: str | None = None
    context: str | None = None
    verbose: bool = False
