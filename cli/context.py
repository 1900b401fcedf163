"""Global options shared by every command, and the one error boundary."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console

from adapters.settings import Settings
from preview_stack.errors import PreviewError

P = ParamSpec("P")
R = TypeVar("R")

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
# Piped output (CI logs, `| grep`) gets a wide console so tables are never cut.
out_console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else Settings()


def handles_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn our errors into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except PreviewError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


StaleLockAfter = Annotated[
    str,
    typer.Option(
        help="take over a stack lock this old (at least 40m, longer than any update); a lock "
        "whose holder is provably gone (its record: this boot, PID namespace and host, process "
        "not running) is taken over at once"
    ),
]


def check_stale_threshold(seconds: float) -> None:
    """A threshold shorter than the longest update could take a live update's lock."""
    from preview_stack.errors import BadInput
    from preview_stack.reaping import MIN_STALE_LOCK_SECONDS

    if seconds < MIN_STALE_LOCK_SECONDS:
        raise BadInput(
            f"--stale-lock-after {int(seconds)}s is shorter than the longest update "
            f"({MIN_STALE_LOCK_SECONDS // 60}m) and could take a live update's lock; "
            f"use {MIN_STALE_LOCK_SECONDS // 60}m or more (provably dead holders are recovered "
            "at once anyway)"
        )


def stale_lock_seconds(text: str) -> float:
    """--stale-lock-after parsed (default 1h when empty) and checked (see below)."""
    from preview_stack.reaping import DEFAULT_STALE_LOCK_SECONDS
    from preview_stack.ttl import parse_duration

    seconds = parse_duration(text, allow_infinite=False) or DEFAULT_STALE_LOCK_SECONDS
    check_stale_threshold(seconds)
    return seconds
