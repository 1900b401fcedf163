"""The Pulumi program: one PreviewEnvironment component per stack.

`declare(env, objects)` is the single function both entry points call: the CLI's inline
program (adapters.automation) and `pulumi_up/__main__.py` (`pulumi up` on the repository's
Pulumi.yaml). The objects themselves are derived in the core (preview_stack.objects).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from preview_stack import branches, naming, routing
from preview_stack.checkpoints import PUBLIC_SPEC, SPEC_IS_PUBLIC
from preview_stack.derive import (
    FILES_OWNER_ANNOTATION,
    Manifest,
    pod_template_of_manifest,
    redacted,
)
from preview_stack.objects import EnvironmentObjects
from preview_stack.spec import EnvironmentSpec

COMPONENT_TYPE = "preview-env:index:Environment"
PASSPHRASE_CHECK = "passphraseCheck"


def _with_secret_values(manifest: Manifest, names: set[str]) -> dict[str, Any]:
    """The workload's spec with the values of `names` (env overrides: often tokens or URLs
    with passwords) as Pulumi secrets: encrypted in the state, `[secret]` in diffs. The
    provider then marks the outputs holding them secret too."""
    spec: dict[str, Any] = manifest["spec"]
    if not names:
        return spec
    copied = copy.deepcopy(manifest)
    template = pod_template_of_manifest(copied)
    assert template is not None
    spec = copied["spec"]
    pod = template["spec"]
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for var in container.get("env") or []:
            if var.get("name") in names and "value" in var:
                var["value"] = pulumi.Output.secret(var["value"])
    return spec


def _with_cluster_ips(value: Any, addresses: dict[str, pulumi.Output[str]]) -> Any:
    """`value` with each branch address placeholder replaced by its Service's ClusterIP."""
    if isinstance(value, dict):
        return {k: _with_cluster_ips(v, addresses) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_cluster_ips(v, addresses) for v in value]
    if isinstance(value, str):
        match = branches.CLUSTER_IP.match(value)
        if match:
            return addresses[match[1]]
    return value


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
        is_branch = [branches.ANNOTATION_BRANCH in m["metadata"]["annotations"] for m in manifests]
        copies, addresses = self._branches(
            env, [m for m, b in zip(manifests, is_branch, strict=True) if b]
        )
        manifests = [m for m, b in zip(manifests, is_branch, strict=True) if not b]
        workloads = {
            "Deployment": k8s.apps.v1.Deployment,
            "CronJob": k8s.batch.v1.CronJob,
            "Job": k8s.batch.v1.Job,
        }
        needs: dict[str, list[pulumi.Resource]] = {}
        files_maps: dict[tuple[str, str], k8s.core.v1.ConfigMap] = {}
        # Files' ConfigMaps before the Secrets they own, then workloads (they need both),
        # routes last: a key's requests switch to the preview once its pods are Ready, and
        # back (the route deleted first) before they go.
        rank = {"ConfigMap": 0, "Secret": 1, **dict.fromkeys(workloads, 3)}
        rank.update(dict.fromkeys(routing.ROUTE_KINDS, 4))
        ordered = sorted(manifests, key=lambda m: rank.get(m["kind"], 2))
        pods: dict[str, list[pulumi.Resource]] = {}
        for manifest in ordered:
            child = pulumi.ResourceOptions(parent=self)
            name = _resource_name(manifest)
            kind = manifest["kind"]
            meta = manifest["metadata"]
            if kind in workloads:
                target = meta["annotations"].get(naming.ANNOTATION_TARGET, "")
                seconds = timeouts.get(target, 60)
                child = pulumi.ResourceOptions(
                    parent=self,
                    custom_timeouts=pulumi.CustomTimeouts(
                        create=f"{seconds}s", update=f"{seconds}s"
                    ),
                    # A Job's pod template is immutable: a new image replaces it, in place.
                    delete_before_replace=kind == "Job",
                    # Its files, claims and database copies first (on destroy, gone after it).
                    depends_on=needs.get(target, []) + copies.get(target, []),
                )
                spec = _with_cluster_ips(
                    _with_secret_values(manifest, overrides.get(target, set())), addresses
                )
                self.resources.append(workloads[kind](name, metadata=meta, spec=spec, opts=child))
                pods.setdefault(target, []).append(self.resources[-1])
            elif kind == "Service":
                self.resources.append(
                    k8s.core.v1.Service(name, metadata=meta, spec=manifest["spec"], opts=child)
                )
            elif kind == "PersistentVolumeClaim":
                self.resources.append(
                    k8s.core.v1.PersistentVolumeClaim(
                        name, metadata=meta, spec=manifest["spec"], opts=child
                    )
                )
                needs.setdefault(meta["annotations"][naming.ANNOTATION_TARGET], []).append(
                    self.resources[-1]
                )
            elif kind == "ConfigMap":
                config_map = k8s.core.v1.ConfigMap(
                    name,
                    metadata=meta,
                    data=manifest["data"],
                    binary_data=manifest.get("binaryData"),
                    opts=child,
                )
                self.resources.append(config_map)
                if naming.ANNOTATION_TARGET in meta.get("annotations", {}):  # files
                    needs.setdefault(meta["annotations"][naming.ANNOTATION_TARGET], []).append(
                        config_map
                    )
                    files_maps[(meta["namespace"], meta["name"])] = config_map
            elif kind == "Secret":  # secret_mounts: encrypted in the state, never shown
                data = {k: pulumi.Output.secret(v) for k, v in manifest["data"].items()}
                # Owned by the files ConfigMap and left to the garbage collector on delete:
                # Pulumi's delete await watches the object, and the reaper may only get
                # Secrets (never list or watch them). Deleting the ConfigMap removes it.
                owner_name = meta["annotations"][FILES_OWNER_ANNOTATION]
                owner = files_maps[(meta["namespace"], owner_name)]
                owned = {
                    **meta,
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "name": owner_name,
                            "uid": owner.metadata.apply(lambda m: m.uid),
                        }
                    ],
                }
                self.resources.append(
                    k8s.core.v1.Secret(
                        name,
                        metadata=owned,
                        type=manifest["type"],
                        data=data,
                        opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
                    )
                )
                needs.setdefault(meta["annotations"][naming.ANNOTATION_TARGET], []).append(
                    self.resources[-1]
                )
            else:  # routes (HTTPRoute, GRPCRoute): after their target's pods are Ready
                target = meta["annotations"].get(naming.ANNOTATION_TARGET, "")
                self.resources.append(
                    k8s.apiextensions.CustomResource(
                        name,
                        api_version=manifest["apiVersion"],
                        kind=kind,
                        metadata=manifest["metadata"],
                        spec=manifest.get("spec"),
                        opts=pulumi.ResourceOptions(parent=self, depends_on=pods.get(target, [])),
                    )
                )
        self.register_outputs({"key": env.key, "expiresAt": env.expires_at})

    def _branches(
        self, env: EnvironmentSpec, manifests: Sequence[Manifest]
    ) -> tuple[dict[str, list[pulumi.Resource]], dict[str, pulumi.Output[str]]]:
        """Each branch: Secret, Service, server, RBAC, then the copy Job waiting on the
        server. Returns the copy Jobs each target waits for and the servers' addresses."""
        order = [
            "Service",
            "Secret",
            "PersistentVolumeClaim",
            "Deployment",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Job",
        ]
        addresses: dict[str, pulumi.Output[str]] = {}
        service_names: dict[str, str] = {}
        by_branch: dict[str, dict[str, pulumi.CustomResource]] = {}
        owners = {b.id: s for b, s in env.branches()}
        for manifest in sorted(manifests, key=lambda m: order.index(m["kind"])):
            meta, kind = manifest["metadata"], manifest["kind"]
            branch_id = meta["annotations"][branches.ANNOTATION_BRANCH]
            made = by_branch.setdefault(branch_id, {})
            seconds = owners[branch_id].creation_timeout_secs
            timeouts = pulumi.CustomTimeouts(create=f"{seconds}s", update=f"{seconds}s")
            child = pulumi.ResourceOptions(parent=self, custom_timeouts=timeouts)
            name = _resource_name(manifest)
            resource: pulumi.CustomResource
            if kind in ("Secret", "ServiceAccount", "Role", "RoleBinding"):
                # Owned by the branch's Service and left to the garbage collector on delete,
                # like the files' Secrets: the reaper may delete Services, never Secrets or
                # RBAC objects.
                owner = made["Service"]
                assert isinstance(owner, k8s.core.v1.Service)
                meta = {
                    **meta,
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Service",
                            "name": service_names[branch_id],
                            "uid": owner.metadata.apply(lambda m: m.uid),
                        }
                    ],
                }
                child = pulumi.ResourceOptions(
                    parent=self, retain_on_delete=True, depends_on=[owner]
                )
            if kind == "Secret":  # the password, kept for life; `url` is the copy Job's
                data = {k: pulumi.Output.secret(v) for k, v in manifest["stringData"].items()}
                resource = k8s.core.v1.Secret(
                    name,
                    metadata=meta,
                    type=manifest["type"],
                    string_data=data,
                    opts=pulumi.ResourceOptions.merge(
                        child, pulumi.ResourceOptions(ignore_changes=["stringData", "data"])
                    ),
                )
            elif kind == "Service":
                resource = k8s.core.v1.Service(
                    name, metadata=meta, spec=manifest["spec"], opts=child
                )
                addresses[meta["name"]] = resource.spec.apply(lambda s: s.cluster_ip or "")
                service_names[branch_id] = meta["name"]
            elif kind == "PersistentVolumeClaim":  # the server's data, deleted after it
                resource = k8s.core.v1.PersistentVolumeClaim(
                    name, metadata=meta, spec=manifest["spec"], opts=child
                )
            elif kind == "Deployment":
                needs = [
                    made["Secret"],
                    *[c for k, c in made.items() if k == "PersistentVolumeClaim"],
                ]
                resource = k8s.apps.v1.Deployment(
                    name,
                    metadata=meta,
                    spec=manifest["spec"],
                    opts=pulumi.ResourceOptions.merge(
                        child, pulumi.ResourceOptions(depends_on=needs)
                    ),
                )
            elif kind == "ServiceAccount":
                resource = k8s.core.v1.ServiceAccount(name, metadata=meta, opts=child)
            elif kind == "Role":
                resource = k8s.rbac.v1.Role(
                    name, metadata=meta, rules=manifest["rules"], opts=child
                )
            elif kind == "RoleBinding":
                resource = k8s.rbac.v1.RoleBinding(
                    name,
                    metadata=meta,
                    role_ref=manifest["roleRef"],
                    subjects=manifest["subjects"],
                    opts=child,
                )
            else:  # the copy Job: after the server is Ready (and its RBAC exists)
                secret_names = set(branches.source_value_names())
                spec = _with_cluster_ips(_with_secret_values(manifest, secret_names), addresses)
                resource = k8s.batch.v1.Job(
                    name,
                    metadata=meta,
                    spec=spec,
                    opts=pulumi.ResourceOptions.merge(
                        child,
                        pulumi.ResourceOptions(
                            delete_before_replace=True, depends_on=list(made.values())
                        ),
                    ),
                )
            made[kind] = resource
            self.resources.append(resource)
        copies: dict[str, list[pulumi.Resource]] = {}
        for service in env.services:
            for branch in service.db_branches:
                if "Job" in by_branch.get(branch.id, {}):
                    copies.setdefault(service.target_id, []).append(by_branch[branch.id]["Job"])
        return copies, addresses


