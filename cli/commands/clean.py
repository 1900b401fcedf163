"""`preview-env clean`: destroy an environment (or one target's pods). Idempotent."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from adapters.automation import connect
from adapters.k8s.reader import CachedReader
from cli import render
from cli.context import (
    StaleLockAfter,
    err_console,
    handles_errors,
    settings,
    stale_lock_seconds,
)
from cli.output import Format, Progress
from preview_stack import naming
from preview_stack.changes import RemoveTarget
from preview_stack.errors import BadInput, NotFound, PreviewError
from preview_stack.results import BulkCleanResult, CleanFailure, CleanResult
from preview_stack.status import matches


@handles_errors
def clean(
    ctx: typer.Context,
    key: Annotated[str | None, typer.Option("-k", "--key", help="environment key")] = None,
    glob: Annotated[
        str | None,
        typer.Option("--glob", help="every environment whose key matches this shell glob"),
    ] = None,
    owner: Annotated[
        str | None, typer.Option("--owner", help="every environment of this owner")
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="with --glob/--owner: do not ask on a terminal")
    ] = False,
    target: Annotated[
        str | None,
        typer.Option("-t", "--target", help="only this target's pods, e.g. deployment/users"),
    ] = None,
    stale_lock_after: StaleLockAfter = "1h",
    output: Annotated[Format, typer.Option("-o", "--output")] = Format.text,
) -> None:
    """Destroy an environment and remove its stack. An unknown key is not an error.

    Objects already deleted by hand are fine. A lock left by a killed update is recovered
    once it is older than --stale-lock-after and its holder is gone. --glob and --owner
    select several environments (asking first on a terminal, unless --yes).
    """
    if key is not None and (glob is not None or owner is not None):
        raise BadInput(
            "-k/--key and --glob/--owner are exclusive: give one environment or a selection"
        )
    if key is None and glob is None and owner is None:
        raise BadInput(
            "give -k KEY, or select environments with --glob PATTERN and/or --owner NAME"
        )
    if key is None:
        if target is not None:
            raise BadInput("-t/--target needs -k/--key: it removes one target of one environment")
        return _bulk(ctx, glob, owner, yes=yes, stale_lock_after=stale_lock_after, output=output)
    problem = naming.key_problem(key)
    if problem:
        raise BadInput(f"invalid key: {problem}")
    opts = settings(ctx)
    text = output is Format.text
    progress = Progress(enabled=text, verbose=opts.verbose)
    cluster, stacks = connect(opts)

    stale = stale_lock_seconds(stale_lock_after)
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


def _bulk(
    ctx: typer.Context,
    glob: str | None,
    owner: str | None,
    *,
    yes: bool,
    stale_lock_after: str,
    output: Format,
) -> None:
    """Destroy every environment of this backend matching --glob and --owner, one by one;
    one failure never stops the others (exit 1 at the end)."""
    opts = settings(ctx)
    text = output is Format.text
    progress = Progress(enabled=text, verbose=opts.verbose)
    cluster, stacks = connect(opts)
    stale = stale_lock_seconds(stale_lock_after)
    keys = [k for k in stacks.environments() if matches(k, None, glob=glob, owner_filter=None)]
    if owner is not None:
        keys = [k for k, spec in stacks.specs(keys).items() if stacks.owner(k, spec) == owner]
    keys = sorted(keys)
    wanted = " and ".join(
        part
        for part in (f"keys matching {glob!r}" if glob else "", f"owner {owner!r}" if owner else "")
        if part
    )
    if not keys:
        nothing = BulkCleanResult(message=f"Nothing to clean: no environment with {wanted}.")
        return render.bulk_clean(nothing, text=text)
    if not yes and sys.stdin.isatty():
        err_console.print(f"Environments with {wanted}: {', '.join(keys)}", markup=False)
        if not typer.confirm(f"Destroy these {len(keys)} environment(s)?", err=True):
            raise typer.Exit(1)
    cleaned: list[str] = []
    failed: list[CleanFailure] = []
    for each in keys:
        progress.line(f"Destroying preview environment: {each}")
        try:
            stacks.destroy(
                each,
                CachedReader(cluster),
                on_event=progress.on_event,
                on_output=progress.on_output,
                stale_lock_after=stale,
            )
        except PreviewError as exc:
            failed.append(CleanFailure(key=each, reason=str(exc)))
            progress.line(f"  failed: {exc}")
            continue
        cleaned.append(each)
    message = f"Destroyed {len(cleaned)} environment(s)" + (
        f"; {len(failed)} failed" if failed else ""
    )
    render.bulk_clean(BulkCleanResult(cleaned=cleaned, failed=failed, message=message), text=text)
    if failed:
        raise typer.Exit(1)


def _report(text: bool, key: str, *, cleaned: bool, removed: list[str], message: str) -> None:
    result = CleanResult(key=key, cleaned=cleaned, removed=removed, message=message)
    render.clean(result, text=text)


def _nothing(text: bool, key: str, why: str) -> None:
    """Cleaning what is not there succeeds: say so, exit 0."""
    _report(text, key, cleaned=False, removed=[], message=f"Nothing to clean: {why}.")
