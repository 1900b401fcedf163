"""`preview-env waypoint add|remove|list`: key routing inside the cluster without a mesh
(a waypoint in front of a Service, once per Service; see preview_stack.waypoints).

adapters.waypoint (the program) is imported when a command runs: loading the CLI must not
load Pulumi (tests/unit/test_imports.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from adapters.automation import connect
from adapters.k8s.cluster import Waypoints
from cli import render
from cli.context import handles_errors, settings
from cli.output import Format, Progress
from preview_stack import waypoints
from preview_stack.errors import BadInput

app = typer.Typer(
    help="Put a waypoint (Traefik) in front of a Service so previews get its key's requests "
    "inside the cluster, without a mesh.",
    no_args_is_help=True,
)
ServiceRef = Annotated[str, typer.Argument(help="the Service, as NAMESPACE/SERVICE")]


@app.command("add")
@handles_errors
def add(
    ctx: typer.Context,
    service: ServiceRef,
    image: Annotated[str, typer.Option(help="Traefik's image")] = waypoints.DEFAULT_IMAGE,
    replicas: Annotated[int, typer.Option(min=1, help="waypoint pods")] = 1,
    node_selector: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for the waypoint's pods (repeatable)")
    ] = None,
    toleration: Annotated[
        list[str] | None, typer.Option(help="KEY[=VALUE]:EFFECT (repeatable)")
    ] = None,
    output: Annotated[Format, typer.Option("-o", "--output")] = Format.text,
) -> None:
    """Put a waypoint in front of NAMESPACE/SERVICE (idempotent); the Service's selector
    moves to the waypoint only once it is Ready."""
    from adapters.waypoint import program, read_service, statuses, swap

    namespace, name = waypoints.parse_service_ref(service)
    options = waypoints.WaypointOptions(
        image=image,
        replicas=replicas,
        node_selector=waypoints.parse_node_selector(node_selector or []),
        tolerations=waypoints.parse_tolerations(toleration or []),
    )
    opts = settings(ctx)
    cluster, stacks = connect(opts)
    kube = Waypoints(cluster)
    found = read_service(kube, namespace, name)
    waypoints.check_service(found)
    if waypoints.selector_state(found) == "foreign":
        raise BadInput(waypoints.foreign_problem(found, "add"))
    if not cluster.has_gateway_api():
        raise BadInput("the cluster has no Gateway API (gateway.networking.k8s.io/v1): install it")
    names = waypoints.Names(namespace, name)
    progress = Progress(enabled=output is Format.text, verbose=opts.verbose)
    progress.line(f"Adding a waypoint in front of {namespace}/{name}...")
    stacks.apply_platform(
        names.stack,
        program(kube, namespace, name, options),
        on_event=progress.on_event,
        on_output=progress.on_output,
    )
    swap(kube, namespace, name)  # done by the update's hook; again when nothing changed
    listed = statuses(kube, stacks.platform_stacks(waypoints.KIND))
    render.waypoints([w for w in listed if w.service == f"{namespace}/{name}"], output)


@app.command("remove")
@handles_errors
def remove(
    ctx: typer.Context,
    service: ServiceRef,
    output: Annotated[Format, typer.Option("-o", "--output")] = Format.text,
) -> None:
    """Give NAMESPACE/SERVICE its own selector back, then delete the waypoint (idempotent)."""
    from adapters.waypoint import empty_program, restore

    namespace, name = waypoints.parse_service_ref(service)
    opts = settings(ctx)
    cluster, stacks = connect(opts)
    kube = Waypoints(cluster)
    names = waypoints.Names(namespace, name)
    progress = Progress(enabled=output is Format.text, verbose=opts.verbose)
    restored = restore(kube, namespace, name)
    had_stack = names.stack in stacks.platform_stacks(waypoints.KIND)
    if had_stack:
        progress.line(f"Removing the waypoint of {namespace}/{name}...")
        stacks.destroy_platform(
            names.stack,
            program=empty_program(kube, namespace, name),
            on_event=progress.on_event,
            on_output=progress.on_output,
        )
    render.waypoint_removed(f"{namespace}/{name}", restored or had_stack, output)


@app.command("list")
@handles_errors
def list_(
    ctx: typer.Context,
    output: Annotated[Format, typer.Option("-o", "--output")] = Format.text,
) -> None:
    """Every waypoint: its Service, selector state, Gateway, staging's Service, readiness."""
    from adapters.waypoint import statuses

    cluster, stacks = connect(settings(ctx))
    render.waypoints(statuses(Waypoints(cluster), stacks.platform_stacks(waypoints.KIND)), output)
