"""mirrord `feature.network.incoming` -> Gateway API HTTPRoutes (pure).

Routes attached to a Service (GAMMA) carry the key-scoped traffic:

- `steal` with `^Name: value-regex$`: a rule matching that header sends the request to the
  preview Service; a catch-all rule sends everything else to the target Service itself, so
  requests without the header reach the target exactly as before.
- `steal` without a filter: mirrord's default, `^baggage: .*mirrord-session=<key>.*$`.
- `mirror`: the target keeps serving; a RequestMirror filter copies matching requests (all
  of them without a filter) to the preview Service.
- `off`, or no `incoming` in targetless mode: no route.

Precedence across environments on one target (Gateway API HTTPRoute rules): all our rules
match the path prefix `/`, so the next criterion decides, "largest number of header
matches": every environment's header rule (one header match) beats every catch-all (none),
whichever route it lives in. Two environments on one target therefore never shadow each
other as long as their headers differ (their keys do), and removing one route leaves the
others and the catch-all behaviour intact. Ties between identical rules go to the oldest
route, which only matters for two filterless `mirror` environments on one target: only the
oldest one gets the copy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from preview_stack import naming
from preview_stack.config import IncomingFeature
from preview_stack.errors import BadInput
from preview_stack.spec import EnvironmentSpec, ServiceSpec

GATEWAY_GROUP = "gateway.networking.k8s.io"
ROUTE_API_VERSION = f"{GATEWAY_GROUP}/v1"
_FILTER = re.compile(r"^\^?(?P<name>[A-Za-z0-9!#$%&'*+.^_`|~-]+):\s?(?P<value>.*?)\$?$")
_REGEX_META = set(".^$*+?()[]{}|\\")


@dataclass(frozen=True)
class HeaderMatch:
    """One Gateway API header match: `Name` equals or matches (RE2) `value`."""

    name: str
    value: str
    regex: bool

    def as_match(self) -> dict[str, str]:
        return {
            "type": "RegularExpression" if self.regex else "Exact",
            "name": self.name,
            "value": self.value,
        }

    def example_value(self) -> str | None:
        """A concrete header value that matches, for share links and `status` hints."""
        if not self.regex:
            return self.value
        core = self.value.removeprefix(".*").removesuffix(".*")
        literal = re.sub(r"\\(.)", r"\1", core)
        if any(ch in _REGEX_META for ch in re.sub(r"\\.", "", core)):
            return None
        return literal


def default_filter(key: str) -> str:
    return f"^baggage: .*mirrord-session={re.escape(key)}.*$"


def parse_header_filter(text: str) -> HeaderMatch:
    """`^Name: value-regex$` -> HeaderMatch; anything else cannot be a Gateway API match."""
    match = _FILTER.match(text.strip())
    if not match or "|" in match.group("name"):
        raise BadInput(
            f"header_filter {text!r} cannot be expressed as a Gateway API header match: use "
            "one header, like ^x-preview: pr-42$ or ^baggage: .*mirrord-session=pr-42.*$"
        )
    value = match.group("value")
    if "|" in value and re.search(r"(^|[^\\])\|.*:", value):
        raise BadInput(
            f"header_filter {text!r} matches several headers, which a Gateway API header "
            "match cannot express; use one header"
        )
    try:
        re.compile(value)
    except re.error as exc:
        raise BadInput(f"header_filter {text!r} is not a valid regex: {exc}") from None
    plain = not any(ch in _REGEX_META for ch in value)
    return HeaderMatch(name=match.group("name"), value=value, regex=not plain)


def effective_filter(incoming: IncomingFeature | None, key: str) -> HeaderMatch | None:
    """The header that selects this environment's traffic, or None (mirror everything)."""
    if incoming is None or incoming.mode == "off":
        return None
    raw = incoming.http_filter.header_filter
    if raw:
        return parse_header_filter(raw)
    return parse_header_filter(default_filter(key)) if incoming.mode == "steal" else None


def _routed_ports(
    service: Mapping[str, Any], ports: Sequence[int] | None, container_ports: Mapping[str, int]
) -> list[dict[str, Any]]:
    """The Service's ports whose target (container) port is in `ports` (all when None)."""
    chosen = []
    for port in service.get("spec", {}).get("ports", []):
        target = port.get("targetPort", port["port"])
        if isinstance(target, str):
            target = container_ports.get(target, target)
        if ports is None or target in ports or port["port"] in ports:
            chosen.append(port)
    return chosen


