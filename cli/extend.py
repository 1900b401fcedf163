"""`preview-env extend`: move an environment's expiry (absolute UTC time)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from cli.context import handles_errors, out_console, settings
from cli.output import Format, Progress, print_json
from cli.stacks import connect
from cli.start import CachedReader, existing_spec
from preview_stack import naming
from preview_stack.errors import BadInput, NotFound
from preview_stack.program import declare
from preview_stack.ttl import INFINITE, format_seconds, parse_duration, rfc3339


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
    opts = settings(ctx)
    cluster, stacks = connect(opts)
    spec = existing_spec(cluster, stacks, key)
    if spec is None:
        raise NotFound(
            f"no environment {key!r} (never started, cleaned or already reaped); "
            f"see `preview-env status`"
        )
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    current = spec.expiry()
    # An expired environment that the reaper has not removed yet can still be rescued.
    if ttl is not None:
        seconds = parse_duration(ttl)
        expires = None if seconds is None else now + dt.timedelta(seconds=seconds)
    else:
        added = parse_duration(by or "", allow_infinite=False)
        if current is None:
            raise BadInput(f"environment {key!r} never expires; use --ttl to set an expiry")
        assert added is not None
        expires = current + dt.timedelta(seconds=added)
        seconds = int((expires - now).total_seconds())
    updated = spec.model_copy(
        update={"expires_at": rfc3339(expires) if expires else None, "ttl_seconds": seconds}
    )
    progress = Progress(enabled=output is Format.text, verbose=opts.verbose)
    stacks.up(
        key,
        lambda: declare(updated, CachedReader(cluster)),
        on_event=progress.on_event,
        on_output=progress.on_output,
    )
    if output is Format.json:
        print_json({"key": key, "expiresAt": updated.expires_at})
        return
    if expires is None:
        out_console.print(f"Environment {key} now never expires ({INFINITE}).")
    else:
        left = format_seconds(int((expires - now).total_seconds()))
        out_console.print(f"Environment {key} now expires at {updated.expires_at} (in {left}).")
