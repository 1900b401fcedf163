"""What the cluster shows of a start once its update ran: the environment's pods, why a
target's pods did not become Ready (the database copy that failed, or the failing
container's last log lines), and whether a controller accepted its routes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from adapters.k8s.cluster import Cluster
from preview_stack import naming
from preview_stack.branch_status import branch_statuses
from preview_stack.errors import PreviewError
from preview_stack.results import StartedPod, started_pods
from preview_stack.routing import RouteState, gateways_of, route_states, routes_judged
from preview_stack.spec import EnvironmentSpec, ServiceSpec
from preview_stack.status import BranchStatus, pod_ready, pod_reason

# How long `start` waits for a mesh or gateway to accept its routes before saying so.
ROUTE_WAIT_SECONDS = float(os.environ.get("PREVIEW_ENV_ROUTE_WAIT", "10"))


def pods_of(cluster: Cluster, env: EnvironmentSpec, stack_id: str) -> list[StartedPod]:
    """The environment's live pods (status.environment_pods says which count)."""
    pods = cluster.preview_pods(env.key, {s.namespace for s in env.services})
    return started_pods(env, pods, stack_id)


@dataclass(frozen=True)
class StartFailure:
    """Why a start's deploy failed, in one message; `bad_input`: the reason alone when it
    is the user's input (a database copy refused it: exit 2)."""

    why: str
    bad_input: str | None = None


def start_failure(cluster: Cluster, key: str, service: ServiceSpec, error: str) -> StartFailure:
    """Pulumi's `error`, with the cluster's reason first: the first database copy of this
    target that did not finish, else the first pod that is not Ready and its last words."""
    copy = _copy_failure(cluster, key, service)
    if copy is not None:
        reason = f"database branch {copy.id!r}: copy {copy.state}: {copy.message or '?'}"
        return StartFailure(f"{reason}; {_first_line(error)}", reason if copy.bad_input else None)
    reason, last_words = _not_ready(cluster, key, service)
    return StartFailure((f"{reason}; {error}" if reason else error) + last_words)


def wait_until_served(cluster: Cluster, env: EnvironmentSpec, stack_id: str) -> list[RouteState]:
    """Wait (briefly) for controllers to judge this environment's routes: each served, or
    why not (routing.route_states, with what the routes' Gateways' classes support)."""
    namespaces = {s.namespace for s in env.services}
    deadline = time.monotonic() + ROUTE_WAIT_SECONDS
    while True:
        routes = cluster.routes(namespaces, key=env.key, stack_id=stack_id)
        if routes_judged(routes) or time.monotonic() >= deadline:
            return route_states(routes, cluster.gateway_support(gateways_of(routes)))
        time.sleep(0.5)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _not_ready(cluster: Cluster, key: str, service: ServiceSpec) -> tuple[str, str]:
    """Why this target's pods are not Ready, and the failing container's last log lines
    (indented, one per line; empty when it printed nothing)."""
    try:
        pods = [
            p
            for p in cluster.preview_pods(key, {service.namespace})
            if naming.labels_of(p).get(naming.LABEL_TARGET) == service.target_label
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
