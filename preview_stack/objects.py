"""An environment's objects, derived once from its spec and the targets read from the
cluster: every manifest (record last, each labelled with its owning stack), and what each
target's derivation changed. Pure: the reads come through a `TargetReader`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from preview_stack import naming
from preview_stack.derive import (
    Manifest,
    TargetWorkload,
    derive_target,
    pod_template_of_manifest,
    record_manifest,
)
from preview_stack.errors import BadInput
from preview_stack.spec import EnvironmentSpec, ServiceSpec


class TargetReader(Protocol):
    """Where target pod templates, namespace Services and the routes to them come from (the
    cluster)."""

    def workload(self, spec: ServiceSpec) -> TargetWorkload | None: ...

    def services(self, namespace: str) -> list[dict[str, Any]]: ...

    def routes_to(self, namespace: str) -> list[dict[str, Any]]:
        """The cluster's HTTPRoutes and GRPCRoutes (not preview-env's) that may send
        traffic to Services in `namespace`."""
        ...


@dataclass(frozen=True)
class EnvironmentObjects:
    """Every object of an environment, and per target id what was changed from the
    target's pod (notes) or kept shared with it (warnings)."""

    manifests: list[Manifest]
    notes: Mapping[str, list[str]] = field(default_factory=dict)
    warnings: Mapping[str, list[str]] = field(default_factory=dict)


def derive_environment(
    env: EnvironmentSpec, reader: TargetReader, stack_id: str = ""
) -> EnvironmentObjects:
    """Every object of the environment, record last, each labelled with its owning stack."""
    shared = [s.display_target for s in env.services if s.share is not None]
    if len(shared) > 1:
        raise BadInput(
            f"one share link per environment (asked by {', '.join(shared)}); "
            "drop --gateway/--share-domain for all but one target"
        )
    manifests: list[Manifest] = []
    notes, warnings = {}, {}
    for service in env.services:
        routed = service.routing and service.incoming is not None
        derived = derive_target(
            env,
            service,
            reader.workload(service),
            reader.services(service.namespace),
            reader.routes_to(service.namespace) if routed else (),
        )
        manifests += derived.manifests
        notes[service.target_id] = derived.notes
        warnings[service.target_id] = derived.warnings
    manifests.append(record_manifest(env))
    if stack_id:
        for manifest in manifests:
            _label_stack(manifest, stack_id)
    return EnvironmentObjects(manifests, notes, warnings)


def with_record_of(
    objects: EnvironmentObjects, env: EnvironmentSpec, stack_id: str = ""
) -> EnvironmentObjects:
    """`objects` with the record of `env` instead of their own: a route drain
    (changes.Unrouted) deletes routes and writes nothing else, so whoever may delete an
    environment (the reaper) may drain it too."""
    record = record_manifest(env)
    if stack_id:
        _label_stack(record, stack_id)
    name = record["metadata"]["name"]
    manifests = [
        record if m["kind"] == "ConfigMap" and m["metadata"]["name"] == name else m
        for m in objects.manifests
    ]
    return EnvironmentObjects(manifests, objects.notes, objects.warnings)


def manifests_for(env: EnvironmentSpec, reader: TargetReader, stack_id: str = "") -> list[Manifest]:
    """Every object of the environment (see `derive_environment`)."""
    return derive_environment(env, reader, stack_id).manifests


def _label_stack(manifest: Manifest, stack_id: str) -> None:
    """The owning stack on the object, its pods (status tells owners apart) and the Jobs
    a CronJob makes."""
    manifest["metadata"].setdefault("labels", {})[naming.LABEL_STACK] = stack_id
    template = pod_template_of_manifest(manifest)
    if template is not None:
        template["metadata"].setdefault("labels", {})[naming.LABEL_STACK] = stack_id
    if manifest["kind"] == "CronJob":
        job_meta = manifest["spec"]["jobTemplate"].setdefault("metadata", {})
        job_meta.setdefault("labels", {})[naming.LABEL_STACK] = stack_id
