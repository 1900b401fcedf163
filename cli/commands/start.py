"""`preview-env start`: create or add to an environment and wait until its pods are Ready."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import socket
import subprocess
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ConfigDict, Field

from adapters.automation import connect
from adapters.k8s.cluster import Cluster
from adapters.k8s.reader import CachedReader
from cli.context import err_console, handles_errors, out_console, settings
from cli.output import Format, Progress, print_json
from preview_stack import config as mirrord_config
from preview_stack import naming
from preview_stack.branch_status import branch_statuses
from preview_stack.changes import AddService, Restore
from preview_stack.changes import apply as apply_change
from preview_stack.derive import preview_pod
from preview_stack.errors import BadInput, Busy, DeployFailed, NotFound, PreviewError
from preview_stack.request import Flags, build_request, resolve_key
from preview_stack.routing import (
    crossing_keys,
    effective_filter,
    new_share_token,
    route_headers,
    service_traffic,
    serving_problem,
    share_links,
)
from preview_stack.spec import COPY_IMAGE_ENV, EnvironmentSpec, ServiceSpec
from preview_stack.status import BranchStatus, pod_ready, pod_reason
from preview_stack.ttl import format_seconds

DEFAULT_CONFIG = Path(".mirrord/mirrord.json")
# How long `start` waits for a mesh or gateway to accept its routes before saying so.
ROUTE_WAIT_SECONDS = float(os.environ.get("PREVIEW_ENV_ROUTE_WAIT", "10"))


class Routing(StrEnum):
    auto = "auto"
    none = "none"


class StartedPod(BaseModel):
    name: str
    namespace: str
    target: str
    image: str
    ready: bool
    traffic: str | None = None


class StartResult(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    key: str
    namespaces: list[str]
    pods: list[StartedPod]
    expires_at: str | None = Field(alias="expiresAt")
    links: list[str] = Field(default_factory=list)
    changes: list[str] = Field(
        default_factory=list,
        description="what was changed from the target's pod (storage, host ports, ...)",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="volumes kept shared with the target (feature.preview.shared_volumes)",
    )
    routes_problem: str | None = Field(
        default=None,
        alias="routesProblem",
        description="why the routes carry no traffic yet (None: served, or no routes)",
    )


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


def _pods_of(cluster: Cluster, env: EnvironmentSpec, stack_id: str) -> list[StartedPod]:
    by_target = {s.target_label: s for s in env.services}
    pods = []
    for pod in cluster.preview_pods(env.key, {s.namespace for s in env.services}):
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        if (meta.get("labels") or {}).get(naming.LABEL_STACK) != stack_id:
            continue  # the same key in another backend
        service = by_target.get(meta.get("labels", {}).get(naming.LABEL_TARGET, ""))
        if service is None or meta.get("namespace") != service.namespace:
            continue  # labels can be copied: only pods where the environment runs
        pods.append(
            StartedPod(
                name=meta["name"],
                namespace=meta["namespace"],
                target=service.display_target,
                image=service.image,
                ready=pod_ready(pod),
                traffic=service_traffic(service, env.key),
            )
        )
    return sorted(pods, key=lambda p: (p.namespace, p.name))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _failure(cluster: Cluster, key: str, service: ServiceSpec) -> tuple[str, str]:
    """Why this target's pods are not Ready, and the failing container's last log lines
    (indented, one per line; empty when it printed nothing)."""
    try:
        pods = [
            p
            for p in cluster.preview_pods(key, {service.namespace})
            if p["metadata"].get("labels", {}).get(naming.LABEL_TARGET) == service.target_label
        ]
    except PreviewError:
        return "the cluster could not be read", ""
    unready = [p for p in pods if not pod_ready(p)]
    if not unready:
        return ("no pod became Ready" if not pods else ""), ""
    pod = unready[0]
    reason = f"pod {pod['metadata']['name']} not Ready: {pod_reason(pod)}"
    container, lines = cluster.log_tail(pod)
    if not lines:
        return reason, ""
    shown = "\n".join(f"  | {line}" for line in lines)
    return reason, f"\nlast log lines of container {container}:\n{shown}"


def _copy_failure(cluster: Cluster, key: str, service: ServiceSpec) -> BranchStatus | None:
    """The first of this target's database branches whose copy did not finish."""
    if not service.db_branches:
        return None
    try:
        jobs, pods = cluster.copy_jobs(key, {service.namespace})
    except PreviewError:
        return None
    env = EnvironmentSpec(
        key=key, owner="", created_at="", expires_at=None, ttl_seconds=None, services=[service]
    )
    return next((b for b in branch_statuses(env, jobs, pods) if b.state != "copied"), None)


