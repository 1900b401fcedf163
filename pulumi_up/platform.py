"""Platform stacks through `pulumi up` (naming.platform_stack: `kind.ns.name`): each kind's
program, declared from the stack's name and config by the same function its CLI command
runs."""

from __future__ import annotations

from collections.abc import Callable

import pulumi

from adapters import waypoint
from adapters.k8s.cluster import Cluster, ClusterTarget, Waypoints
from preview_stack import waypoints
from preview_stack.errors import BadInput


def _waypoint(namespace: str, name: str, cfg: pulumi.Config) -> None:
    """`pulumi up -s waypoint.NS.SERVICE`: what `preview-env waypoint add NS/SERVICE` does.
    Config: `preview-env:image`, `replicas`, `nodeSelector` (object), `tolerations` (list).
    `pulumi destroy --run-program` is `waypoint remove` (the restore hook needs the program;
    a plain `pulumi destroy` refuses)."""
    k8s_cfg = pulumi.Config("kubernetes")
    cluster = Cluster(ClusterTarget(k8s_cfg.get("kubeconfig"), k8s_cfg.get("context")))
    options = waypoints.WaypointOptions(
        image=cfg.get("image") or waypoints.DEFAULT_IMAGE,
        replicas=cfg.get_int("replicas") or 1,
        node_selector=cfg.get_object("nodeSelector") or {},
        tolerations=cfg.get_object("tolerations") or [],
    )
    waypoint.program(Waypoints(cluster), namespace, name, options)()


# kind -> program(namespace, name, config); each platform command registers its own.
PROGRAMS: dict[str, Callable[[str, str, pulumi.Config], None]] = {"waypoint": _waypoint}


def run(kind: str, namespace: str, name: str, cfg: pulumi.Config) -> None:
    program = PROGRAMS.get(kind)
    if program is None:
        raise BadInput(f"platform stacks of kind {kind!r} cannot be declared by `pulumi up` yet")
    program(namespace, name, cfg)
