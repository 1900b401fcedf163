"""`preview-env logs`: the preview pods' logs, each line prefixed with its pod, like
`kubectl logs -l ... --prefix`, without needing to know labels, namespaces or containers."""

from __future__ import annotations

import sys
import threading
from typing import Annotated

import typer

from adapters.automation import connect
from adapters.k8s.cluster import Cluster, PodLogs
from cli.context import handles_errors, settings
from preview_stack import naming
from preview_stack.errors import BadInput, NotFound, PreviewError
from preview_stack.spec import EnvironmentSpec, ServiceSpec
from preview_stack.ttl import parse_duration


@handles_errors
def logs(
    ctx: typer.Context,
    key: Annotated[str, typer.Option("-k", "--key", help="environment key")],
    target: Annotated[
        str | None, typer.Option("-t", "--target", help="only this target, e.g. deployment/users")
    ] = None,
    container: Annotated[
        str | None,
        typer.Option("-c", "--container", help="container [default: the preview's own]"),
    ] = None,
    tail: Annotated[int | None, typer.Option(help="last N lines per pod [default: all]")] = None,
    since: Annotated[
        str | None, typer.Option(help="only lines newer than a duration: 10m, 1h")
    ] = None,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="keep streaming until Ctrl-C")
    ] = False,
) -> None:
    """Print the logs of every preview pod of an environment (or one target's)."""
    problem = naming.key_problem(key)
    if problem:
        raise BadInput(f"invalid key: {problem}")
    if tail is not None and tail < 0:
        raise BadInput(f"--tail {tail}: use 0 or more")
    since_seconds = parse_duration(since, allow_infinite=False) if since else None
    cluster, stacks = connect(settings(ctx))
    if key not in stacks.environments():
        raise NotFound(f"no environment {key!r} in this backend; see `preview-env status`")
    spec = stacks.specs([key])[key]
    if isinstance(spec, PreviewError):
        raise spec
    if spec is None:
        raise NotFound(f"environment {key!r} has no live pods (its first start is running?)")
    chosen = _services(spec, target)
    streams = cluster.pod_logs(
        key,
        stacks.stack_id(key),
        [(s.namespace, s.target_label, s.image) for s in chosen],
        container=container,
        tail=tail,
        since_seconds=since_seconds,
    )
    if not streams:
        print(f"no preview pods of {key} are running", file=sys.stderr)
        return
    if not follow:
        failed = False
        for stream in streams:
            try:
                for line in stream.lines():
                    print(f"[{stream.pod}/{stream.container}] {line}")
            except PreviewError as exc:  # one pod's node is unreachable: the others still
                sys.stdout.flush()
                print(f"error: {exc}", file=sys.stderr, flush=True)
                failed = True
        if failed:
            raise typer.Exit(1)
        return
    if not _follow(cluster, streams):
        raise typer.Exit(1)


def _services(spec: EnvironmentSpec, target: str | None) -> list[ServiceSpec]:
    if target is None:
        return list(spec.services)
    chosen = [s for s in spec.services if s.matches(target)]
    if not chosen:
        targets = ", ".join(s.display_target for s in spec.services)
        raise BadInput(f"{spec.key!r} has no target {target!r} (targets: {targets})")
    return chosen


def _follow(cluster: Cluster, streams: list[PodLogs]) -> bool:
    """One thread per pod; lines are printed whole, in arrival order, until Ctrl-C. False
    when some pod's logs could not be read (each said in one line on stderr)."""
    printing = threading.Lock()
    failures: list[str] = []

    def pump(stream: PodLogs) -> None:
        try:
            for line in stream.lines(follow=True):
                with printing:
                    print(f"[{stream.pod}/{stream.container}] {line}", flush=True)
        except PreviewError as exc:
            with printing:
                failures.append(stream.pod)
                print(f"error: {exc}", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=pump, args=(s,), daemon=True) for s in streams]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except KeyboardInterrupt:
        pass
    return not failures
