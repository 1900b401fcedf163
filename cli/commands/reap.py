"""`preview-env reap`: destroy every expired environment, once or every DURATION.

What is due is read from the backend (one `pulumi stack output` per stack, several at
once), never from the cluster. Destroys run in parallel; one failure never stops the others.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType
from typing import Annotated, Literal

import typer
from pydantic import BaseModel

from adapters.automation import Stacks, connect
from adapters.k8s.cluster import Cluster
from adapters.k8s.reader import CachedReader
from cli.context import (
    StaleLockAfter,
    err_console,
    handles_errors,
    out_console,
    settings,
    stale_lock_seconds,
)
from cli.output import Format, print_json
from preview_stack.changes import DestroyIfDue, NotDue
from preview_stack.errors import BadInput, Busy, NotFound, PreviewError
from preview_stack.reaping import Due, due_without_spec, expiring_within
from preview_stack.ttl import parse_duration, remaining, rfc3339

Outcome = Literal["reaped", "would-reap", "skipped", "failed"]


class ReapResult(BaseModel):
    key: str
    expiresAt: str
    outcome: Outcome
    reason: str | None = None


class RoundReport(BaseModel):
    startedAt: str
    results: list[ReapResult]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)


@dataclass
class Stopper:
    """Set by SIGTERM/SIGINT: finish in-flight destroys, start no new ones, then exit 0."""

    event: threading.Event = field(default_factory=threading.Event)

    def install(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            err_console.print(
                f"received {signal.Signals(signum).name}; finishing in-flight "
                "destroys, then stopping"
            )
            self.event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def reap_one(
    cluster: Cluster,
    stacks: Stacks,
    due: Due,
    *,
    dry_run: bool,
    stale_lock_after: float,
    stopper: Stopper,
) -> ReapResult:
    """Destroy one due environment after re-checking, under its lock, that it is still due.

    Whatever goes wrong here (ours, the cluster's, Pulumi's) becomes this environment's
    result: one environment never stops the round.
    """

    def result(outcome: Outcome, reason: str | None = None) -> ReapResult:
        return ReapResult(
            key=due.key, expiresAt=rfc3339(due.expires_at), outcome=outcome, reason=reason
        )

    if dry_run:
        return result("would-reap")
    if stopper.event.is_set():
        return result("skipped", "stopping; left for the next round")
    try:
        stacks.apply(  # declares nothing; leftovers and the stack go with it
            due.key,
            DestroyIfDue(),
            CachedReader(cluster),
            on_event=lambda _e: None,
            on_output=lambda _l: None,
            create=False,  # no refresh: see Stacks.destroy
            lock_wait=0,
            stale_lock_after=stale_lock_after,
        )
    except NotDue as exc:
        return result("skipped", str(exc))
    except NotFound:
        return result("skipped", "already gone")
    except Busy:
        return result("skipped", "locked by a running update; retried next round")
    except PreviewError as exc:
        return result("failed", str(exc))
    except Exception as exc:
        return result("failed", f"{type(exc).__name__}: {str(exc).strip()[:300]}")
    return result("reaped")


def find_due(stacks: Stacks, now: dt.datetime) -> tuple[list[Due], list[ReapResult]]:
    """Due environments of this backend, from its stacks and their specs as the backend
    holds them (records in the cluster are never read: anyone with a namespace could plant
    one). An emptied stack is due at once: removing it is all that is left; a kept failed
    first start (objects, no spec) when the expiry in its state passes. The re-check under
    the lock decides in the end. A stack whose spec cannot be read is a failure of this
    round (exit 1), never skipped in silence: it may be due and leaking."""
    due, unreadable = [], []
    busy = stacks.environments()
    for key, spec in stacks.specs(busy).items():
        if isinstance(spec, PreviewError):
            unreadable.append(
                ReapResult(key=key, expiresAt="unknown", outcome="failed", reason=str(spec))
            )
            continue
        if spec is None:
            # No committed spec: a kept failed first start keeps the TTL its objects were
            # declared with (read from the stack's state); else due at once. A running first
            # start is due too: its lock makes it skipped.
            kept = None if busy.get(key) else stacks.unfinished(key)
            expires = kept.expires_at if kept is not None and kept.resources else None
            moment = due_without_spec(expires, now)
            if moment is not None:
                due.append(Due(key=key, expires_at=moment))
            continue
        moment = spec.expiry()
        if moment is not None and moment <= now:
            due.append(Due(key=key, expires_at=moment))
    return sorted(due, key=lambda d: (d.expires_at, d.key)), unreadable


def run_round(
    cluster: Cluster,
    stacks: Stacks,
    *,
    parallel: int,
    dry_run: bool,
    stale_lock_after: float,
    stopper: Stopper,
) -> RoundReport:
    now = dt.datetime.now(dt.UTC)  # once per pass
    due, unreadable = find_due(stacks, now)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(
            pool.map(
                lambda d: reap_one(
                    cluster,
                    stacks,
                    d,
                    dry_run=dry_run,
                    stale_lock_after=stale_lock_after,
                    stopper=stopper,
                ),
                due,
            )
        )
    return RoundReport(startedAt=rfc3339(now), results=results + unreadable)


def _print_round(report: RoundReport, text: bool) -> None:
    if not text:
        print_json(report)
        return
    for r in report.results:
        when = "expiry unknown" if r.expiresAt == "unknown" else f"expired {r.expiresAt}"
        line = f"{r.outcome:<10} {r.key}  ({when})"
        out_console.print(line + (f": {r.reason}" if r.reason else ""), markup=False)
    out_console.print(
        f"reaped {report.count('reaped')}, would reap {report.count('would-reap')}, "
        f"skipped {report.count('skipped')}, failed {report.count('failed')}"
    )


class Expiring(BaseModel):
    key: str
    owner: str
    expiresAt: str
    remaining: str


class WarnReport(BaseModel):
    checkedAt: str
    warnBefore: str
    expiring: list[Expiring]


def _warn(ctx: typer.Context, horizon: int, shown: str, text: bool) -> None:
    """The environments expiring within `horizon` seconds, from the backend's specs."""
    _cluster, stacks = connect(settings(ctx))
    now = dt.datetime.now(dt.UTC)
    expiries = {}
    for key, spec in stacks.specs(stacks.environments()).items():
        if isinstance(spec, PreviewError):
            err_console.print(f"warning: {spec}")
        elif spec is not None:
            expiries[key] = (spec.expiry(), spec.owner)
    report = WarnReport(
        checkedAt=rfc3339(now),
        warnBefore=shown,
        expiring=[
            Expiring(
                key=e.key,
                owner=e.owner,
                expiresAt=rfc3339(e.expires_at),
                remaining=remaining(e.expires_at, now),
            )
            for e in expiring_within(expiries, now, horizon)
        ],
    )
    if not text:
        print_json(report)
        return
    for e in report.expiring:
        out_console.print(
            f"expiring {e.key}  (owner {e.owner}, expires {e.expiresAt}, {e.remaining})",
            markup=False,
        )
    out_console.print(f"{len(report.expiring)} environment(s) expire within {shown}")


