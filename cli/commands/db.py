"""`preview-env db copy`: copy a database into a branch server, on a laptop or in the
branch's copy Job (the same code: the plan in preview_stack.copy_plan, run by
adapters.dbcopy)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from adapters import dbcopy
from adapters.k8s.cluster import merge_patch_secret
from cli.context import handles_errors
from preview_stack import copy_plan
from preview_stack.errors import BadInput, PreviewError, Unreachable

app = typer.Typer(
    name="db",
    help="Database branches: copy a database (or some of its tables) into a branch server.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


@app.callback()
def _db() -> None:
    """Database branches: copy a database (or some of its tables) into a branch server."""


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@app.command("copy")
@handles_errors
def copy(
    engine: Annotated[str | None, typer.Option(help="pg or mysql (MySQL and MariaDB)")] = None,
    from_url: Annotated[
        str | None, typer.Option("--from", help="source URL: postgres://user:pw@host:port/db")
    ] = None,
    to_url: Annotated[
        str | None,
        typer.Option("--to", help="branch server URL (no database: the source's name)"),
    ] = None,
    from_env: Annotated[
        str | None,
        typer.Option(help="read the source from $PREFIX_URL, else $PREFIX_HOST, _PORT, ..."),
    ] = None,
    to_env: Annotated[
        str | None,
        typer.Option(help="read the branch from $PREFIX_URL, else $PREFIX_HOST, _PORT, ..."),
    ] = None,
    mode: Annotated[str, typer.Option(help="empty, schema or all")] = "empty",
    table: Annotated[
        list[str] | None,
        typer.Option(help="NAME or NAME:WHERE (repeatable): copy this table's (filtered) rows"),
    ] = None,
    wait: Annotated[
        int, typer.Option(help="wait this many seconds for the branch server to accept")
    ] = 0,
    write_url_secret: Annotated[
        str | None,
        typer.Option(
            help="after the copy, set key `url` of this Secret (pod's namespace) to the "
            "source URL rewritten to the branch"
        ),
    ] = None,
) -> None:
    """Copy the source database into the branch server: empty, schema only or everything,
    plus the rows of --table (filtered by its WHERE clause).

    The final line (stdout) sums up what was copied, never with credentials; it is also
    written to $PREVIEW_ENV_TERMINATION_LOG when set. Exit 2: bad input (nothing written);
    exit 1: a step failed."""
    try:
        result_line = _copy(
            engine, from_url, to_url, from_env, to_env, mode, table or [], wait, write_url_secret
        )
    except BadInput as exc:
        dbcopy.write_termination_log(f"bad input: {exc}")
        raise
    except PreviewError as exc:
        dbcopy.write_termination_log(f"failed: {exc}")
        raise
    except Exception as exc:  # a bug: still leave the Job's status a reason
        dbcopy.write_termination_log(f"failed: {type(exc).__name__}: {exc}")
        raise
    dbcopy.write_termination_log(result_line)
    print(result_line, flush=True)


def _copy(
    engine: str | None,
    from_url: str | None,
    to_url: str | None,
    from_env: str | None,
    to_env: str | None,
    mode: str,
    tables: list[str],
    wait: int,
    url_secret: str | None,
) -> str:
    if engine is None:
        raise BadInput(f"--engine is required ({' or '.join(copy_plan.ENGINES)})")
    if engine not in copy_plan.ENGINES:
        raise BadInput(f"unsupported engine {engine!r} (supported: {', '.join(copy_plan.ENGINES)})")
    source, source_url = _end("--from", from_url, "--from-env", from_env, engine)
    branch, _ = _end("--to", to_url, "--to-env", to_env, engine)
    if url_secret and source_url is None:
        raise BadInput(
            "--write-url-secret needs a source URL (--from URL or PREFIX_URL); with "
            "connection params, point the params variables at the branch instead"
        )
    parsed: dict[str, str | None] = {}
    for arg in tables:
        name, where = copy_plan.parse_table(arg)
        if name in parsed:
            raise BadInput(f"--table {name} given twice")
        parsed[name] = where
    plan = copy_plan.plan(engine, mode, source, branch, parsed, wait)
    result = dbcopy.run_copy(plan)
    if url_secret and source_url is not None:
        b = plan.branch
        url = copy_plan.branch_url(
            source_url,
            host=b.host,
            port=b.port,
            user=b.user,
            password=b.password,
            database=b.database,
        )
        _patch_secret(url_secret, url)
        print(f"wrote the branch URL into Secret {url_secret} (key url)", file=sys.stderr)
    return result.summary


def _end(
    url_flag: str, url: str | None, env_flag: str, prefix: str | None, engine: str
) -> tuple[copy_plan.Conn, str | None]:
    if (url is None) == (prefix is None):
        raise BadInput(f"give exactly one of {url_flag} URL or {env_flag} PREFIX")
    if url is not None:
        return copy_plan.parse_url(url, engine), url  # type: ignore[arg-type]
    assert prefix is not None
    return copy_plan.conn_from_env(engine, prefix, os.environ)  # type: ignore[arg-type]


def _namespace() -> str:
    explicit = os.environ.get("PREVIEW_ENV_NAMESPACE", "")
    if explicit:
        return explicit
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        raise dbcopy.CopyFailed(
            "write the branch URL: no namespace (not in a pod; set PREVIEW_ENV_NAMESPACE)"
        ) from None


def _patch_secret(name: str, url: str) -> None:
    """Merge-patch key `url` of Secret `name` in this pod's namespace."""
    namespace = _namespace()
    try:
        merge_patch_secret(namespace, name, {"url": url})
    except Unreachable as exc:
        raise dbcopy.CopyFailed(
            f"write the branch URL into Secret {namespace}/{name}: {exc}"
        ) from None
