"""Where a self-managed backend keeps its stacks' checkpoints, listed and read directly.

One listing and one read per stack in this process replace `pulumi stack ls` and one
`pulumi stack output` per stack (a second each on a loaded machine). Only layouts checked
against Pulumi v3.274 are read: `file://` directories, and S3 buckets named with an
explicit `endpoint` and `use_path_style=true` read with the AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY of the environment. A store's `checkpoints()` gives None for
anything else (AWS profiles, instance roles, virtual-hosted buckets, other query
parameters, other backends) and the caller keeps asking `pulumi`; a store that fails
mid-way raises OSError and the caller asks `pulumi` for that read.
"""

from __future__ import annotations

from typing import Protocol

from preview_stack.checkpoints import Unknown, stack_file_key


class UnknownStackFile(OSError):
    """The stacks folder holds a file this code cannot tell the stack of (a format newer
    than this code): the listing must come from `pulumi`, never skip it."""


class CheckpointStore(Protocol):
    def stacks(self) -> dict[str, bool]:
        """Every stack of the project, mapped to whether its lock is held."""
        ...

    def read(self, key: str) -> bytes | None:
        """The checkpoint bytes of stack `key`; None when it has none."""
        ...


def stack_keys(names: list[str], where: str) -> set[str]:
    """The stacks whose checkpoints `names` (files of the stacks folder) are."""
    keys = set()
    for name in names:
        found = stack_file_key(name)
        if isinstance(found, Unknown):
            raise UnknownStackFile(
                f"unknown file {name!r} in {where}: not a checkpoint name this version of "
                "preview-env reads (.json, .json.gz, .json.zst)"
            )
        if found is not None:
            keys.add(found)
    return keys
