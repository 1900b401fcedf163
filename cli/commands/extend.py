"""`preview-env extend`: move an environment's expiry (absolute UTC time)."""

from __future__ import annotations

from typing import Annotated

import typer

from adapters.automation import connect
from adapters.k8s.reader import CachedReader
from cli import render
from cli.context import handles_errors, settings
from cli.output import Format, Progress
from preview_stack import naming
from preview_stack.changes import SetExpiry
from preview_stack.errors import BadInput, NotFound
from preview_stack.results import ExtendResult
from preview_stack.ttl import parse_duration


@handles_errors
def extend(
    ctx: typer.Context,
    key: Annotated[str, typer.Option("-k", "--key", help="environment key")],
    ttl: Annotated[str | None, typer.Option(help="new TTL from now: 2h, 90m or infinite")] = None,
    by: Annotated[str | None, typer.Option(help="add to the current expiry: 30m, 1h")] = None,
    output: Annotated[Format, typer.Option("-o", "--output")] = Format.text,
) -> None:
    """Set the expiry to now + --ttl, or push it back --by a duration."""
    if (ttl is None) == (by is None):
        raise BadInput("give exactly one of --ttl DURATION or --by DURATION")
    problem = naming.key_problem(key)
    if problem:
        raise BadInput(f"invalid key: {problem}")
    if ttl is not None:
        change = SetExpiry(key=key, ttl_seconds=parse_duration(ttl))
    else:
        added = parse_duration(by or "", allow_infinite=False)
        change = SetExpiry(key=key, by_seconds=added)
    opts = settings(ctx)
    cluster, stacks = connect(opts)
    progress = Progress(enabled=output is Format.text, verbose=opts.verbose)
    try:
        applied = stacks.apply(
            key,
            change,
            CachedReader(cluster),
            on_event=progress.on_event,
            on_output=progress.on_output,
            create=False,
        )
    except NotFound:
        raise NotFound(
            f"no environment {key!r} (never started, cleaned or already reaped); "
            f"see `preview-env status`"
        ) from None
    updated = applied.after
    assert updated is not None
    result = ExtendResult(key=key, expires_at=updated.expires_at)
    render.extend(result, text=output is Format.text)
