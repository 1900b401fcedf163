"""The Pulumi program: one PreviewEnvironment component per stack.

`declare(env, reader, stack_id)` is the single function both entry points call: the CLI's inline
program (Automation API) and `__main__.py` (`pulumi up` on the repository's Pulumi.yaml).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any, Protocol

import pulumi
import pulumi_kubernetes as k8s

from preview_stack import naming
from preview_stack.derive import Manifest, TargetWorkload, derive_service, record_manifest
from preview_stack.errors import BadInput
from preview_stack.spec import EnvironmentSpec, ServiceSpec

COMPONENT_TYPE = "preview-env:index:Environment"
PASSPHRASE_CHECK = "passphraseCheck"


class TargetReader(Protocol):
    """Where target pod templates and namespace Services come from (the cluster)."""

    def workload(self, spec: ServiceSpec) -> TargetWorkload | None: ...

    def services(self, namespace: str) -> list[dict[str, Any]]: ...


def manifests_for(env: EnvironmentSpec, reader: TargetReader, stack_id: str = "") -> list[Manifest]:
    """Every object of the environment, record last, each labelled with its owning stack."""
    shared = [s.display_target for s in env.services if s.share is not None]
    if len(shared) > 1:
        raise BadInput(
            f"one share link per environment (asked by {', '.join(shared)}); "
            "drop --gateway/--share-domain for all but one target"
        )
    manifests: list[Manifest] = []
    for service in env.services:
        manifests += derive_service(
            env, service, reader.workload(service), reader.services(service.namespace)
        )
    manifests.append(record_manifest(env))
    if stack_id:
        for manifest in manifests:
            manifest["metadata"].setdefault("labels", {})[naming.LABEL_STACK] = stack_id
            if manifest["kind"] == "Deployment":  # pods too: status tells owners apart
                template = manifest["spec"]["template"]["metadata"]
                template.setdefault("labels", {})[naming.LABEL_STACK] = stack_id
    return manifests


def _with_secret_values(spec: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The Deployment spec with the values of `names` (env overrides: often tokens or URLs
    with passwords) as Pulumi secrets: encrypted in the state, `[secret]` in diffs. The
    provider then marks the outputs holding them secret too."""
    if not names:
        return spec
    spec = copy.deepcopy(spec)
    pod = spec["template"]["spec"]
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for var in container.get("env") or []:
            if var.get("name") in names and "value" in var:
                var["value"] = pulumi.Output.secret(var["value"])
    return spec


def _resource_name(manifest: Manifest) -> str:
    meta = manifest["metadata"]
    return f"{manifest['kind'].lower()}:{meta['namespace']}/{meta['name']}"


class PreviewEnvironment(pulumi.ComponentResource):
    """All Kubernetes objects of one environment, as children of one component."""

    def __init__(
        self,
        env: EnvironmentSpec,
        manifests: Sequence[Manifest],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(COMPONENT_TYPE, env.key, None, opts)
        timeouts = {s.target_id: s.creation_timeout_secs for s in env.services}
        overrides = {s.target_id: set(s.env.override) for s in env.services}
        self.resources: list[pulumi.CustomResource] = []
        for manifest in manifests:
            child = pulumi.ResourceOptions(parent=self)
            name = _resource_name(manifest)
            kind = manifest["kind"]
            if kind == "Deployment":
                target = manifest["metadata"]["annotations"].get(naming.ANNOTATION_TARGET, "")
                seconds = timeouts.get(target, 60)
                child = pulumi.ResourceOptions(
                    parent=self,
                    custom_timeouts=pulumi.CustomTimeouts(
                        create=f"{seconds}s", update=f"{seconds}s"
                    ),
                )
                spec = _with_secret_values(manifest["spec"], overrides.get(target, set()))
                self.resources.append(
                    k8s.apps.v1.Deployment(
                        name, metadata=manifest["metadata"], spec=spec, opts=child
                    )
                )
            elif kind == "Service":
                self.resources.append(
                    k8s.core.v1.Service(
                        name, metadata=manifest["metadata"], spec=manifest["spec"], opts=child
                    )
                )
            elif kind == "ConfigMap":
                self.resources.append(
                    k8s.core.v1.ConfigMap(
                        name, metadata=manifest["metadata"], data=manifest["data"], opts=child
                    )
                )
            else:  # routes and other kinds arrive with later features
                self.resources.append(
                    k8s.apiextensions.CustomResource(
                        name,
                        api_version=manifest["apiVersion"],
                        kind=kind,
                        metadata=manifest["metadata"],
                        spec=manifest.get("spec"),
                        opts=child,
                    )
                )
        self.register_outputs({"key": env.key, "expiresAt": env.expires_at})


def declare(
    env: EnvironmentSpec | None, reader: TargetReader, stack_id: str = ""
) -> PreviewEnvironment | None:
    """Declare the environment and export its spec (for anyone sharing the backend).

    `None` declares nothing: the update deletes every object and leaves `spec` null.
    The spec is exported only after every object is live (see below).
    """
    # A secret output, so reading the stack checks the passphrase: Pulumi itself decrypts
    # lazily and would let a wrong passphrase pass unnoticed while nothing else is secret.
    pulumi.export(PASSPHRASE_CHECK, pulumi.Output.secret("preview-env"))
    if env is None:
        pulumi.export("spec", None)
        return None
    component = PreviewEnvironment(env, manifests_for(env, reader, stack_id))
    # The spec becomes the backend's truth only once every object is live: the outputs wait
    # on each resource's id, so a failed or killed update leaves the last good spec in place
    # (its half-made objects are outside the spec, and the next update removes them).
    live = pulumi.Output.all(*[r.id for r in component.resources])
    spec = json.loads(env.model_dump_json())
    pulumi.export("key", env.key)
    pulumi.export("expiresAt", live.apply(lambda _: env.expires_at))
    # Secret: it holds the override values (read back with --show-secrets, under the lock).
    pulumi.export("spec", pulumi.Output.secret(live.apply(lambda _: spec)))
    return component