def declare(
    env: EnvironmentSpec | None, objects: EnvironmentObjects | None
) -> PreviewEnvironment | None:
    """Declare the environment and export its spec (for anyone sharing the backend).

    `objects` are `env`'s, derived by the caller (preview_stack.objects.derive_environment)
    once per update. `None` declares nothing: the update deletes every object and leaves
    `spec` null.
    The spec is exported only after every object is live (see below).
    """
    # A secret output, so reading the stack checks the passphrase: Pulumi itself decrypts
    # lazily and would let a wrong passphrase pass unnoticed while nothing else is secret.
    pulumi.export(PASSPHRASE_CHECK, pulumi.Output.secret("preview-env"))
    if env is None or objects is None:
        pulumi.export("spec", None)
        pulumi.export(PUBLIC_SPEC, None)
        return None
    component = PreviewEnvironment(env, objects.manifests)
    # The spec becomes the backend's truth only once every object is live: the outputs wait
    # on each resource's id, so a failed or killed update leaves the last good spec in place
    # (its half-made objects are outside the spec, and the next update removes them).
    live = pulumi.Output.all(*[r.id for r in component.resources])
    spec = json.loads(env.model_dump_json())
    pulumi.export("key", env.key)
    pulumi.export("expiresAt", live.apply(lambda _: env.expires_at))
    # Secret: it holds the override values (read back with --show-secrets, under the lock).
    pulumi.export("spec", pulumi.Output.secret(live.apply(lambda _: spec)))
    # In clear, on the same condition: scans read it from the checkpoints without `pulumi`
    # (preview_stack.checkpoints); `specIsPublic` says nothing was redacted, so the next
    # change may take it for the whole spec.
    public = redacted(env)
    public_json = json.loads(public.model_dump_json())
    pulumi.export(PUBLIC_SPEC, live.apply(lambda _: public_json))
    pulumi.export(SPEC_IS_PUBLIC, live.apply(lambda _: public == env))
    return component
