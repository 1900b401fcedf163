"""Target workload JSON + ServiceSpec -> preview manifests. Pure: returns new dicts.

The preview pod is the target's pod template with the image replaced in one container;
it loses the target's labels (except those the user keeps) so the target's Services never
select it, and gets preview Services of its own with the same ports.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from preview_stack import naming, routing
from preview_stack.errors import BadInput, NotFound
from preview_stack.spec import EnvironmentSpec, ServiceSpec

Manifest = dict[str, Any]
SA_TOKEN_VOLUME_PREFIX = "kube-api-access-"
# Set by the API server or the kubelet on a live Pod; meaningless in a template.
_POD_RUNTIME_FIELDS = ("nodeName", "priority", "ephemeralContainers")


@dataclass(frozen=True)
class TargetWorkload:
    """What we read from the cluster for one target: its pod template and labels."""

    kind: str
    name: str
    namespace: str
    pod_labels: Mapping[str, str]
    pod_spec: Mapping[str, Any]
    pod_annotations: Mapping[str, str]


def pod_template_of(obj: Mapping[str, Any]) -> TargetWorkload:
    """The pod template of a Deployment, StatefulSet, Rollout or bare Pod object."""
    kind = str(obj.get("kind", ""))
    meta = obj.get("metadata", {})
    if kind == "Pod":
        template_meta, spec = meta, obj.get("spec", {})
    else:
        template = obj.get("spec", {}).get("template")
        if not template:
            raise BadInput(
                f"{kind.lower()}/{meta.get('name')} has no pod template "
                "(an Argo Rollout with workloadRef is read through its Deployment)"
            )
        template_meta, spec = template.get("metadata", {}), template.get("spec", {})
    return TargetWorkload(
        kind=kind.lower(),
        name=str(meta.get("name")),
        namespace=str(meta.get("namespace", "default")),
        pod_labels=dict(template_meta.get("labels") or {}),
        pod_spec=spec,
        pod_annotations=dict(template_meta.get("annotations") or {}),
    )


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service selector matches when every pair is in `labels` (empty selects nothing)."""
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def kept_labels(labels: Mapping[str, str], spec: ServiceSpec) -> dict[str, str]:
    includes = [naming.glob_to_regex(g) for g in spec.labels.include]
    excludes = [naming.glob_to_regex(g) for g in spec.labels.exclude]
    return {
        k: v
        for k, v in labels.items()
        if any(r.match(k) for r in includes) and not any(r.match(k) for r in excludes)
    }


def preview_labels(key: str, spec: ServiceSpec) -> dict[str, str]:
    """The labels that select exactly this environment's pods for this target."""
    return {naming.LABEL_KEY: key, naming.LABEL_TARGET: spec.target_label}


def object_labels(key: str, spec: ServiceSpec, component: str) -> dict[str, str]:
    return {
        **preview_labels(key, spec),
        naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
        naming.LABEL_PART_OF: key,
        naming.LABEL_COMPONENT: component,
    }


def object_annotations(env: EnvironmentSpec, spec: ServiceSpec) -> dict[str, str]:
    annotations = {
        naming.ANNOTATION_OWNER: env.owner,
        naming.ANNOTATION_CREATED_AT: env.created_at,
        naming.ANNOTATION_EXPIRES_AT: env.expires_at or "never",
        naming.ANNOTATION_TARGET: spec.target_id,
        naming.ANNOTATION_IMAGE: spec.image,
    }
    return annotations


def _filter_env(env: Sequence[Mapping[str, Any]], spec: ServiceSpec, key: str) -> list[Any]:
    rules = spec.env
    includes = [naming.glob_to_regex(g) for g in rules.include or []]
    excludes = [naming.glob_to_regex(g) for g in rules.exclude or []]
    result = []
    for var in env:
        name = str(var.get("name", ""))
        if includes and not any(r.match(name) for r in includes):
            continue
        if any(r.match(name) for r in excludes):
            continue
        if name in rules.override or name == naming.ENV_KEY_VAR:
            continue
        result.append(copy.deepcopy(dict(var)))
    result += [{"name": n, "value": v} for n, v in rules.override.items()]
    result.append({"name": naming.ENV_KEY_VAR, "value": key})
    return result


