"""`preview-env start`: create or add to an environment and wait until its pods are Ready."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import socket
import subprocess
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from adapters.automation import Stacks, connect
from adapters.k8s.cluster import Cluster
from adapters.k8s.preflight import preflight
from adapters.k8s.previews import (
    ensure_rolled_out,
    pods_of,
    start_failure,
    wait_until_kept,
    wait_until_served,
)
from adapters.k8s.reader import CachedReader
from cli import render
from cli.context import err_console, handles_errors, settings
from cli.output import Format, Progress
from preview_stack import config as mirrord_config
from preview_stack.changes import AddService, Restore
from preview_stack.changes import apply as apply_change
from preview_stack.errors import BadInput, DeployFailed, NotFound, PreviewError
from preview_stack.objects import derive_environment
from preview_stack.request import Flags, build_request, resolve_key
from preview_stack.results import StartResult
from preview_stack.routing import new_share_token, serving_problem, share_links
from preview_stack.spec import COPY_IMAGE_ENV

DEFAULT_CONFIG = Path(".mirrord/mirrord.json")


class Routing(StrEnum):
    auto = "auto"
    none = "none"


def git_branch() -> str:
    """`{{ git_branch }}`: MIRRORD_BRANCH_NAME (as in mirrord), the PR branch in CI, or git."""
    branch = os.environ.get("MIRRORD_BRANCH_NAME") or os.environ.get("GITHUB_HEAD_REF") or ""
    if branch:
        return branch
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def owner() -> str:
    explicit = os.environ.get("PREVIEW_ENV_OWNER") or os.environ.get("GITHUB_ACTOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@handles_errors
def start(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "-f",
            "--config-file",
            help="mirrord config (JSON, YAML or TOML) "
            "[default: ./.mirrord/mirrord.json when it exists]",
        ),
    ] = None,
    image: Annotated[str | None, typer.Option("-i", "--image", help="image to run")] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "-k",
            "--key",
            help="environment key [default: $MIRRORD_KEY, the config's key, else generated]",
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "-t",
            "--target",
            help="target path, e.g. deployment/users[/container/app]; 'targetless' for none",
        ),
    ] = None,
    target_namespace: Annotated[
        str | None, typer.Option("-n", "--target-namespace", help="namespace of the target")
    ] = None,
    ttl: Annotated[
        str | None,
        typer.Option(help="time to live: 90m, 2h, infinite [default: the config's, else 60m]"),
    ] = None,
    timeout: Annotated[
        int | None,
        typer.Option(
            help="seconds to wait for pods to be Ready [default: creation_timeout_secs, 60]"
        ),
    ] = None,
    replicas: Annotated[int | None, typer.Option(help="preview pods per target")] = None,
    routing: Annotated[
        Routing,
        typer.Option(
            help="auto: Gateway API routes per feature.network.incoming; none: the preview "
            "Service alone"
        ),
    ] = Routing.auto,
    gateway: Annotated[
        str | None,
        typer.Option(help="share link: the Gateway (NAMESPACE/NAME) to attach <key>.<domain> to"),
    ] = None,
    share_domain: Annotated[
        str | None,
        typer.Option(help="share link: domain whose <key>-<random> subdomain reaches the preview"),
    ] = None,
    stable_share_host: Annotated[
        bool,
        typer.Option(
            "--stable-share-host",
            help="share link: <key>.<domain> (guessable) instead of <key>-<random>.<domain>",
        ),
    ] = False,
    keep_on_failure: Annotated[
        bool,
        typer.Option(
            "--keep-on-failure", help="keep what was created when the pods do not become Ready"
        ),
    ] = False,
    output: Annotated[Format, typer.Option("-o", "--output")] = Format.text,
) -> None:
    """Create a preview environment, or add or replace a target in an existing one."""
    opts = settings(ctx)
    text = output is Format.text
    progress = Progress(enabled=text, verbose=opts.verbose)
    path = config_file or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    declared = mirrord_config.declared_key(path) if path else None
    cluster, stacks = connect(opts)
    from_env = os.environ.get("MIRRORD_KEY")
    # Listing stacks (a pulumi process) is only needed to generate a key that is free.
    existing_keys = set() if (key or from_env or declared) else set(stacks.environments())
    env_key, generated = resolve_key(
        flag=key, env_var=from_env, config_key=declared, existing=existing_keys
    )
    variables = {"key": env_key, "git_branch": git_branch()}
    parsed = mirrord_config.load(path, variables) if path else mirrord_config.MirrordConfig()
    for field in mirrord_config.ignored_fields(parsed):
        err_console.print(f"warning: {field} is ignored by preview environments")
    flags = Flags(
        image=image,
        target=target,
        namespace=target_namespace,
        ttl=ttl,
        timeout=timeout,
        replicas=replicas,
        routing=routing is Routing.auto,
        gateway=gateway,
        share_domain=share_domain,
        share_token=None if stable_share_host else new_share_token(),
        db_copy_image=os.environ.get(COPY_IMAGE_ENV) or None,
    )
    request = build_request(
        parsed,
        flags,
        default_namespace=cluster.default_namespace(),
        read_file=mirrord_config.read_local_file,
        preparations=lambda ns: cluster.queue_preparations(ns, stacks.platform_stacks("queue")),
    )
    service = request.service
    progress.line(
        f"Creating preview environment: {env_key}" + (" (generated key)" if generated else "")
    )
    reader = CachedReader(cluster)
    cluster.check_namespace(service.namespace)
    reader.workload(service)  # the target, its container and namespace exist (read once)
    change = AddService(service=service, ttl_seconds=request.ttl_seconds, owner=owner())
    stack_id = stacks.stack_id(env_key)
    # Every bad-input check before anything is created, on this target's objects alone
    # (the update derives the whole environment once, under the lock, from the latest
    # spec; what the start reports comes from that derivation, `applied.objects`).
    alone = apply_change(change, env_key, None, dt.datetime.now(dt.UTC).replace(microsecond=0))
    assert alone is not None
    objects = derive_environment(alone, reader, stack_id)
    warnings = objects.warnings.get(service.target_id, [])
    _warn([*preflight(cluster, objects, service, env_key, stack_id), *warnings])
    progress.line("Deploying pod...")
    try:
        applied = stacks.apply(
            env_key, change, reader, on_event=progress.on_event, on_output=progress.on_output
        )
        ensure_rolled_out(cluster, env_key, service, stack_id, applied)
    except DeployFailed as exc:
        failed = _failed(exc, env_key, change, cluster, stacks, reader, progress, keep_on_failure)
        raise failed from None
    progress.line("Deploying pod... done.")
    env = applied.after
    assert env is not None
    routes = wait_until_served(cluster, env, stack_id, announce=progress.line)
    _warn(wait_until_kept(cluster, service, env_key, announce=progress.line))
    result = StartResult(
        key=env_key,
        namespaces=sorted({s.namespace for s in env.services}),
        pods=pods_of(cluster, env, stack_id),
        expires_at=env.expires_at,
        links=share_links(env),
        changes=applied.objects.notes.get(service.target_id, []) if applied.objects else [],
        warnings=warnings,
        routes_problem=serving_problem(routes),
        routes=routes,
    )
    render.start(result, service.display_target, text=text)


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        err_console.print(f"warning: {warning}", markup=False)


def _failed(
    exc: DeployFailed,
    key: str,
    change: AddService,
    cluster: Cluster,
    stacks: Stacks,
    reader: CachedReader,
    progress: Progress,
    keep: bool,
) -> PreviewError:
    """The error a failed deploy ends `start` with, the cluster's reason first, once this
    start is undone (unless `keep`): its target's version from before the change, as the
    change saw it under the lock, or no target; other targets are kept."""
    failure = start_failure(cluster, key, change.service, str(exc))
    if keep:
        return DeployFailed(
            f"{failure.why} (kept; inspect it, then run `preview-env clean -k {key}`)"
        )
    progress.line("Deploy failed; undoing this start (other targets are kept)...")
    seen = exc.applied.before if exc.applied else None
    undo = Restore(change.service.target_id, change.previous_of(seen))
    # A teammate's clean that removed the whole environment meanwhile left nothing to undo.
    with contextlib.suppress(NotFound):
        stacks.apply(
            key,
            undo,
            reader,
            on_event=progress.on_event,
            on_output=progress.on_output,
            create=False,
        )
    if failure.bad_input is not None:
        return BadInput(failure.bad_input)
    return DeployFailed(failure.why)