@handles_errors
def reap(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report, remove nothing")] = False,
    parallel: Annotated[int, typer.Option(help="destroys at once")] = 4,
    every: Annotated[
        str | None,
        typer.Option(
            help="keep running, one round every DURATION (e.g. 5m); stops on SIGTERM/SIGINT"
        ),
    ] = None,
    stale_lock_after: StaleLockAfter = "1h",
    warn_before: Annotated[
        str | None,
        typer.Option(
            "--warn-before",
            help="only list the environments that expire within DURATION (e.g. 2h), "
            "touching nothing: for warning their owners",
        ),
    ] = None,
    output: Annotated[Format, typer.Option("-o", "--output")] = Format.text,
) -> None:
    """Destroy every expired environment and remove its stack. Never touches unexpired ones.

    Exit 0 when everything due was reaped (or skipped because a live update holds it), 1 when
    something due failed or a stack's spec could not be read. With --warn-before, list what
    expires soon instead (exit 0).
    """
    if warn_before is not None:
        horizon = parse_duration(warn_before, allow_infinite=False)
        if not horizon:
            raise BadInput(f"--warn-before {warn_before!r}: give a duration such as 2h or 30m")
        if every is not None or dry_run:
            raise BadInput("--warn-before lists and removes nothing: drop --every/--dry-run")
        _warn(ctx, horizon, warn_before, output is Format.text)
        return
    if parallel < 1:
        raise BadInput(f"--parallel {parallel}: use 1 or more")
    interval = parse_duration(every, allow_infinite=False) if every else None
    stale = stale_lock_seconds(stale_lock_after)
    opts = settings(ctx)
    cluster, stacks = connect(opts)
    stopper = Stopper()
    stopper.install()
    text = output is Format.text
    failed = False
    while True:
        try:
            report = run_round(
                cluster,
                stacks,
                parallel=parallel,
                dry_run=dry_run,
                stale_lock_after=stale,
                stopper=stopper,
            )
        except PreviewError as exc:
            if interval is None:
                raise
            err_console.print(f"error: {exc} (retrying next round)")
        except Exception as exc:
            if interval is None:
                raise
            err_console.print(f"error: {type(exc).__name__}: {exc} (retrying next round)")
        else:
            _print_round(report, text)
            failed = failed or report.count("failed") > 0
        if interval is None or stopper.event.wait(interval):
            break
    if failed and interval is None:
        raise typer.Exit(1)