def _check_routes_of_others(
    cluster: Cluster,
    manifests: list[dict[str, Any]],
    service: ServiceSpec,
    key: str,
    stack_id: str,
) -> None:
    """Refuse a stable share host another environment holds; warn when this target's
    header filter would also take another live environment's requests."""
    mine = [m for m in manifests if m["kind"] == "HTTPRoute"]
    if not mine:
        return
    selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
    theirs = [
        r
        for r in cluster.routes(selector, {service.namespace})
        if (r["metadata"].get("labels") or {}).get(naming.LABEL_STACK) != stack_id
    ]
    for route in mine:
        for host in route["spec"].get("hostnames", []):
            for other in theirs:
                if host in other["spec"].get("hostnames", []):
                    holder = (other["metadata"].get("labels") or {}).get(naming.LABEL_KEY)
                    raise Busy(
                        f"share host {host} is held by environment {holder!r}; drop "
                        "--stable-share-host to get an unguessable host of your own"
                    )
    header = effective_filter(service.incoming, key) if service.routing else None
    if header is None:
        return
    parents = {
        (r["metadata"]["namespace"], ref["name"])
        for r in mine
        for ref in r["spec"]["parentRefs"]
        if ref.get("kind") == "Service"
    }
    same_target = [
        r
        for r in theirs
        if any(
            (r["metadata"]["namespace"], ref.get("name")) in parents
            for ref in r["spec"].get("parentRefs", [])
            if ref.get("kind") == "Service"
        )
    ]
    crossed = crossing_keys(header, key, route_headers(same_target))
    if crossed:
        err_console.print(
            f"warning: the header filter {header.name}: {header.value} also matches the "
            f"requests of environment(s) {', '.join(crossed)} on the same target; "
            "make it match only this key",
            markup=False,
        )


