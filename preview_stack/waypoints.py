"""Waypoints: key routing inside the cluster without a mesh (pure).

A platform engineer puts a waypoint in front of a Service once (`preview-env waypoint add
NS/SERVICE`, or `pulumi up -s waypoint.NS.SERVICE`), never per preview. The waypoint is a
Traefik Deployment serving a Gateway of its own; the Service keeps its name, ClusterIP and
ports, and only its selector changes, to the waypoint's pods. Staging's pods move behind a
second Service, `<service>-origin` (the original selector and ports), which the waypoint's
default route sends every request to. A preview of a target behind the Service then finds
that route among the routes to its namespace (it is no preview-env route: the waypoint's
objects are `managed-by: preview-env-waypoint`) and, like any Gateway route to its
target's Service, twins it (routing.twin_routes): the twin, in the key's stack, has the
waypoint's Gateway as parent, the key's header match and the preview Service as backend.
So a request to the Service's ClusterIP with the key's header reaches the preview, any
other reaches staging, and the twin goes with the environment (clean, reaper, destroy).

Why these choices:
- One GatewayClass per waypoint, labelled `preview-env.dev/waypoint=<ns>.<service>`, and a
  Traefik started with `--providers.kubernetesgateway.labelselector` on that label: Traefik's
  controllerName is fixed (`traefik.io/gateway-controller`) and its label selector filters
  GatewayClasses, so each waypoint serves its own Gateway only. Another Traefik serving
  Gateways in the cluster should ignore waypoint classes with
  `--providers.kubernetesgateway.labelselector=!preview-env.dev/waypoint` (the bed's does).
- Listeners on the Service's target ports: the Service's ports are untouched, so its
  `targetPort`s (numbers, or names the waypoint's container ports carry) must reach the
  waypoint. Traefik maps a Gateway listener to the entry point with its port.
- Readiness through the waypoint itself: a probe rule on the first listener answers a
  redirect only once Traefik has loaded the default routes, so the Deployment is Ready when
  requests would be routed, not merely when Traefik listens; the selector is swapped only
  after that (never a request answered 404 by a waypoint with no routes yet).
- The original selector is recorded in an annotation on the Service when swapping (a JSON
  Patch whose `test` makes the swap atomic against a concurrent writer); `remove` restores
  exactly it, and both refuse a selector they did not write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from preview_stack import naming
from preview_stack.errors import BadInput

KIND = "waypoint"
LABEL_WAYPOINT = f"{naming.DOMAIN}/waypoint"  # <ns>.<service>, on every waypoint object
LABEL_POD = f"{naming.DOMAIN}/waypoint-pod"  # the waypoint's pods: the swapped selector
ANNOTATION_ORIGINAL_SELECTOR = f"{naming.DOMAIN}/waypoint-original-selector"
ANNOTATION_FOR = f"{naming.DOMAIN}/waypoint-for"  # NS/SERVICE, on every waypoint object
MANAGED_BY = "preview-env-waypoint"  # not naming.MANAGED_BY: previews twin its routes
CONTROLLER = "traefik.io/gateway-controller"  # Traefik's fixed controllerName
DEFAULT_IMAGE = "traefik:v3.6.12"
PROBE_HEADER = "x-preview-env-waypoint-probe"
PROBE_PATH = "/.preview-env/waypoint-ready"
_UID = 65532
_NAMED_PORT_BASE = 10080
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class WaypointOptions:
    """How the waypoint's pods run: Traefik's image, replicas and placement."""

    image: str = DEFAULT_IMAGE
    replicas: int = 1
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()


def parse_service_ref(text: str) -> tuple[str, str]:
    """`NS/SERVICE` -> (namespace, name); BadInput naming the fix otherwise."""
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise BadInput(f"{text!r}: name the Service as NAMESPACE/SERVICE, like staging/orders")
    for part in (namespace, name):
        if len(part) > naming.NAME_MAX or not _DNS_LABEL.match(part):
            raise BadInput(f"{text!r}: {part!r} is not a valid Kubernetes name")
    return namespace, name


def parse_tolerations(texts: Sequence[str]) -> list[dict[str, str]]:
    """`key[=value]:Effect` (kubectl taint's syntax) -> tolerations."""
    tolerations = []
    for text in texts:
        spec, _, effect = text.rpartition(":")
        if not spec or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise BadInput(
                f"--toleration {text!r}: use KEY[=VALUE]:EFFECT, EFFECT one of NoSchedule, "
                "PreferNoSchedule, NoExecute"
            )
        key, eq, value = spec.partition("=")
        toleration = {"key": key, "effect": effect, "operator": "Equal" if eq else "Exists"}
        if eq:
            toleration["value"] = value
        tolerations.append(toleration)
    return tolerations


def parse_node_selector(texts: Sequence[str]) -> dict[str, str]:
    """`key=value` pairs -> a nodeSelector."""
    chosen = {}
    for text in texts:
        key, eq, value = text.partition("=")
        if not eq or not key:
            raise BadInput(f"--node-selector {text!r}: use KEY=VALUE")
        chosen[key] = value
    return chosen


@dataclass(frozen=True)
class Names:
    """Every name a waypoint in front of Service `namespace/service` uses."""

    namespace: str
    service: str

    @property
    def label(self) -> str:
        return naming.label_value(f"{self.namespace}.{self.service}")

    @property
    def stack(self) -> str:
        return naming.platform_stack(KIND, self.namespace, self.service)

    @property
    def workload(self) -> str:  # Deployment, ServiceAccount and Gateway
        return naming.fit(f"{self.service}-waypoint")

    @property
    def origin(self) -> str:
        return naming.fit(f"{self.service}-origin")

    @property
    def cluster_wide(self) -> str:  # GatewayClass, ClusterRole(Binding)
        return naming.fit(f"preview-env-waypoint-{self.namespace}-{self.service}")

    def route(self, port: int) -> str:
        return naming.fit(f"{self.service}-waypoint-{port}")

    @property
    def selector(self) -> dict[str, str]:
        """What the Service selects once swapped: the waypoint's pods."""
        return {LABEL_POD: self.label}


def check_service(service: Mapping[str, Any]) -> None:
    """Refuse a Service a waypoint cannot stand in front of (nothing created yet)."""
    meta, spec = service["metadata"], service.get("spec") or {}
    where = f"{meta['namespace']}/{meta['name']}"
    if spec.get("type") == "ExternalName":
        raise BadInput(f"service {where} is an ExternalName: a waypoint needs pods behind it")
    if spec.get("clusterIP") == "None":
        raise BadInput(
            f"service {where} is headless (clients reach pods directly, never a ClusterIP): "
            "a waypoint cannot stand in front of it"
        )
    if not spec.get("selector"):
        raise BadInput(
            f"service {where} has no selector (its endpoints are written by hand): nothing to "
            "move behind a waypoint"
        )
    for port in spec.get("ports") or []:
        if port.get("protocol", "TCP") != "TCP":
            raise BadInput(
                f"service {where} port {port['port']} is {port['protocol']}: a waypoint "
                "routes HTTP over TCP only"
            )
    listen = [p for _, p in listen_ports(service)]
    if len(set(listen)) != len(listen):
        raise BadInput(
            f"service {where} sends two ports to one target port: a waypoint listener needs "
            "one target port per Service port"
        )


def listen_ports(service: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], int]]:
    """Each Service port with the port the waypoint listens on: its numeric target port,
    or for a named one a free port the waypoint's container port of that name carries."""
    ports = (service.get("spec") or {}).get("ports") or []
    numbers = {int(p.get("targetPort", p["port"])) for p in ports if _numeric(p)}
    spare = (n for n in range(_NAMED_PORT_BASE, 65536) if n not in numbers)
    return [(p, int(p.get("targetPort", p["port"])) if _numeric(p) else next(spare)) for p in ports]


