"""Read a stack's outputs from the checkpoint a self-managed backend stores, without `pulumi`.

A DIY backend (file, S3) keeps each stack's latest state as one JSON document,
`.pulumi/stacks/<project>/<stack>.json` (gzipped as `.json.gz` when PULUMI_DIY_BACKEND_GZIP
is set, zstd-compressed as `.json.zst` when PULUMI_DIY_BACKEND_ZSTD is). Its root
`pulumi:pulumi:Stack` resource holds the outputs `pulumi stack output` prints, so reading
it is the same read without one process per stack. Only the non-secret `publicSpec` is
used: secrets stay encrypted and keep needing `pulumi`. Anything not recognised comes back
as UNREADABLE and the caller asks `pulumi` instead.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from typing import Any, Final

import yaml
import zstandard
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

# The names of a stack's checkpoint as Pulumi v3.274 writes it (plain, gzip, zstd).
STACK_SUFFIXES = (".json", ".json.gz", ".json.zst")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
# Other files Pulumi and its blob drivers keep next to checkpoints: backups (`.bak`),
# gocloud fileblob's attributes (`.attrs`) and temporary writes (`.<hex>.tmp`), and
# PULUMI_RETAIN_CHECKPOINTS copies (`.json[.gz|.zst].<unix nanoseconds>`).
_BOOKKEEPING = re.compile(r"\.json(\.gz|\.zst)?(\.bak|\.[0-9]+|\.[0-9a-f]+\.tmp)*(\.attrs)?$")


class Unknown:
    """A file in the stacks folder whose name no Pulumi version this code knows writes."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = Unknown()


def stack_file_key(name: str) -> str | Unknown | None:
    """The stack a file of `.pulumi/stacks/<project>/` is the checkpoint of; None for the
    bookkeeping files Pulumi keeps beside them; UNKNOWN for anything else (a format this
    code cannot list: the caller must ask `pulumi`, never skip it)."""
    for suffix in STACK_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    if _BOOKKEEPING.search(name) and not name.startswith(".json"):
        return None
    return UNKNOWN


def layout_is_known(meta: str | bytes | None) -> bool:
    """Whether a backend's `.pulumi/meta.yaml` says the project-scoped layout this code
    reads (version 1); a missing or unreadable file says nothing."""
    try:
        document = yaml.safe_load(meta) if meta is not None else None
    except yaml.YAMLError:
        return False
    return isinstance(document, dict) and document.get("version") == 1


def decompressed(raw: bytes) -> bytes:
    """Checkpoint bytes as written plain, gzipped or zstd-compressed (Go's encoders stream
    zstd without a content size, so it is read as a stream). Raises OSError, EOFError or
    zstandard.ZstdError for a truncated or corrupt file."""
    if raw[:2] == GZIP_MAGIC:
        return gzip.decompress(raw)
    if raw[:4] == ZSTD_MAGIC:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as reader:
            return reader.read()
    return raw


def stack_outputs(raw: bytes) -> dict[str, Any] | Unreadable:
    """The root stack's outputs in checkpoint bytes (plain, gzipped or zstd JSON); {} for a
    stack that holds nothing yet; UNREADABLE for a format this code does not know."""
    try:
        document = json.loads(decompressed(raw))
    except (OSError, EOFError, ValueError, zstandard.ZstdError):
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
