"""`preview-env clean`: destroy an environment (or one target's pods). Idempotent."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.context import StaleLockAfter, handles_errors, out_console, settings
from cli.output import Format, Progress, print_json
from cli.stacks import connect
from cli.start import CachedReader, existing_spec
from preview_stack import naming
from preview_stack.errors import BadInput
from preview_stack.program import declare
from preview_stack.ttl import parse_duration


@handles_errors
def clean(
    ctx: typer.Context,
    key: Annotated[str, typer.Option("-k", "--key", help="environment key")],
    target: Annotated[
        str | None,
        typer.Option("-t", "--target", help="only this target's pods, e.g. deployment/users"),
    ] = None,
    stale_lock_after: StaleLockAfter = "30m",
    output: Annotated[Format, typer.Option("-o", "--output")] = Format.text,
) -> None:
    """Destroy an environment and remove its stack. An unknown key is not an error.

    Objects already deleted by hand are fine. A lock left by a killed update is recovered
    once it is older than --stale-lock-after and its holder is gone.
    """
    problem = naming.key_problem(key)
    if problem:
        raise BadInput(f"invalid key: {problem}")
    opts = settings(ctx)
    text = output is Format.text
    progress = Progress(enabled=text, verbose=opts.verbose)
    cluster, stacks = connect(opts)

    removed: list[str] = []
    if target is not None:
        spec = existing_spec(cluster, stacks, key)
        if spec is None:
            return _nothing(text, key, f"no environment {key!r}")
        rest, dropped = spec.without(target)
        if not dropped:
            targets = ", ".join(s.display_target for s in spec.services)
            return _nothing(text, key, f"{key!r} has no target {target!r} (targets: {targets})")
        removed = [s.display_target for s in dropped]
        if rest.services:
            progress.line(f"Removing {', '.join(removed)} from {key}...")
            stacks.up(
                key,
                lambda: declare(rest, CachedReader(cluster)),
                on_event=progress.on_event,
                on_output=progress.on_output,
            )
            return _report(
                text,
                key,
                cleaned=True,
                removed=removed,
                message=f"Removed {', '.join(removed)} from {key}.",
            )
    progress.line(f"Destroying preview environment: {key}")
    stale = parse_duration(stale_lock_after, allow_infinite=False)
    destroyed = stacks.destroy(
        key, on_event=progress.on_event, on_output=progress.on_output, stale_lock_after=stale
    )
    leftovers = cluster.sweep(key)  # objects a killed update created but never recorded
    if not destroyed and not leftovers:
        return _nothing(text, key, f"no environment {key!r}")
    return _report(
        text,
        key,
        cleaned=True,
        removed=removed or ["all"],
        message=f"Preview environment {key} destroyed and its stack removed.",
    )


def _report(text: bool, key: str, *, cleaned: bool, removed: list[str], message: str) -> None:
    if text:
        out_console.print(message)
    else:
        print_json({"key": key, "cleaned": cleaned, "removed": removed, "message": message})


def _nothing(text: bool, key: str, why: str) -> None:
    """Cleaning what is not there succeeds: say so, exit 0."""
    _report(text, key, cleaned=False, removed=[], message=f"Nothing to clean: {why}.")
