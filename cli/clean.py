"""`preview-env clean`: destroy an environment (or one target's pods). Idempotent."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.context import StaleLockAfter, check_stale_threshold, handles_errors, out_console, settings
from cli.output import Format, Progress, print_json
from cli.stacks import connect
from cli.start import CachedReader
from preview_stack import naming
from preview_stack.changes import RemoveTarget
from preview_stack.errors import BadInput, NotFound
from preview_stack.reaping import DEFAULT_STALE_LOCK_SECONDS
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

    stale = parse_duration(stale_lock_after, allow_infinite=False) or DEFAULT_STALE_LOCK_SECONDS
    check_stale_threshold(stale)
    if key not in stacks.environments():
        # Objects labelled with this key but owned by another backend's stack are not ours.
        return _nothing(text, key, f"this backend has no environment {key!r}")

    if target is not None:
        progress.line(f"Removing {target} from {key}...")
        try:
            applied = stacks.apply(
                key,
                RemoveTarget(target),
                CachedReader(cluster),
                on_event=progress.on_event,
                on_output=progress.on_output,
                create=False,
                stale_lock_after=stale,
            )
        except NotFound:
            return _nothing(text, key, f"this backend has no environment {key!r}")
        before = applied.before
        if before is None:
            return _nothing(text, key, f"no environment {key!r}")
        _rest, dropped = before.without(target)
        if not dropped:
            targets = ", ".join(s.display_target for s in before.services)
            return _nothing(text, key, f"{key!r} has no target {target!r} (targets: {targets})")
        removed = [s.display_target for s in dropped]
        if applied.after is not None:
            return _report(
                text,
                key,
                cleaned=True,
                removed=removed,
                message=f"Removed {', '.join(removed)} from {key}.",
            )
        return _report(
            text,
            key,
            cleaned=True,
            removed=removed,
            message=f"Removed {', '.join(removed)}, the last target: environment {key} is gone.",
        )

    progress.line(f"Destroying preview environment: {key}")
    destroyed = stacks.destroy(
        key,
        CachedReader(cluster),
        on_event=progress.on_event,
        on_output=progress.on_output,
        stale_lock_after=stale,
    )
    if not destroyed:
        return _nothing(text, key, f"this backend has no environment {key!r}")
    return _report(
        text,
        key,
        cleaned=True,
        removed=["all"],
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