def service_routes(
    *,
    key: str,
    incoming: IncomingFeature | None,
    target_services: Sequence[Mapping[str, Any]],
    container_ports: Mapping[str, int],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> list[dict[str, Any]]:
    """One HTTPRoute per target Service (GAMMA), or none for `off`/absent."""
    if incoming is None or incoming.mode == "off":
        return []
    header = effective_filter(incoming, key)
    routes = []
    for service in target_services:
        name = service["metadata"]["name"]
        namespace = service["metadata"]["namespace"]
        ports = _routed_ports(service, incoming.ports, container_ports)
        for port in ports:
            # Rules apply to every parentRef of a route, and backend ports differ per Service
            # port, so each routed port gets its own route.
            number = port["port"]
            preview = {"name": naming.service_name(name, key), "port": number}
            target = {"name": name, "port": number}
            root = {"path": {"type": "PathPrefix", "value": "/"}}
            rules: list[dict[str, Any]]
            if incoming.mode == "steal":
                assert header is not None
                rules = [
                    {
                        "matches": [{**root, "headers": [header.as_match()]}],
                        "backendRefs": [preview],
                    },
                    {"matches": [root], "backendRefs": [target]},
                ]
            else:
                mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": preview}}
                if header is None:
                    rules = [{"matches": [root], "filters": [mirror], "backendRefs": [target]}]
                else:
                    rules = [
                        {
                            "matches": [{**root, "headers": [header.as_match()]}],
                            "filters": [mirror],
                            "backendRefs": [target],
                        },
                        {"matches": [root], "backendRefs": [target]},
                    ]
            suffix = f"{name}-{key}" if len(ports) == 1 else f"{name}-{number}-{key}"
            routes.append(
                {
                    "apiVersion": ROUTE_API_VERSION,
                    "kind": "HTTPRoute",
                    "metadata": {
                        "name": naming.fit(suffix),
                        "namespace": namespace,
                        "labels": dict(labels),
                        "annotations": dict(annotations),
                    },
                    "spec": {
                        "parentRefs": [
                            {"group": "", "kind": "Service", "name": name, "port": number}
                        ],
                        "rules": rules,
                    },
                }
            )
    return routes


def share_route(
    *,
    key: str,
    incoming: IncomingFeature | None,
    gateway: str,
    domain: str,
    preview_service: Mapping[str, Any],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> dict[str, Any]:
    """`<key>.<domain>` on `gateway` (ns/name): adds the key header, routes to the preview."""
    gw_namespace, _, gw_name = gateway.partition("/")
    if not gw_name:
        raise BadInput(f"--gateway {gateway!r}: use NAMESPACE/NAME")
    header = effective_filter(incoming, key) or parse_header_filter(default_filter(key))
    value = header.example_value()
    if value is None:
        raise BadInput(
            f"cannot derive a header value from the filter {header.value!r} for a "
            "share link; use a filter like ^x-preview: <key>$"
        )
    meta = preview_service["metadata"]
    port = preview_service["spec"]["ports"][0]["port"]
    return {
        "apiVersion": ROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {
            "name": naming.fit(f"share-{key}"),
            "namespace": meta["namespace"],
            "labels": dict(labels),
            "annotations": dict(annotations),
        },
        "spec": {
            "parentRefs": [{"name": gw_name, "namespace": gw_namespace}],
            "hostnames": [share_host(key, domain)],
            "rules": [
                {
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {
                                "add": [{"name": header.name, "value": value}]
                            },
                        }
                    ],
                    "backendRefs": [{"name": meta["name"], "port": port}],
                }
            ],
        },
    }


def share_host(key: str, domain: str) -> str:
    return f"{key}.{domain.strip('.')}"


def service_traffic(service: ServiceSpec, key: str) -> str | None:
    """How requests reach this service's preview pods (None with `--routing none`)."""
    return traffic_hint(service.incoming, key) if service.routing else None


def share_links(env: EnvironmentSpec) -> list[str]:
    return [
        f"http://{share_host(env.key, s.share.domain)}"
        for s in env.services
        if s.share is not None and s.routing
    ]


def traffic_hint(incoming: IncomingFeature | None, key: str) -> str | None:
    """How a request reaches this preview: the header to send, for `status`."""
    header = effective_filter(incoming, key) if incoming else None
    if incoming is None or incoming.mode == "off":
        return None
    if header is None:
        return "mirror of all traffic"
    value = header.example_value()
    shown = f"{header.name}: {value}" if value is not None else f"{header.name} ~ {header.value}"
    return f"{incoming.mode}: send header '{shown}'"
