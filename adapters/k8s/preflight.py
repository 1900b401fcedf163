"""The cluster checks of a start before anything is created: the Gateway API for routes,
the share link's Gateway, no other stack holding an object's name, and other environments'
routes (preview_stack.routing's rule)."""

from __future__ import annotations

from adapters.k8s.cluster import Cluster
from preview_stack import naming
from preview_stack.errors import BadInput, Busy
from preview_stack.objects import EnvironmentObjects
from preview_stack.routing import ROUTE_KINDS, others_routes_problem
from preview_stack.spec import ServiceSpec


def preflight(
    cluster: Cluster, objects: EnvironmentObjects, service: ServiceSpec, key: str, stack_id: str
) -> list[str]:
    """Raise BadInput or Busy when `objects` (the start's target alone) cannot be created;
    return the warnings to print (a header filter crossing other environments')."""
    manifests = objects.manifests
    routes = [m for m in manifests if m["kind"] in ROUTE_KINDS]
    if routes and not cluster.has_gateway_api():
        raise BadInput(
            "the cluster has no Gateway API (gateway.networking.k8s.io/v1 HTTPRoute) "
            "to route key-scoped traffic; install its CRDs, or pass --routing none"
        )
    if routes and service.share is not None:
        namespace, _, name = service.share.gateway.partition("/")
        names = cluster.gateways(namespace)
        if names is not None and name not in names:
            raise BadInput(
                f"--gateway {service.share.gateway}: Gateway {service.share.gateway} not found "
                f"(Gateways in {namespace}: {', '.join(names) or 'none'})"
            )
    for manifest in manifests:
        if manifest["metadata"]["labels"].get(naming.LABEL_COMPONENT) == "record":
            continue  # the record's namespace is the environment's first one
        holder = cluster.foreign_holder(manifest, stack_id)
        if holder:
            raise Busy(
                f"{holder}; use another key (for example 'team-{key}') or clean it "
                "with that backend"
            )
    if not routes:
        return []
    theirs = [r for r in cluster.routes({service.namespace}) if not naming.owned_by(r, stack_id)]
    problem = others_routes_problem(routes, theirs, service, key)
    return [problem] if problem else []
