"""The target reads of one change, done once: the checks before an update and the Pulumi
program under the lock derive from the same pod templates and Services."""

from __future__ import annotations

from typing import Any

from adapters.k8s.cluster import Cluster
from preview_stack.derive import TargetWorkload
from preview_stack.spec import ServiceSpec


class CachedReader:
    """A `TargetReader` (preview_stack.objects) over one cluster, reading each target, each
    namespace's Services and the routes to them once."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._workloads: dict[str, TargetWorkload | None] = {}
        self._services: dict[str, list[dict[str, Any]]] = {}
        self._routes: dict[str, list[dict[str, Any]]] = {}

    def workload(self, spec: ServiceSpec) -> TargetWorkload | None:
        if spec.target_id not in self._workloads:
            self._workloads[spec.target_id] = self.cluster.workload(spec)
        return self._workloads[spec.target_id]

    def services(self, namespace: str) -> list[dict[str, Any]]:
        if namespace not in self._services:
            self._services[namespace] = self.cluster.services(namespace)
        return self._services[namespace]

    def routes_to(self, namespace: str) -> list[dict[str, Any]]:
        if namespace not in self._routes:
            self._routes[namespace] = self.cluster.routes_to(namespace)
        return self._routes[namespace]
