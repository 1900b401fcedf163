"""Platform stacks through `pulumi up` (naming.platform_stack: `kind.ns.name`): each kind's
program, declared from the stack's name and config by the same function its CLI command
runs."""

from __future__ import annotations

from collections.abc import Callable

import pulumi

from preview_stack.errors import BadInput

# kind -> program(namespace, name, config); each platform command registers its own.
PROGRAMS: dict[str, Callable[[str, str, pulumi.Config], None]] = {}


def run(kind: str, namespace: str, name: str, cfg: pulumi.Config) -> None:
    program = PROGRAMS.get(kind)
    if program is None:
        raise BadInput(f"platform stacks of kind {kind!r} cannot be declared by `pulumi up` yet")
    program(namespace, name, cfg)