def _numeric(port: Mapping[str, Any]) -> bool:
    return not isinstance(port.get("targetPort", port["port"]), str)


def original_selector(service: Mapping[str, Any]) -> dict[str, str]:
    """The selector staging's pods answer to: the recorded one once swapped."""
    meta = service["metadata"]
    recorded = (meta.get("annotations") or {}).get(ANNOTATION_ORIGINAL_SELECTOR)
    if recorded:
        loaded: dict[str, str] = json.loads(recorded)
        return loaded
    return dict((service.get("spec") or {}).get("selector") or {})


def selector_state(service: Mapping[str, Any]) -> str:
    """`original` (no waypoint in front), `waypoint` (swapped by us) or `foreign` (an
    annotation of ours with a selector we did not write, or our selector without it)."""
    meta, spec = service["metadata"], service.get("spec") or {}
    names = Names(meta["namespace"], meta["name"])
    recorded = (meta.get("annotations") or {}).get(ANNOTATION_ORIGINAL_SELECTOR)
    current = dict(spec.get("selector") or {})
    if recorded is None:
        return "foreign" if LABEL_POD in current else "original"
    if current == names.selector:
        return "waypoint"
    return "original" if current == json.loads(recorded) else "foreign"


def foreign_problem(service: Mapping[str, Any], verb: str) -> str:
    meta = service["metadata"]
    selector = json.dumps((service.get("spec") or {}).get("selector") or {}, sort_keys=True)
    return (
        f"waypoint {verb} {meta['namespace']}/{meta['name']}: its selector {selector} was not "
        "written by preview-env waypoint; restore the Service's selector by hand (and remove "
        f"the {ANNOTATION_ORIGINAL_SELECTOR} annotation), then retry"
    )


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def swap_patch(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON Patch: the selector to the waypoint's pods, the original one recorded; its
    `test` fails (HTTP 422) if another writer changed the selector meanwhile."""
    meta = service["metadata"]
    current = dict(service["spec"]["selector"])
    names = Names(meta["namespace"], meta["name"])
    annotations = meta.get("annotations")
    record = json.dumps(current, sort_keys=True)
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/spec/selector", "value": current},
        {"op": "replace", "path": "/spec/selector", "value": names.selector},
    ]
    if annotations is None:
        ops.append(
            {
                "op": "add",
                "path": "/metadata/annotations",
                "value": {ANNOTATION_ORIGINAL_SELECTOR: record},
            }
        )
    else:
        path = f"/metadata/annotations/{_escape(ANNOTATION_ORIGINAL_SELECTOR)}"
        ops.append({"op": "add", "path": path, "value": record})
    return ops


def restore_patch(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON Patch: the recorded selector back, the record removed (tested like the swap)."""
    meta = service["metadata"]
    path = f"/metadata/annotations/{_escape(ANNOTATION_ORIGINAL_SELECTOR)}"
    return [
        {"op": "test", "path": "/spec/selector", "value": service["spec"]["selector"]},
        {"op": "replace", "path": "/spec/selector", "value": original_selector(service)},
        {"op": "remove", "path": path},
    ] if ANNOTATION_ORIGINAL_SELECTOR in (meta.get("annotations") or {}) else []  # fmt: skip


def _labels(names: Names) -> dict[str, str]:
    return {
        naming.LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_WAYPOINT: names.label,
    }


def manifests(service: Mapping[str, Any], options: WaypointOptions) -> list[dict[str, Any]]:
    """The waypoint's objects, from the Service as read (swapped or not), in the order
    they must exist: RBAC, class, Gateway, staging's Service, routes, then Traefik (whose
    readiness needs its routes)."""
    check_service(service)
    meta = service["metadata"]
    names = Names(meta["namespace"], meta["name"])
    ns, labels = names.namespace, _labels(names)
    ports = listen_ports(service)

    def md(name: str, namespaced: bool = True) -> dict[str, Any]:
        base: dict[str, Any] = {
            "name": name,
            "labels": dict(labels),
            "annotations": {ANNOTATION_FOR: f"{ns}/{names.service}"},
        }
        return {**base, "namespace": ns} if namespaced else base

    spec = service.get("spec") or {}
    origin_ports = [
        {
            k: v
            for k, v in p.items()
            if k in ("name", "port", "targetPort", "protocol", "appProtocol")
        }
        for p in spec.get("ports") or []
    ]
    origin = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": md(names.origin),
        "spec": {"selector": original_selector(service), "ports": origin_ports},
    }
    listeners = [
        {
            "name": f"port-{p['port']}",
            "protocol": "HTTP",
            "port": listen,
            "allowedRoutes": {"namespaces": {"from": "Same"}},
        }
        for p, listen in ports
    ]
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": md(names.workload)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": md(names.cluster_wide, namespaced=False),
            "rules": traefik_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": md(names.cluster_wide, namespaced=False),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": names.cluster_wide,
            },
            "subjects": [{"kind": "ServiceAccount", "name": names.workload, "namespace": ns}],
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": md(names.cluster_wide, namespaced=False),
            "spec": {"controllerName": CONTROLLER},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": md(names.workload),
            "spec": {"gatewayClassName": names.cluster_wide, "listeners": listeners},
        },
        origin,
    ]
    for index, (port, _) in enumerate(ports):
        rules: list[dict[str, Any]] = [
            {"backendRefs": [{"name": names.origin, "port": int(port["port"])}]}
        ]
        if index == 0:
            rules.append(_probe_rule(names))
        items.append(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": md(names.route(int(port["port"]))),
                "spec": {
                    "parentRefs": [
                        {
                            "name": names.workload,
                            "namespace": ns,
                            "sectionName": f"port-{port['port']}",
                        }
                    ],
                    "rules": rules,
                },
            }
        )
    items.append(_deployment(names, ports, options, labels))
    return items