def choose_container(pod_spec: Mapping[str, Any], spec: ServiceSpec) -> str:
    names = [str(c.get("name")) for c in pod_spec.get("containers", [])]
    if not names:
        raise BadInput("the target's pod template has no containers")
    wanted = spec.target.container if spec.target else None
    if wanted is None:
        return names[0]
    if wanted not in names:
        raise NotFound(
            f"container {wanted!r} not found in {spec.display_target} "
            f"(containers: {', '.join(names)})"
        )
    return wanted


def preview_pod_spec(target: TargetWorkload, spec: ServiceSpec, key: str) -> dict[str, Any]:
    pod = copy.deepcopy(dict(target.pod_spec))
    chosen = choose_container(pod, spec)
    for field in _POD_RUNTIME_FIELDS:
        pod.pop(field, None)
    pod["restartPolicy"] = "Always"
    token_volumes = {
        v["name"] for v in pod.get("volumes", []) if v["name"].startswith(SA_TOKEN_VOLUME_PREFIX)
    }
    if token_volumes:
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] not in token_volumes]
    for group in ("initContainers", "containers"):
        for container in pod.get(group, []):
            if token_volumes and container.get("volumeMounts"):
                container["volumeMounts"] = [
                    m for m in container["volumeMounts"] if m["name"] not in token_volumes
                ]
            if group == "containers" and container["name"] == chosen:
                container["image"] = spec.image
                container["env"] = _filter_env(container.get("env", []), spec, key)
    return pod


def check_isolation(
    labels: Mapping[str, str], services: Sequence[Mapping[str, Any]], namespace: str
) -> None:
    for service in services:
        selector = service.get("spec", {}).get("selector")
        if selects(selector, labels):
            name = service.get("metadata", {}).get("name")
            raise BadInput(
                f"the kept labels would put the preview pods behind Service {namespace}/{name} "
                f"(selector {selector}); narrow feature.preview.labels.include or add "
                "the label to labels.exclude"
            )


def derive_service(
    env: EnvironmentSpec,
    spec: ServiceSpec,
    target: TargetWorkload | None,
    namespace_services: Sequence[Mapping[str, Any]],
) -> list[Manifest]:
    """The Deployment and preview Services for one ServiceSpec of environment `env`."""
    key = env.key
    selector = preview_labels(key, spec)
    if target is None:
        base = naming.image_base_name(spec.image)
        ports = (spec.incoming.ports if spec.incoming else None) or []
        pod_spec: dict[str, Any] = {
            "containers": [
                {
                    "name": base,
                    "image": spec.image,
                    "env": _filter_env([], spec, key),
                    **({"ports": [{"containerPort": p} for p in ports]} if ports else {}),
                }
            ],
        }
        pod_labels = {**selector}
        workload = base
        service_ports = [{"name": f"port-{p}", "port": p, "targetPort": p} for p in ports]
        target_services: list[tuple[str, list[Any]]] = (
            [(base, service_ports)] if service_ports else []
        )
        template_annotations: dict[str, str] = {}
        target_service_objects: list[Mapping[str, Any]] = []  # no target Service to route
    else:
        pod_spec = preview_pod_spec(target, spec, key)
        pod_labels = {**kept_labels(target.pod_labels, spec), **selector}
        check_isolation(pod_labels, namespace_services, spec.namespace)
        workload = target.name
        target_service_objects = [
            {**s, "metadata": {**s["metadata"], "namespace": spec.namespace}}
            for s in namespace_services
            if selects(s.get("spec", {}).get("selector"), target.pod_labels)
        ]
        target_services = [
            (str(s["metadata"]["name"]), _service_ports(s)) for s in target_service_objects
        ]
        template_annotations = {
            k: v
            for k, v in target.pod_annotations.items()
            if not k.startswith(("kubectl.kubernetes.io/", "deployment.kubernetes.io/"))
        }
    pod_labels.update({naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_PART_OF: key})
    annotations = object_annotations(env, spec)
    manifests: list[Manifest] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": naming.workload_name(workload, key),
                "namespace": spec.namespace,
                "labels": object_labels(key, spec, "workload"),
                "annotations": annotations,
            },
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        **({"annotations": template_annotations} if template_annotations else {}),
                    },
                    "spec": pod_spec,
                },
            },
        }
    ]
    for service, ports in target_services:
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": naming.service_name(service, key),
                    "namespace": spec.namespace,
                    "labels": object_labels(key, spec, "service"),
                    "annotations": {
                        **annotations,
                        f"{naming.DOMAIN}/previews-service": service,
                        # The Deployment's await already waits for Ready pods; the Service
                        # await would only poll its endpoints again (about 10 s).
                        "pulumi.com/skipAwait": "true",
                    },
                },
                "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
            }
        )
    manifests += _routes(env, spec, target, target_service_objects, manifests[1:])
    return manifests


