"""A waypoint's Pulumi program and its selector swap (see preview_stack.waypoints).

`program(...)` is what both doors run: `preview-env waypoint add` (the inline program of
the platform stack `waypoint.NS.SERVICE`) and `pulumi up -s waypoint.NS.SERVICE`
(pulumi_up.platform). It declares the waypoint's objects, Traefik last (Pulumi waits for
its Deployment to be Ready, which its probe makes mean "serving the default routes"), and
then, in the same update, swaps the Service's selector (`swap`, a hook run after the
Deployment is created or updated). Removing goes the other
way: `restore` puts the recorded selector back, waits until the Service's endpoints are
staging's pods again and lets kube-proxy catch up (`DRAIN_SECONDS`) while the waypoint
still forwards what it gets, and only then are the waypoint's objects deleted. Traefik's
Deployment carries a `before_delete` hook running `restore`, so an update that drops it
(`waypoint remove`, `pulumi destroy --run-program`) can never leave the Service selecting
pods that are gone; a plain `pulumi destroy` refuses to run without the program.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from adapters.k8s.cluster import Waypoints
from preview_stack import naming, waypoints
from preview_stack.errors import BadInput, DeployFailed, NotFound
from preview_stack.waypoints import Names, WaypointOptions

# Time for every node's kube-proxy to apply a selector change, and for requests already
# sent to the side being left to finish. kube-proxy syncs within about a second.
DRAIN_SECONDS = float(os.environ.get("PREVIEW_ENV_WAYPOINT_DRAIN", "3"))
# Traefik reloads its configuration at most every 2 s (providersThrottleDuration): an
# EndpointSlice seen after the routes takes up to that long to be served.
SETTLE_SECONDS = 2.5
READY_TIMEOUT = 120.0
SWAP_HOOK = "preview-env-waypoint-swap"
RESTORE_HOOK = "preview-env-waypoint-restore"


def read_service(kube: Waypoints, namespace: str, name: str) -> dict[str, Any]:
    service = kube.service(namespace, name)
    if service is None:
        raise NotFound(f"service {namespace}/{name} not found")
    return service


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise DeployFailed(f"timed out after {int(timeout)}s waiting for {what}")
        time.sleep(0.5)


def swap(kube: Waypoints, namespace: str, name: str, *, timeout: float = READY_TIMEOUT) -> bool:
    """Point the Service at the waypoint's pods once they and staging's Service are Ready;
    False when it already was (idempotent). Refuses a selector it did not write."""
    service = read_service(kube, namespace, name)
    state = waypoints.selector_state(service)
    if state == "foreign":
        raise BadInput(waypoints.foreign_problem(service, "add"))
    if state == "waypoint":
        return False
    names = Names(namespace, name)
    staging = kube.pods(namespace, waypoints.original_selector(service))
    _wait(
        f"waypoint {names.workload} to be Ready",
        lambda: bool(kube.pods(namespace, names.selector)),
        timeout,
    )
    if staging:  # staging's pods behind <service>-origin before anything moves
        _wait(
            f"service {names.origin}'s endpoints",
            lambda: bool(kube.ready_pods(namespace, names.origin) & staging),
            timeout,
        )
    time.sleep(SETTLE_SECONDS)
    kube.patch_service(namespace, name, waypoints.swap_patch(service))
    wanted = kube.pods(namespace, names.selector)
    _wait(
        f"service {namespace}/{name}'s endpoints to be the waypoint's",
        lambda: (
            kube.ready_pods(namespace, name) <= wanted and bool(kube.ready_pods(namespace, name))
        ),
        timeout,
    )
    time.sleep(DRAIN_SECONDS)  # every kube-proxy follows: once `add` returns, all pass it
    return True


def restore(kube: Waypoints, namespace: str, name: str, *, timeout: float = READY_TIMEOUT) -> bool:
    """Put the recorded selector back, then wait until the Service's endpoints are
    staging's pods and kube-proxy has had `DRAIN_SECONDS`; False when nothing was swapped.
    Refuses a selector it did not write. A missing Service has nothing to restore."""
    service = kube.service(namespace, name)
    if service is None:
        return False
    state = waypoints.selector_state(service)
    if state == "foreign":
        raise BadInput(waypoints.foreign_problem(service, "remove"))
    ops = waypoints.restore_patch(service)
    if not ops:
        return False
    names = Names(namespace, name)
    staging = kube.pods(namespace, waypoints.original_selector(service))
    kube.patch_service(namespace, name, ops)
    if state != "waypoint":
        return True

    def staging_only() -> bool:
        serving = kube.ready_pods(namespace, name)
        return bool(serving) and not serving & kube.pods(namespace, names.selector)

    if staging:
        _wait(
            f"service {namespace}/{name}'s endpoints to be staging's again", staging_only, timeout
        )
    time.sleep(DRAIN_SECONDS)
    return True


def _hooks(kube: Waypoints, namespace: str, name: str) -> pulumi.ResourceHookBinding:
    """Traefik's Deployment's hooks: the swap once it is created or updated (Ready: Pulumi
    awaits it), the restore before it is deleted. Hooks, not an `apply` in the program:
    they run on those steps only, never while `pulumi destroy --run-program` runs the
    program, and never in a preview."""

    def after(args: pulumi.ResourceHookArgs) -> None:
        swap(kube, namespace, name)

    def before_delete(args: pulumi.ResourceHookArgs) -> None:
        restore(kube, namespace, name)

    swap_hook = pulumi.ResourceHook(SWAP_HOOK, after)
    restore_hook = pulumi.ResourceHook(RESTORE_HOOK, before_delete)
    return pulumi.ResourceHookBinding(
        after_create=[swap_hook], after_update=[swap_hook], before_delete=[restore_hook]
    )


def program(
    kube: Waypoints, namespace: str, name: str, options: WaypointOptions
) -> Callable[[], None]:
    """The platform stack's program: the waypoint's objects, Traefik last with the hooks
    that swap the selector (once it is Ready) and restore it (before it goes)."""

    def run() -> None:
        service = read_service(kube, namespace, name)
        if waypoints.selector_state(service) == "foreign":
            raise BadInput(waypoints.foreign_problem(service, "add"))
        items = waypoints.manifests(service, options)
        hooks = _hooks(kube, namespace, name)
        before: list[pulumi.Resource] = []
        for item in items:
            meta = item["metadata"]
            res = f"{item['kind'].lower()}:{meta.get('namespace', '')}/{meta['name']}"
            if item["kind"] == "Deployment":
                k8s.apps.v1.Deployment(
                    res,
                    metadata=meta,
                    spec=item["spec"],
                    opts=pulumi.ResourceOptions(depends_on=before, hooks=hooks),
                )
            else:
                before.append(_declare(res, item))
        pulumi.export("service", f"{namespace}/{name}")

    return run


def empty_program(kube: Waypoints, namespace: str, name: str) -> Callable[[], None]:
    """A program declaring nothing (the update deletes every object) that still registers
    the hooks Traefik's Deployment names."""

    def run() -> None:
        _hooks(kube, namespace, name)

    return run


