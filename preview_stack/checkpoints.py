"""Read a stack's outputs from the checkpoint a self-managed backend stores, without `pulumi`.

A DIY backend (file, S3) keeps each stack's latest state as one JSON document,
`.pulumi/stacks/<project>/<stack>.json` (gzipped as `.json.gz` when PULUMI_DIY_BACKEND_GZIP
is set). Its root `pulumi:pulumi:Stack` resource holds the outputs `pulumi stack output`
prints, so reading it is the same read without one process per stack. Only the non-secret
`publicSpec` is used: secrets stay encrypted and keep needing `pulumi`. Anything not
recognised comes back as UNREADABLE and the caller asks `pulumi` instead.
"""

from __future__ import annotations

import gzip
import json
from typing import Any, Final

from pydantic import ValidationError

from preview_stack.spec import EnvironmentSpec

# Checkpoint format versions Pulumi v3 writes (apitype.DeploymentSchemaVersionCurrent is 3;
# 4 adds feature flags, same layout).
KNOWN_VERSIONS = (3, 4)
STACK_TYPE = "pulumi:pulumi:Stack"
PUBLIC_SPEC = "publicSpec"
SPEC_IS_PUBLIC = "specIsPublic"
# Pulumi's marker of a secret value in state (sig.Secret).
SECRET_SIG = "4dabf18193072939515e22adb298388d"


class Unreadable:
    """What a checkpoint read gives when `pulumi` must answer instead."""

    def __repr__(self) -> str:
        return "UNREADABLE"


UNREADABLE: Final = Unreadable()


def stack_outputs(raw: bytes) -> dict[str, Any] | Unreadable:
    """The root stack's outputs in checkpoint bytes (plain or gzipped JSON); {} for a stack
    that holds nothing yet; UNREADABLE for a format this code does not know."""
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        document = json.loads(raw)
    except (OSError, EOFError, ValueError):
        return UNREADABLE  # truncated, or written while we read: let pulumi retry it
    if not isinstance(document, dict) or document.get("version") not in KNOWN_VERSIONS:
        return UNREADABLE
    checkpoint = document.get("checkpoint")
    if not isinstance(checkpoint, dict):
        return UNREADABLE
    latest = checkpoint.get("latest")
    if latest is None:
        return {}
    resources = latest.get("resources") if isinstance(latest, dict) else None
    if resources is None:
        return {}
    if not isinstance(resources, list):
        return UNREADABLE
    roots = [r for r in resources if isinstance(r, dict) and r.get("type") == STACK_TYPE]
    if len(roots) != 1:
        return {} if not roots else UNREADABLE
    outputs = roots[0].get("outputs") or {}
    return outputs if isinstance(outputs, dict) else UNREADABLE


def public_spec(outputs: dict[str, Any]) -> EnvironmentSpec | Unreadable | None:
    """The redacted spec the outputs carry: None when they say the stack holds nothing (no
    `spec`); UNREADABLE when `spec` is there without a plain `publicSpec` (a stack last
    deployed by an older version) or it does not validate."""
    if outputs.get("spec") is None:
        return None
    return _validated(outputs.get(PUBLIC_SPEC))


def full_spec(outputs: dict[str, Any]) -> EnvironmentSpec | Unreadable | None:
    """The complete spec when the outputs say nothing of it was redacted (no override
    values, files or passwords), else UNREADABLE: the secret `spec` needs `pulumi`."""
    if outputs.get("spec") is None:
        return None
    if outputs.get(SPEC_IS_PUBLIC) is not True:
        return UNREADABLE
    return _validated(outputs.get(PUBLIC_SPEC))


def _validated(raw: object) -> EnvironmentSpec | Unreadable:
    if not isinstance(raw, dict) or SECRET_SIG in raw:
        return UNREADABLE
    try:
        return EnvironmentSpec.model_validate(raw)
    except ValidationError:
        return UNREADABLE