def _wait_until_served(cluster: Cluster, env: EnvironmentSpec, stack_id: str) -> str | None:
    """Wait (briefly) for a controller to accept this environment's routes; why not, or None."""
    selector = f"{naming.LABEL_KEY}={env.key},{naming.LABEL_STACK}={stack_id}"
    namespaces = {s.namespace for s in env.services}
    deadline = time.monotonic() + ROUTE_WAIT_SECONDS
    while True:
        problem = serving_problem(cluster.routes(selector, namespaces))
        if problem is None or time.monotonic() >= deadline:
            return problem
        time.sleep(0.5)


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
    )
    service = request.service

    progress.line(
        f"Creating preview environment: {env_key}" + (" (generated key)" if generated else "")
    )
    reader = CachedReader(cluster)
    cluster.check_namespace(service.namespace)
    workload = reader.workload(service)  # target, container and namespace exist
    change = AddService(service=service, ttl_seconds=request.ttl_seconds, owner=owner())
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stack_id = stacks.stack_id(env_key)
    # Every bad-input check before anything is created: this target's objects alone (the
    # whole environment is derived again under the lock, from the latest spec).
    alone = apply_change(change, env_key, None, now)
    assert alone is not None
    from adapters.program import manifests_for  # not at the top: not for `status`

    manifests = manifests_for(alone, reader, stack_id)
    derived = preview_pod(workload, service, alone) if workload else None
    changes = derived.notes if derived else []
    warnings = derived.warnings if derived else []
    if any(m["kind"] == "HTTPRoute" for m in manifests) and not cluster.has_gateway_api():
        raise BadInput(
            "the cluster has no Gateway API (gateway.networking.k8s.io/v1 HTTPRoute) "
            "to route key-scoped traffic; install its CRDs, or pass --routing none"
        )
    for manifest in manifests:
        if manifest["metadata"]["labels"].get(naming.LABEL_COMPONENT) == "record":
            continue  # the record's namespace is the environment's first one
        holder = cluster.foreign_holder(manifest, stack_id)
        if holder:
            raise Busy(
                f"{holder}; use another key (for example 'team-{env_key}') or clean it "
                "with that backend"
            )

    _check_routes_of_others(cluster, manifests, service, env_key, stack_id)
    for warning in warnings:
        err_console.print(f"warning: {warning}", markup=False)

    progress.line("Deploying pod...")
    try:
        applied = stacks.apply(
            env_key,
            change,
            reader,
            on_event=progress.on_event,
            on_output=progress.on_output,
        )
    except DeployFailed as exc:
        copy = _copy_failure(cluster, env_key, service)
        if copy is not None:
            reason = f"database branch {copy.id!r}: copy {copy.state}: {copy.message or '?'}"
            why = f"{reason}; {_first_line(str(exc))}"
        else:
            reason, last_words = _failure(cluster, env_key, service)
            why = (f"{reason}; {exc}" if reason else str(exc)) + last_words
        if keep_on_failure:
            raise DeployFailed(
                f"{why} (kept; inspect it, then run `preview-env clean -k {env_key}`)"
            ) from None
        progress.line("Deploy failed; undoing this start (other targets are kept)...")
        seen = exc.applied.before if exc.applied else None
        undo = Restore(service.target_id, change.previous_of(seen))
        # A teammate's clean that removed the whole environment meanwhile left nothing to undo.
        with contextlib.suppress(NotFound):
            stacks.apply(
                env_key,
                undo,
                reader,
                on_event=progress.on_event,
                on_output=progress.on_output,
                create=False,
            )
        if copy is not None and copy.bad_input:
            raise BadInput(reason) from None
        raise DeployFailed(why) from None
    progress.line("Deploying pod... done.")
    env = applied.after
    assert env is not None
    expires = env.expiry()
    not_served = None
    if any(s.routing and (s.incoming or s.share) for s in env.services):
        progress.line("Waiting for a mesh or gateway to accept the routes...")
        not_served = _wait_until_served(cluster, env, stack_id)

    result = StartResult(
        key=env_key,
        namespaces=sorted({s.namespace for s in env.services}),
        pods=_pods_of(cluster, env, stack_id),
        expires_at=env.expires_at,
        links=share_links(env),
        changes=changes,
        warnings=warnings,
        routes_problem=not_served,
    )
    if not text:
        print_json(result)
        return
    out_console.print("Preview environment is live!\n")
    out_console.print(f"  Environment key:  {env_key}")
    out_console.print("  Pods:")
    for pod in result.pods:
        out_console.print(
            f"    • {pod.name}   ({pod.namespace}, {pod.target}, {pod.image})", markup=False
        )
    if expires is None:
        out_console.print("  TTL: infinite")
    else:
        left = int((expires - dt.datetime.now(dt.UTC)).total_seconds())
        out_console.print(f"  TTL expires in: {format_seconds(max(left, 0))}")
    if not_served:
        out_console.print(f"  Traffic: routes declared but not served: {not_served}", markup=False)
    else:
        for hint in sorted({p.traffic for p in result.pods if p.traffic}):
            out_console.print(f"  Traffic: {hint}", markup=False)
    if changes:
        out_console.print(f"  Changed from {service.display_target}:")
        for note in changes:
            out_console.print(f"    • {note}", markup=False)
    for link in result.links:
        out_console.print(
            f"  Share link: {link}" + (" (not served yet)" if not_served else ""), markup=False
        )
    sys.stdout.flush()
