"""The typer application and its single entry point."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="preview-env",
    help="Ephemeral preview environments on Kubernetes, one Pulumi stack per environment key.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """Run only the changed services, next to the workloads they replace."""


def main() -> None:
    app()
