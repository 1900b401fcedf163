"""`preview-env status`: every environment in the backend (or one), with live pod state."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.context import handles_errors, out_console, settings
from cli.output import Format, print_json
from cli.stacks import connect
from preview_stack import naming
from preview_stack.status import summarize


@handles_errors
def status(
    ctx: typer.Context,
    key: Annotated[str | None, typer.Option("-k", "--key", help="only this environment")] = None,
    output: Annotated[Format, typer.Option("-o", "--output")] = Format.text,
) -> None:
    """List environments: pods, readiness, TTL remaining and state.

    Costs one `pulumi` process and two API calls whatever the number of environments.
    """
    opts = settings(ctx)
    cluster, stacks = connect(opts)
    keys = stacks.environments()

    def ours(obj: dict[str, Any]) -> bool:
        """Records and pods of this backend's stacks; other backends' keys are theirs."""
        labels = obj.get("metadata", {}).get("labels") or {}
        found = labels.get(naming.LABEL_KEY, "")
        return found in keys and labels.get(naming.LABEL_STACK) == stacks.stack_id(found)

    summaries = summarize(
        records=[r for r in cluster.records(key) if ours(r)],
        pods=[p for p in cluster.preview_pods(key) if ours(p)],
        stacks=keys,
        now=dt.datetime.now(dt.UTC),
        only_key=key,
    )
    if output is Format.json:
        print_json([s.model_dump(mode="json", by_alias=True) for s in summaries])
        return
    if not summaries:
        out_console.print(
            f"No preview environment with key {key!r}." if key else "No preview environments."
        )
        return
    table = Table(box=None, pad_edge=False)
    for column in (
        "KEY",
        "STATE",
        "TTL",
        "POD",
        "NAMESPACE",
        "TARGET",
        "IMAGE",
        "READY",
        "TRAFFIC",
    ):
        table.add_column(column, no_wrap=True)
    for env in summaries:
        state = env.state if not env.reason else f"{env.state}: {env.reason}"
        if not env.pods:
            table.add_row(
                env.key, state, env.ttl, "-", ",".join(env.namespaces) or "-", "-", "-", "-", "-"
            )
        for index, pod in enumerate(env.pods):
            ready = "yes" if pod.ready else f"no ({pod.reason})"
            first = index == 0
            table.add_row(
                env.key if first else "",
                state if first else "",
                env.ttl if first else "",
                pod.name,
                pod.namespace,
                pod.target,
                pod.image,
                ready,
                pod.traffic or "-",
            )
    out_console.print(table)
    for env in summaries:
        for link in env.links:
            out_console.print(f"share link for {env.key}: {link}")