def _probe_rule(names: Names) -> dict[str, Any]:
    """A redirect (a probe success for the kubelet, which does not follow it to another
    host) answered only once Traefik serves the waypoint's routes."""
    return {
        "matches": [
            {
                "path": {"type": "Exact", "value": PROBE_PATH},
                "headers": [{"type": "Exact", "name": PROBE_HEADER, "value": names.label}],
            }
        ],
        "filters": [
            {
                "type": "RequestRedirect",
                "requestRedirect": {"hostname": "waypoint-ready.invalid", "statusCode": 302},
            }
        ],
    }


def _deployment(
    names: Names,
    ports: Sequence[tuple[Mapping[str, Any], int]],
    options: WaypointOptions,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    args = [f"--entryPoints.p{listen}.address=:{listen}" for _, listen in ports] + [
        "--providers.kubernetesgateway=true",
        f"--providers.kubernetesgateway.labelselector={LABEL_WAYPOINT}={names.label}",
        f"--providers.kubernetesgateway.namespaces={names.namespace}",
        f"--providers.kubernetesgateway.statusaddress.hostname="
        f"{names.service}.{names.namespace}.svc",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=INFO",
    ]
    container_ports = [
        {
            "name": str(p["targetPort"]) if not _numeric(p) else f"p{listen}"[:15],
            "containerPort": listen,
        }
        for p, listen in ports
    ]
    pod_labels = {**labels, **names.selector}
    security: dict[str, Any] = {"runAsUser": _UID, "runAsNonRoot": True}
    if any(listen < 1024 for _, listen in ports):  # a safe sysctl: no root for port 80
        security["sysctls"] = [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    pod: dict[str, Any] = {
        "serviceAccountName": names.workload,
        "terminationGracePeriodSeconds": 5,
        "securityContext": security,
        "containers": [
            {
                "name": "traefik",
                "image": options.image,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "ports": container_ports,
                "readinessProbe": {
                    "httpGet": {
                        "path": PROBE_PATH,
                        "port": ports[0][1],
                        "httpHeaders": [{"name": PROBE_HEADER, "value": names.label}],
                    },
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
            }
        ],
    }
    if options.node_selector:
        pod["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        pod["tolerations"] = [dict(t) for t in options.tolerations]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": names.workload,
            "namespace": names.namespace,
            "labels": dict(labels),
            "annotations": {ANNOTATION_FOR: f"{names.namespace}/{names.service}"},
        },
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": dict(names.selector)},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }


def traefik_rules() -> list[dict[str, Any]]:
    """What Traefik's Kubernetes Gateway provider reads and writes (its documented
    kubernetes-gateway-rbac.yml, without the pods rule only OpenTelemetry needs)."""
    group = "gateway.networking.k8s.io"
    kinds = (
        "gatewayclasses", "gateways", "httproutes", "grpcroutes", "tcproutes", "tlsroutes",
        "referencegrants", "backendtlspolicies",
    )  # fmt: skip
    return [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": [""],
            "resources": ["services", "secrets", "configmaps"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
        {"apiGroups": [group], "resources": list(kinds), "verbs": ["get", "list", "watch"]},
        {"apiGroups": [group], "resources": [f"{k}/status" for k in kinds], "verbs": ["update"]},
    ]


class WaypointStatus(BaseModel):
    """One waypoint, as `waypoint list` reports it."""

    service: str  # NS/SERVICE
    selector: str  # waypoint | original | foreign | missing (the Service is gone)
    gateway: str
    origin: str
    ready: bool  # the waypoint's Deployment has ready pods
    stack: bool  # its platform stack exists in this backend
    preview_routes: list[str] = Field(default_factory=list, alias="previewRoutes")

    model_config = {"populate_by_name": True}