def _container_ports(target: TargetWorkload | None, spec: ServiceSpec) -> dict[str, int]:
    if target is None:
        return {}
    chosen = choose_container(target.pod_spec, spec)
    ports: dict[str, int] = {}
    for container in target.pod_spec.get("containers", []):
        if container.get("name") == chosen:
            for port in container.get("ports", []) or []:
                if port.get("name"):
                    ports[port["name"]] = int(port["containerPort"])
    return ports


def _routes(
    env: EnvironmentSpec,
    spec: ServiceSpec,
    target: TargetWorkload | None,
    target_services: Sequence[Mapping[str, Any]],
    preview_services: Sequence[Manifest],
) -> list[Manifest]:
    """Key-scoped HTTPRoutes for this service (see preview_stack.routing)."""
    if not spec.routing:
        return []
    labels = object_labels(env.key, spec, "route")
    annotations = object_annotations(env, spec)
    routes = routing.service_routes(
        key=env.key,
        incoming=spec.incoming,
        target_services=target_services,
        container_ports=_container_ports(target, spec),
        labels=labels,
        annotations=annotations,
    )
    if spec.share is not None:
        if not preview_services:
            raise BadInput(
                f"a share link for {spec.display_target} needs a preview Service: the target "
                "has no Service (in targetless mode, set feature.network.incoming.ports)"
            )
        routes.append(
            routing.share_route(
                key=env.key,
                incoming=spec.incoming,
                gateway=spec.share.gateway,
                host=routing.share_host(env.key, spec.share.domain, spec.share.token),
                preview_service=preview_services[0],
                labels=labels,
                annotations=annotations,
            )
        )
    return routes


def _service_ports(service: Mapping[str, Any]) -> list[Any]:
    ports = []
    for port in service.get("spec", {}).get("ports", []):
        kept = {
            k: v
            for k, v in port.items()
            if k in ("name", "port", "targetPort", "protocol", "appProtocol")
        }
        ports.append(kept)
    return ports


def record_manifest(env: EnvironmentSpec) -> Manifest:
    """A ConfigMap describing the environment to people with kubectl: never read by
    preview-env (the backend is the authority) and free of values (overrides are named,
    not shown: they may be tokens)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.record_name(env.key),
            "namespace": env.record_namespace(),
            "labels": {
                naming.LABEL_KEY: env.key,
                naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                naming.LABEL_PART_OF: env.key,
                naming.LABEL_COMPONENT: "record",
            },
            "annotations": {
                naming.ANNOTATION_OWNER: env.owner,
                naming.ANNOTATION_CREATED_AT: env.created_at,
                naming.ANNOTATION_EXPIRES_AT: env.expires_at or "never",
            },
        },
        "data": {naming.RECORD_DATA_KEY: redacted(env).model_dump_json()},
    }


def redacted(env: EnvironmentSpec) -> EnvironmentSpec:
    """`env` with every override value replaced: what may be shown or stored in clear."""
    return env.model_copy(
        update={
            "services": [
                s.model_copy(
                    update={
                        "env": s.env.model_copy(
                            update={"override": dict.fromkeys(s.env.override, REDACTED)}
                        )
                    }
                )
                for s in env.services
            ]
        }
    )


REDACTED = "(secret)"
