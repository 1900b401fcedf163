"""What the cluster shows of a start once its update ran: whether the started target's
current pod template is rolled out, the environment's pods, why a target's pods did not
become Ready (the database copy that failed, or the failing container's last log lines),
and whether a controller accepted its routes."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.k8s.cluster import Cluster
from preview_stack import naming, queue_prep
from preview_stack.branch_status import branch_statuses
from preview_stack.changes import Applied
from preview_stack.errors import DeployFailed, PreviewError
from preview_stack.results import StartedPod, started_pods
from preview_stack.rollouts import Rollout, rollout_of, rollout_state, rollouts_of
from preview_stack.routing import RouteState, gateways_of, route_states, routes_judged
from preview_stack.spec import EnvironmentSpec, ServiceSpec
from preview_stack.status import BranchStatus, pod_ready, pod_reason, pod_row

# How long `start` waits for a mesh or gateway to accept its routes before saying so.
ROUTE_WAIT_SECONDS = float(os.environ.get("PREVIEW_ENV_ROUTE_WAIT", "10"))


def pods_of(cluster: Cluster, env: EnvironmentSpec, stack_id: str) -> list[StartedPod]:
    """The environment's live pods (status.environment_pods says which count: not those of
    a Deployment's older template)."""
    namespaces = {s.namespace for s in env.services}
    rollouts = _rollouts(cluster, env.key, namespaces)
    pods = cluster.preview_pods(env.key, namespaces)
    return started_pods(env, pods, stack_id, rollouts)


def ensure_rolled_out(
    cluster: Cluster,
    key: str,
    service: ServiceSpec,
    stack_id: str,
    applied: Applied,
) -> None:
    """After Pulumi reported the update done: DeployFailed (with `applied`, so the start
    can undo itself) unless the target's current template is rolled out within its
    creation timeout (at once when Pulumi's await was right; it may have judged the old
    ReplicaSet's pods, see preview_stack.rollouts). start_failure names the reason, from
    the same pods read again."""
    deadline = time.monotonic() + service.creation_timeout_secs
    if wait_until_rolled_out(cluster, key, service, stack_id, deadline):
        raise DeployFailed(
            f"Pulumi reported the Deployment of {service.display_target} updated, but the "
            "pods of its current template did not become Ready",
            applied=applied,
        )


def wait_until_rolled_out(
    cluster: Cluster, key: str, service: ServiceSpec, stack_id: str, deadline: float
) -> str | None:
    """Once Pulumi reported the update done, wait until the pods of the target's current
    template are Ready (preview_stack.rollouts: Pulumi's await may have judged the old
    ReplicaSet's); None once they are, else why not: a failing pod or a stalled rollout at
    once, what it still waits for at `deadline` (time.monotonic()). Targets without a
    Deployment (a CronJob's Job), or Deployments this identity may not read: None."""
    while True:
        found = _target_rollout(cluster, key, service, stack_id)
        if found is None:
            return None
        rollout, pods = found
        now = dt.datetime.now(dt.UTC)
        current = [pod_row(p, service, key, now) for p in pods if rollout.is_current(p)]
        state, why = rollout_state(rollout, current)
        if state == "ready":
            return None
        if state == "not-ready" or time.monotonic() >= deadline:
            return why
        time.sleep(0.5)


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


def wait_until_served(
    cluster: Cluster,
    env: EnvironmentSpec,
    stack_id: str,
    announce: Callable[[str], None] = lambda _: None,
) -> list[RouteState]:
    """Wait (briefly, `announce`d) for controllers to judge this environment's routes: each
    served, or why not (routing.route_states, with what the routes' Gateways' classes
    support). None declared (no `incoming`, no share link, `--routing none`): no wait."""
    if not any(s.routing and (s.incoming or s.share) for s in env.services):
        return []
    announce("Waiting for a mesh or gateway to accept the routes...")
    namespaces = {s.namespace for s in env.services}
    deadline = time.monotonic() + ROUTE_WAIT_SECONDS
    while True:
        routes = cluster.routes(namespaces, key=env.key, stack_id=stack_id)
        if routes_judged(routes) or time.monotonic() >= deadline:
            return route_states(routes, cluster.gateway_support(gateways_of(routes)))
        time.sleep(0.5)