def _declare(res: str, item: Mapping[str, Any]) -> pulumi.Resource:
    kind, meta = item["kind"], item["metadata"]
    if kind == "ServiceAccount":
        return k8s.core.v1.ServiceAccount(res, metadata=meta)
    if kind == "Service":
        return k8s.core.v1.Service(res, metadata=meta, spec=item["spec"])
    if kind == "ClusterRole":
        return k8s.rbac.v1.ClusterRole(res, metadata=meta, rules=item["rules"])
    if kind == "ClusterRoleBinding":
        return k8s.rbac.v1.ClusterRoleBinding(
            res, metadata=meta, role_ref=item["roleRef"], subjects=item["subjects"]
        )
    return k8s.apiextensions.CustomResource(
        res, api_version=item["apiVersion"], kind=kind, metadata=meta, spec=item.get("spec")
    )


def statuses(kube: Waypoints, stacks: list[str]) -> list[waypoints.WaypointStatus]:
    """Every waypoint: those the cluster has (by label) and those this backend has a stack
    for (a stack whose objects are gone still shows)."""
    found: dict[tuple[str, str], waypoints.WaypointStatus] = {}
    fronted = set()
    for gateway in kube.gateways(waypoints.LABEL_WAYPOINT):
        annotations = gateway["metadata"].get("annotations") or {}
        namespace, _, service = annotations.get(waypoints.ANNOTATION_FOR, "").partition("/")
        if service:
            fronted.add((namespace, service))
    for stack in stacks:
        parts = naming.platform_stack_parts(stack)
        if parts:
            fronted.add((parts[1], parts[2]))
    for namespace, name in sorted(fronted):
        names = Names(namespace, name)
        service = kube.service(namespace, name)
        found[(namespace, name)] = waypoints.WaypointStatus(
            service=f"{namespace}/{name}",
            selector=waypoints.selector_state(service) if service else "missing",
            gateway=f"{namespace}/{names.workload}",
            origin=f"{namespace}/{names.origin}",
            ready=bool(kube.pods(namespace, names.selector)),
            stack=names.stack in stacks,
            preview_routes=kube.routes_on(namespace, names.workload),
        )
    return list(found.values())
