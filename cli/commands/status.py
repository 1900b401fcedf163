"""`preview-env status`: every environment in the backend (or one), with live pod state."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from adapters.automation import connect
from cli import render
from cli.context import err_console, handles_errors, settings
from cli.output import StatusFormat
from preview_stack.errors import BadInput, NotFound
from preview_stack.inventory import (
    Selection,
    held_locks,
    read_inventory,
    sort_out,
    with_branches,
    with_splits,
)
from preview_stack.status import PROBE_GRACE_SECONDS, PROBE_GRACE_VAR, summarize
from preview_stack.ttl import parse_duration


@handles_errors
def status(
    ctx: typer.Context,
    key: Annotated[str | None, typer.Option("-k", "--key", help="only this environment")] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "-n", "--namespace", help="only environments with a preview in this namespace"
        ),
    ] = None,
    glob: Annotated[
        str | None, typer.Option("--glob", help="only keys matching this shell glob (pr-*)")
    ] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="only this owner's")] = None,
    output: Annotated[
        StatusFormat,
        typer.Option("-o", "--output", help="text, json, or markdown (a PR comment; needs -k)"),
    ] = StatusFormat.text,
    probe_grace: Annotated[
        str,
        typer.Option(
            "--probe-grace",
            envvar=PROBE_GRACE_VAR,
            show_envvar=True,
            help="a container running this long without becoming Ready counts as failing "
            "its readiness probe (not-ready); before that it is starting (45s, 2m; a "
            "bare number is minutes)",
        ),
    ] = f"{PROBE_GRACE_SECONDS}s",
) -> None:
    """List environments: state (starting, ready, not-ready, updating, expired, orphaned),
    pods, TTL remaining.

    What each environment is comes from the backend (the authority), never from records in
    the cluster; pods are listed cluster-wide, or per namespace for namespace-scoped users.
    """
    if output is StatusFormat.markdown and key is None:
        raise BadInput("-o markdown renders one environment: give -k KEY")
    try:
        grace = parse_duration(probe_grace, allow_infinite=False)
    except BadInput as exc:
        raise BadInput(f"--probe-grace ({PROBE_GRACE_VAR}): {exc}") from None
    cluster, stacks = connect(settings(ctx))
    chosen = Selection(key=key, namespace=namespace, glob=glob, owner=owner)
    inventory = read_inventory(stacks, chosen)
    # Orphans are looked for where we may list: cluster-wide, else the namespaces we know.
    live = cluster.live_objects(key, inventory.namespaces)
    found = sort_out(inventory, live, chosen, stacks.stack_id)
    for where in found.ignored_records:
        err_console.print(
            f"warning: ignored record {where}: not where its environment keeps its record "
            "(planted or stale); the backend is the authority"
        )
    locks = held_locks(stacks, inventory.stacks)
    summaries = summarize(
        specs=inventory.specs,
        pods=found.pods,
        stacks={k: busy or k in locks for k, busy in inventory.stacks.items()},
        now=dt.datetime.now(dt.UTC),
        only_key=key,
        unlisted=cluster.unlisted,
        routes=found.routes,
        locks=locks,
        orphans=found.orphans,
        probe_grace=grace or PROBE_GRACE_SECONDS,
        unfinished=inventory.unfinished,
        rollouts=found.rollouts,
    )
    branched = inventory.with_branches()
    if branched:
        jobs, copy_pods = cluster.copy_jobs(key, inventory.namespaces)
        summaries = with_branches(summaries, branched, jobs, copy_pods)
    summaries = with_splits(summaries, inventory.specs, cluster.keeper_status)
    if output is StatusFormat.markdown and not summaries:
        raise NotFound(f"no preview environment {key!r} in this backend")
    render.status(summaries, output, key)