def wait_until_kept(
    cluster: Cluster,
    service: ServiceSpec,
    key: str,
    announce: Callable[[str], None] = lambda _: None,
) -> list[str]:
    """Wait (at most three keeper rounds) until each queue this service splits has its
    keeper list the key's queue: a keeper unbinds only the key queues it has seen, so a
    `clean` run before it looked would leave the key's queue bound, taking the key's
    messages from staging. Returns a warning per keeper that did not look in time."""
    pending = {(u.preparation.namespace, u.preparation.id) for u in service.split_queues}
    if not pending:
        return []
    announce("Waiting for the queue keepers to take over the key's queues...")
    deadline = time.monotonic() + 3 * queue_prep.POLL_SECONDS + 2
    while True:
        for namespace, queue_id in sorted(pending):
            status = cluster.keeper_status(namespace, queue_id)
            if status and any(k.key == key and not k.removing for k in status.keys):
                pending.discard((namespace, queue_id))
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return [
        f"the queue keeper of {namespace}/{queue_id} has not seen {key}'s queue yet: check it "
        f"with `preview-env queues list -n {namespace}` before cleaning {key}"
        for namespace, queue_id in sorted(pending)
    ]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _not_ready(cluster: Cluster, key: str, service: ServiceSpec) -> tuple[str, str]:
    """Why this target's pods are not Ready, and the failing container's last log lines
    (indented, one per line; empty when it printed nothing)."""
    try:
        rollouts = _rollouts(cluster, key, {service.namespace})
        pods = [
            p
            for p in cluster.preview_pods(key, {service.namespace})
            if naming.labels_of(p).get(naming.LABEL_TARGET) == service.target_label
            and not p["metadata"].get("deletionTimestamp")
        ]
    except PreviewError:
        return "the cluster could not be read", ""
    # Only the current template's pods say why: the previous revision's may well be Ready.
    rollout = next((r for r in rollouts if r.target == service.target_label), None)
    if rollout is not None:
        pods = [p for p in pods if rollout.is_current(p)]
    unready = [p for p in pods if not pod_ready(p)]
    if not unready:
        if rollout is not None:
            now = dt.datetime.now(dt.UTC)
            rows = [pod_row(p, service, key, now) for p in pods]
            state, why = rollout_state(rollout, rows)
            if state != "ready":
                return why or "", ""
        return ("no pod became Ready" if not pods else ""), ""
    pod = unready[0]
    reason = f"pod {pod['metadata']['name']} not Ready: {pod_reason(pod)}"
    container, lines = cluster.log_tail(pod)
    if not lines:
        return reason, ""
    shown = "\n".join(f"  | {line}" for line in lines)
    return reason, f"\nlast log lines of container {container}:\n{shown}"


def _rollouts(cluster: Cluster, key: str, namespaces: set[str]) -> list[Rollout]:
    """The environment's Deployment rollouts (none when they may not be read)."""
    workloads = cluster.preview_workloads(key, namespaces)
    return rollouts_of(*workloads) if workloads else []


def _target_rollout(
    cluster: Cluster, key: str, service: ServiceSpec, stack_id: str
) -> tuple[Rollout, list[Mapping[str, Any]]] | None:
    """The target's Deployment rollout and its live pods (this stack's, none being
    deleted): the Deployment read before the pods, so no pod is newer than what it says.
    None when it has no Deployment, or it may not be read."""
    workloads = cluster.preview_workloads(key, {service.namespace})
    if workloads is None:
        return None
    deployments = [d for d in workloads[0] if naming.owned_by(d, stack_id)]
    rollouts = [
        r
        for r in rollouts_of(deployments, workloads[1])
        if (r.namespace, r.target) == (service.namespace, service.target_label)
    ]
    if not rollouts:
        return None
    pods: list[Mapping[str, Any]] = [
        p
        for p in cluster.preview_pods(key, {service.namespace})
        if naming.owned_by(p, stack_id)
        and not p["metadata"].get("deletionTimestamp")
        and rollout_of(p, rollouts) is not None
    ]
    return rollouts[0], pods


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
