"""The typer application: global options, commands, and the console-script entry point.

Exit codes: 0 success, 1 runtime failure (deploy failed, cluster or backend unreachable,
environment busy), 2 bad usage or bad input (config, flags, key, unknown target).
"""

from __future__ import annotations

from typing import Annotated

import typer

from adapters.settings import Settings
from cli.commands import clean, db, extend, logs, queues, reap, start, status, waypoint

app = typer.Typer(
    name="preview-env",
    help="Ephemeral preview environments on Kubernetes, one Pulumi stack per environment key.\n\n"
    "Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad input.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Pulumi backend URL [default: $PULUMI_BACKEND_URL, else your `pulumi login`, "
            "else file://~/.local/state/preview-env/backend]"
        ),
    ] = None,
    kubeconfig: Annotated[
        str | None, typer.Option(help="kubeconfig file [default: $KUBECONFIG or ~/.kube/config]")
    ] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="show Pulumi's output")] = False,
) -> None:
    """Run only the changed services, next to the workloads they replace."""
    ctx.obj = Settings(backend=backend, kubeconfig=kubeconfig, context=context, verbose=verbose)


app.command("start")(start.start)
app.command("status")(status.status)
app.command("clean")(clean.clean)
app.command("extend")(extend.extend)
app.command("reap")(reap.reap)
app.command("logs")(logs.logs)
app.add_typer(db.app, name="db")
app.add_typer(queues.app, name="queues")
app.add_typer(waypoint.app, name="waypoint")


def main() -> None:
    app()
