"""The Pulumi program of a queue's preparation (platform stack `queue.<ns>.<id>`): its
record, its keeper and the keeper's rights (preview_stack.queue_prep's manifests). The
CLI's `queues prepare`/`unprepare` and `pulumi up -s queue.<ns>.<id>` both run it."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from preview_stack import queue_prep
from preview_stack.queue_prep import Preparation

COMPONENT_TYPE = "preview-env:index:QueuePreparation"


class QueuePreparation(pulumi.ComponentResource):
    def __init__(self, prep: Preparation) -> None:
        super().__init__(COMPONENT_TYPE, f"{prep.namespace}.{prep.id}", None)
        child = pulumi.ResourceOptions(parent=self)
        record = queue_prep.record_manifest(prep)
        k8s.core.v1.ConfigMap(
            "record", metadata=record["metadata"], data=record["data"], opts=child
        )
        made: dict[str, pulumi.Resource] = {}
        for manifest in queue_prep.keeper_manifests(prep):
            made[manifest["kind"]] = self._declare(manifest, made)
        self.register_outputs({"queue": prep.id, "namespace": prep.namespace})

    def _declare(self, m: dict[str, Any], made: dict[str, pulumi.Resource]) -> pulumi.Resource:
        kind, meta = m["kind"], m["metadata"]
        child = pulumi.ResourceOptions(parent=self)
        if kind == "ServiceAccount":
            return k8s.core.v1.ServiceAccount("keeper", metadata=meta, opts=child)
        if kind == "Role":
            return k8s.rbac.v1.Role("keeper", metadata=meta, rules=m["rules"], opts=child)
        if kind == "RoleBinding":
            return k8s.rbac.v1.RoleBinding(
                "keeper", metadata=meta, role_ref=m["roleRef"], subjects=m["subjects"], opts=child
            )
        if kind == "ConfigMap":  # the keeper's status: written by the keeper, not by Pulumi
            return k8s.core.v1.ConfigMap(
                "status",
                metadata=meta,
                data=m["data"],
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=["data"]),
            )
        assert kind == "Deployment", kind
        # Not awaited by the provider: the keeper's status says when it has prepared the
        # broker (or why not), which `queues prepare` waits for with its own timeout.
        meta = {**meta, "annotations": {"pulumi.com/skipAwait": "true"}}
        return k8s.apps.v1.Deployment(
            "keeper",
            metadata=meta,
            spec=m["spec"],
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(made.values())),
        )


def declare_preparation(prep: Preparation) -> None:
    QueuePreparation(prep)
