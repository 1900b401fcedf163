"""mirrord `feature.network.incoming` -> Gateway API HTTPRoutes (pure).

Routes attached to a Service (GAMMA) carry the key-scoped traffic:

- `steal` with `^Name: value-regex$`: a rule matching that header sends the request to the
  preview Service; a catch-all rule sends everything else to the target Service itself, so
  requests without the header reach the target exactly as before.
- `steal` without a filter: a `baggage` header holding the W3C baggage member
  `mirrord-session=<key>` (mirrord's convention). The value regex (`default_filter`) accepts
  the member anywhere in the comma-separated list, with optional whitespace and `;property`
  parts, but only as a whole member: `mirrord-session=pr-12` or `xmirrord-session=pr-1`
  never reach `pr-1`. It is anchored (`^...$`), so RE2 full-match (Envoy) and search agree.
- `mirror`: the target keeps serving; a RequestMirror filter copies matching requests (all
  of them without a filter) to the preview Service.
- `off`, or no `incoming` in targetless mode: no route.

North-south twins (`twin_routes`): every HTTPRoute or GRPCRoute of the cluster attached to a
Gateway whose rules send traffic to the target's Service (the platform's public routes) gets
a twin in the key's stack: the same Gateway parents and hostnames, each of those rules with
the key's header added to every match, and the preview Service as its backend (`mirror`
with a header filter: the original backends, plus a RequestMirror filter to the preview;
HTTPRoutes only). A twin rule has one header match more than the rule it copies, so it wins
for the key's requests and nothing else changes for the others.

Served or not (`route_states`): a route counts as served when, for each of its parents, the
controller wrote `Accepted` (and did not refuse its references) for the route's current
generation, and the Gateway's class does not say it lacks a feature the route uses
(`GatewayClass.status.supportedFeatures`; Traefik, for one, accepts a RequestMirror filter
and then answers 500).

Precedence across environments on one target (Gateway API HTTPRoute rules): all our rules
match the path prefix `/`, so the next criterion decides, "largest number of header
matches": every environment's header rule (one header match) beats every catch-all (none),
whichever route it lives in. Default filters of different keys never match the same
request (short of a baggage header naming both keys), so environments never shadow each
other, and removing one route leaves the others and the catch-all behaviour intact. A
request matching two environments' header rules goes to the oldest route: that happens
when a user filter also matches another key's header (`crossing_keys` finds those, from
the `preview-env.dev/header-example` annotation each route carries; see `route_headers`),
and for two filterless `mirror` environments on one target, where only the oldest one gets
the copy.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from preview_stack import naming
from preview_stack.config import IncomingFeature
from preview_stack.errors import BadInput, Busy
from preview_stack.spec import EnvironmentSpec, ServiceSpec

GATEWAY_GROUP = "gateway.networking.k8s.io"
ROUTE_API_VERSION = f"{GATEWAY_GROUP}/v1"
_FILTER = re.compile(r"^\^?(?P<name>[A-Za-z0-9!#$%&'*+.^_`|~-]+):\s?(?P<value>.*?)\$?$")
_REGEX_META = set(".^$*+?()[]{}|\\")
_OWS = r"[ \t]*"  # W3C baggage optional whitespace
SESSION_MEMBER = "mirrord-session"
ANNOTATION_HEADER_EXAMPLE = f"{naming.DOMAIN}/header-example"
# What a route of ours is for: "mesh" (GAMMA, on the target's Service), "gateway" (a twin of
# a public route) or "share" (a share link); and for a twin, which route it copies.
ANNOTATION_ROUTE = f"{naming.DOMAIN}/route"
ANNOTATION_TWIN_OF = f"{naming.DOMAIN}/twin-of"
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
_HTTP_APP_PROTOCOLS = {"http", "https", "kubernetes.io/h2c", "kubernetes.io/ws"}
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class HeaderMatch:
    """One Gateway API header match: `Name` equals or matches (RE2) `value`."""

    name: str
    value: str
    regex: bool
    example: str | None = None  # a concrete matching value, when known

    def as_match(self) -> dict[str, str]:
        return {
            "type": "RegularExpression" if self.regex else "Exact",
            "name": self.name,
            "value": self.value,
        }

    def example_value(self) -> str | None:
        """A concrete header value that matches, for share links and `status` hints."""
        if self.example is not None:
            return self.example
        if not self.regex:
            return self.value
        core = self.value.removeprefix(".*").removesuffix(".*")
        literal = re.sub(r"\\(.)", r"\1", core)
        if any(ch in _REGEX_META for ch in re.sub(r"\\.", "", core)):
            return None
        return literal

    def matches(self, value: str) -> bool:
        """Whether a header value matches (full-match, as Envoy does; Python `re`)."""
        return bool(re.fullmatch(self.value, value)) if self.regex else self.value == value


def default_filter(key: str) -> HeaderMatch:
    """`baggage` holding the whole W3C baggage member `mirrord-session=<key>`."""
    member = rf"{_OWS}{SESSION_MEMBER}{_OWS}={_OWS}{re.escape(key)}{_OWS}"
    return HeaderMatch(
        name="baggage",
        value=f"^(?:.*,)?{member}(?:[;,].*)?$",
        regex=True,
        example=f"{SESSION_MEMBER}={key}",
    )


def parse_header_filter(text: str) -> HeaderMatch:
    """`^Name: value-regex$` -> HeaderMatch; anything else cannot be a Gateway API match."""
    match = _FILTER.match(text.strip())
    if not match or "|" in match.group("name"):
        raise BadInput(
            f"header_filter {text!r} cannot be expressed as a Gateway API header match: use "
            "one header, like ^x-preview: pr-42$"
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
    return default_filter(key) if incoming.mode == "steal" else None


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
    example = header.example_value() if header else None
    if example is not None:
        annotations = {**annotations, ANNOTATION_HEADER_EXAMPLE: example}
    annotations = {**annotations, ANNOTATION_ROUTE: "mesh"}
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
    host: str,
    preview_service: Mapping[str, Any],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> dict[str, Any]:
    """`host` on `gateway` (ns/name): sets the key header, routes to the preview's HTTP port."""
    gw_namespace, _, gw_name = gateway.partition("/")
    if not gw_name:
        raise BadInput(f"--gateway {gateway!r}: use NAMESPACE/NAME")
    header = effective_filter(incoming, key) or default_filter(key)
    value = header.example_value()
    if value is None:
        raise BadInput(
            f"cannot derive a header value from the filter {header.value!r} for a "
            "share link; use a filter like ^x-preview: <key>$"
        )
    meta = preview_service["metadata"]
    return {
        "apiVersion": ROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {
            "name": naming.fit(f"share-{key}"),
            "namespace": meta["namespace"],
            "labels": dict(labels),
            "annotations": {**annotations, ANNOTATION_ROUTE: "share"},
        },
        "spec": {
            "parentRefs": [{"name": gw_name, "namespace": gw_namespace}],
            "hostnames": [host],
            "rules": [
                {
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {
                                "set": [{"name": header.name, "value": value}]
                            },
                        }
                    ],
                    "backendRefs": [{"name": meta["name"], "port": http_port(preview_service)}],
                }
            ],
        },
    }


def _is_gateway(ref: Mapping[str, Any]) -> bool:
    """A parentRef naming a Gateway (the default kind), not a Service (GAMMA)."""
    return ref.get("kind", "Gateway") == "Gateway" and ref.get("group", GATEWAY_GROUP) in (
        GATEWAY_GROUP,
        "",
    )


def _service_of(ref: Mapping[str, Any], namespace: str) -> tuple[str, str] | None:
    """(namespace, name) of the Service a backendRef names; None for other kinds."""
    if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
        return None
    return str(ref.get("namespace") or namespace), str(ref["name"])


def _sends_to(
    ref: Mapping[str, Any], namespace: str, routed: Mapping[tuple[str, str], set[int]]
) -> bool:
    """Whether a backendRef of a route in `namespace` names a routed port of a target
    Service (`routed`: (namespace, name) -> port numbers)."""
    service = _service_of(ref, namespace)
    return service is not None and ref.get("port") in routed.get(service, set())


def twin_routes(
    *,
    key: str,
    incoming: IncomingFeature | None,
    platform_routes: Sequence[Mapping[str, Any]],
    target_services: Sequence[Mapping[str, Any]],
    container_ports: Mapping[str, int],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> list[dict[str, Any]]:
    """The key's twin of each Gateway route sending traffic to a target Service (see the
    module's docstring); none for `off`, or a `mirror` without a header filter (its twin
    would tie with the original, whose rule is older and wins)."""
    if incoming is None or incoming.mode == "off":
        return []
    header = effective_filter(incoming, key)
    if header is None:
        return []
    routed = {
        (s["metadata"]["namespace"], s["metadata"]["name"]): {
            int(p["port"]) for p in _routed_ports(s, incoming.ports, container_ports)
        }
        for s in target_services
    }
    example = header.example_value()
    twin_annotations = {**annotations, ANNOTATION_ROUTE: "gateway"}
    if example is not None:
        twin_annotations[ANNOTATION_HEADER_EXAMPLE] = example
    twins = []
    for route in platform_routes:
        kind, meta = route.get("kind"), route.get("metadata", {})
        if kind not in ROUTE_KINDS or naming.is_managed(route):
            continue
        if incoming.mode == "mirror" and kind != "HTTPRoute":
            continue  # a GRPCRoute's RequestMirror has no feature name a class could list
        spec = route.get("spec") or {}
        parents = [p for p in spec.get("parentRefs") or [] if _is_gateway(p)]
        namespace = str(meta.get("namespace"))
        rules = []
        for rule in spec.get("rules") or []:
            refs = rule.get("backendRefs") or []
            chosen = [r for r in refs if _sends_to(r, namespace, routed)]
            if not chosen or not parents:
                continue
            twin_rule = {k: v for k, v in rule.items() if k not in ("matches", "backendRefs")}
            twin_rule["matches"] = [
                {**match, "headers": [*(match.get("headers") or []), header.as_match()]}
                for match in rule.get("matches") or [{}]
            ]
            previews = [{**r, "name": naming.service_name(r["name"], key)} for r in chosen]
            if incoming.mode == "steal":
                twin_rule["backendRefs"] = previews
            else:
                mirror_ref = {k: v for k, v in previews[0].items() if k != "weight"}
                mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": mirror_ref}}
                twin_rule["filters"] = [*(rule.get("filters") or []), mirror]
                twin_rule["backendRefs"] = list(refs)
            rules.append(twin_rule)
        if not rules:
            continue
        twin_spec: dict[str, Any] = {"parentRefs": parents, "rules": rules}
        if spec.get("hostnames"):
            twin_spec["hostnames"] = list(spec["hostnames"])
        twins.append(
            {
                "apiVersion": ROUTE_API_VERSION,
                "kind": kind,
                "metadata": {
                    "name": naming.fit(f"{meta['name']}-gw-{key}"),
                    "namespace": namespace,
                    "labels": dict(labels),
                    "annotations": {
                        **twin_annotations,
                        ANNOTATION_TWIN_OF: f"{kind} {namespace}/{meta['name']}",
                    },
                },
                "spec": twin_spec,
            }
        )
    return twins


def _is_http(port: Mapping[str, Any]) -> bool:
    """An explicit appProtocol decides; without one, the port name (Istio's convention)."""
    if port.get("appProtocol"):
        return str(port["appProtocol"]).lower() in _HTTP_APP_PROTOCOLS
    name = str(port.get("name") or "")
    return name in ("http", "https", "web") or name.startswith(("http-", "https-"))


def http_port(service: Mapping[str, Any]) -> int:
    """The Service's first HTTP port number; BadInput when none is recognizably HTTP."""
    ports = service.get("spec", {}).get("ports", [])
    for port in ports:
        if _is_http(port):
            return int(port["port"])
    meta = service["metadata"]
    seen = ", ".join(
        f"{p['port']} (name {p.get('name') or '-'}, appProtocol {p.get('appProtocol') or '-'})"
        for p in ports
    )
    raise BadInput(
        f"share link: service {meta['namespace']}/{meta['name']} has no HTTP port (name a "
        f"port 'http' or set appProtocol: http); its ports: {seen or 'none'}"
    )


def share_host(key: str, domain: str, token: str | None) -> str:
    """`<key>-<token>.<domain>`, or the stable, guessable `<key>.<domain>` without a token."""
    label = f"{key}-{token}" if token else key
    return f"{label}.{domain.strip('.')}"


def new_share_token() -> str:
    """10 random lowercase letters and digits (about 51 bits), safe in a DNS label."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(10))


def service_traffic(service: ServiceSpec, key: str) -> str | None:
    """How requests reach this service's preview pods (None with `--routing none`)."""
    return traffic_hint(service.incoming, key) if service.routing else None


def share_links(env: EnvironmentSpec) -> list[str]:
    return [
        f"http://{share_host(env.key, s.share.domain, getattr(s.share, 'token', None))}"
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


def crossing_keys(
    header: HeaderMatch, own_key: str, others: Mapping[str, HeaderMatch]
) -> list[str]:
    """The other keys whose example header `header` also matches: it would take their traffic.

    `others` maps each environment key to its effective header on the same target.
    """
    crossed = []
    for key, other in others.items():
        example = other.example_value()
        if key == own_key or example is None or other.name.lower() != header.name.lower():
            continue
        if header.matches(example):
            crossed.append(key)
    return sorted(crossed)


def route_headers(routes: Sequence[Mapping[str, Any]]) -> dict[str, HeaderMatch]:
    """Each environment's header match in `routes` (HTTPRoutes on one target Service), by key.

    Routes without a key label or a header match (filterless mirror, share) are skipped.
    """
    found: dict[str, HeaderMatch] = {}
    for route in routes:
        meta = route.get("metadata", {})
        key = naming.key_of(route)
        headers = [
            h
            for rule in route.get("spec", {}).get("rules", [])
            for m in rule.get("matches", [])
            for h in m.get("headers", [])
        ]
        if not key or not headers:
            continue
        first = headers[0]
        found[key] = HeaderMatch(
            name=first["name"],
            value=first["value"],
            regex=first.get("type") == "RegularExpression",
            example=(meta.get("annotations") or {}).get(ANNOTATION_HEADER_EXAMPLE),
        )
    return found


@dataclass(frozen=True)
class GatewaySupport:
    """What a Gateway's class says of itself: its name, its controller and the Gateway API
    features it lists (`status.supportedFeatures`); `features` is None when it lists none
    or cannot be read, and then nothing is taken as missing."""

    class_name: str
    controller: str
    features: frozenset[str] | None = None


class RouteState(BaseModel):
    """One route of an environment as its controllers see it: served, or why not."""

    kind: str
    namespace: str
    name: str
    role: str  # mesh (GAMMA), gateway (a twin of a public route) or share
    parents: list[str]  # "Gateway ns/name", "Service name"
    hostnames: list[str] = []
    served: bool
    problem: str | None = None


def route_role(route: Mapping[str, Any]) -> str:
    """mesh, gateway or share (routes made before the annotation: by their shape)."""
    role = ((route.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ROUTE)
    if role:
        return str(role)
    spec = route.get("spec") or {}
    if any(not _is_gateway(ref) for ref in spec.get("parentRefs") or []):
        return "mesh"
    return "share" if spec.get("hostnames") else "gateway"


def _gateway_name(ref: Mapping[str, Any], namespace: str) -> str:
    return f"{ref.get('namespace') or namespace}/{ref['name']}"


def gateways_of(routes: Sequence[Mapping[str, Any]]) -> set[str]:
    """The Gateways (`ns/name`) the routes are attached to."""
    return {
        _gateway_name(ref, route["metadata"]["namespace"])
        for route in routes
        for ref in (route.get("spec") or {}).get("parentRefs") or []
        if _is_gateway(ref)
    }


def _route_needs(route: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The Gateway API features (name, what uses it) an HTTPRoute's matches and filters
    need beyond the core ones, as conformance names them."""
    needs: list[tuple[str, str]] = []
    spec = route.get("spec") or {}
    if route.get("kind", "HTTPRoute") != "HTTPRoute":
        return needs
    if any(ref.get("port") for ref in spec.get("parentRefs") or []):
        needs.append(("HTTPRouteParentRefPort", "a parentRef port"))
    for rule in spec.get("rules") or []:
        for match in rule.get("matches") or []:
            if match.get("method"):
                needs.append(("HTTPRouteMethodMatching", "method match"))
            if match.get("queryParams"):
                needs.append(("HTTPRouteQueryParamMatching", "query parameter match"))
        filters = list(rule.get("filters") or [])
        mirrors = [f for f in filters if f.get("type") == "RequestMirror"]
        if len(mirrors) > 1:
            needs.append(("HTTPRouteRequestMultipleMirrors", "several RequestMirror filters"))
        for item in filters:
            kind = item.get("type")
            if kind == "RequestMirror":
                needs.append(("HTTPRouteRequestMirror", "filter RequestMirror"))
                spread = item.get("requestMirror") or {}
                if spread.get("percent") is not None or spread.get("fraction") is not None:
                    needs.append(("HTTPRouteRequestPercentageMirror", "a mirror percentage"))
            elif kind == "ResponseHeaderModifier":
                needs.append(("HTTPRouteResponseHeaderModification", f"filter {kind}"))
            elif kind == "CORS":
                needs.append(("HTTPRouteCORS", "filter CORS"))
            elif kind == "URLRewrite":
                rewrite = item.get("urlRewrite") or {}
                if rewrite.get("hostname"):
                    needs.append(("HTTPRouteHostRewrite", "filter URLRewrite (hostname)"))
                if rewrite.get("path"):
                    needs.append(("HTTPRoutePathRewrite", "filter URLRewrite (path)"))
            elif kind == "RequestRedirect":
                redirect = item.get("requestRedirect") or {}
                for field_name, feature in (
                    ("port", "HTTPRoutePortRedirect"),
                    ("scheme", "HTTPRouteSchemeRedirect"),
                    ("path", "HTTPRoutePathRedirect"),
                ):
                    if redirect.get(field_name):
                        needs.append((feature, f"filter RequestRedirect ({field_name})"))
        timeouts = rule.get("timeouts") or {}
        if timeouts.get("request"):
            needs.append(("HTTPRouteRequestTimeout", "a request timeout"))
        if timeouts.get("backendRequest"):
            needs.append(("HTTPRouteBackendTimeout", "a backend request timeout"))
        for ref in rule.get("backendRefs") or []:
            if any(f.get("type") == "RequestHeaderModifier" for f in ref.get("filters") or []):
                needs.append(
                    ("HTTPRouteBackendRequestHeaderModification", "a backendRef's header filter")
                )
    return list(dict.fromkeys(needs))


def _current(route: Mapping[str, Any], condition: Mapping[str, Any]) -> bool:
    """Whether a condition was written for the route's current generation."""
    seen, generation = condition.get("observedGeneration"), route["metadata"].get("generation")
    return seen is None or generation is None or int(seen) >= int(generation)


def _parent_problem(
    route: Mapping[str, Any], ref: Mapping[str, Any], gateways: Mapping[str, GatewaySupport]
) -> tuple[str | None, bool]:
    """Why the route is not served through one parent (None: served), and whether a
    controller has judged its current version there."""
    meta = route["metadata"]
    where = f"{route.get('kind', 'HTTPRoute')} {meta['namespace']}/{meta['name']}"
    gateway = _is_gateway(ref)
    parent_ns = ref.get("namespace") or meta["namespace"]
    statuses = []
    for status in (route.get("status") or {}).get("parents") or []:
        written = status.get("parentRef") or {}
        same_namespace = (written.get("namespace") or meta["namespace"]) == parent_ns
        if written.get("name") == ref["name"] and (same_namespace or not gateway):
            statuses.append(status)
    for status in statuses:
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        accepted = conditions.get("Accepted") or {}
        controller = status.get("controllerName") or "the controller"
        if accepted and not _current(route, accepted):
            continue
        if accepted.get("status") != "True":
            why = accepted.get("reason") or "no Accepted condition"
            detail = accepted.get("message")
            return (
                f"{controller} did not accept {where}: {why}" + (f" ({detail})" if detail else ""),
                True,
            )
        resolved = conditions.get("ResolvedRefs") or {}
        if resolved.get("status") == "False":
            detail = resolved.get("message")
            return (
                f"{controller} accepted {where} but cannot resolve its backends: "
                f"{resolved.get('reason')}" + (f" ({detail})" if detail else ""),
                True,
            )
        support = gateways.get(_gateway_name(ref, meta["namespace"])) if gateway else None
        if support is not None and support.features is not None:
            for feature, what in _route_needs(route):
                if feature not in support.features:
                    return (
                        f"{where}: Gateway {_gateway_name(ref, meta['namespace'])} (class "
                        f"{support.class_name}) does not support {what} (feature {feature})",
                        True,
                    )
        return None, True
    return (
        f"no controller accepted {where} (parent {ref.get('kind', 'Gateway')} "
        f"{ref['name']}): is a mesh (GAMMA) or gateway implementation installed?"
    ), False


def route_states(
    routes: Sequence[Mapping[str, Any]], gateways: Mapping[str, GatewaySupport] | None = None
) -> list[RouteState]:
    """Each route served or not, from its `status.parents` as controllers write them and
    what its Gateways' classes support (`gateways`, by `ns/name`). Declaring a route proves
    nothing: without a mesh (GAMMA) or gateway accepting it, it is inert."""
    states = []
    for route in sorted(
        routes, key=lambda r: (r["metadata"]["namespace"], r["metadata"]["name"], r["kind"])
    ):
        meta, spec = route["metadata"], route.get("spec") or {}
        refs = spec.get("parentRefs") or []
        problem = next(
            (p for ref in refs if (p := _parent_problem(route, ref, gateways or {})[0])), None
        )
        states.append(
            RouteState(
                kind=route.get("kind", "HTTPRoute"),
                namespace=meta["namespace"],
                name=meta["name"],
                role=route_role(route),
                parents=[
                    f"Gateway {_gateway_name(r, meta['namespace'])}"
                    if _is_gateway(r)
                    else f"{r.get('kind')} {r['name']}"
                    for r in refs
                ],
                hostnames=list(spec.get("hostnames") or []),
                served=problem is None,
                problem=problem,
            )
        )
    return states


def routes_judged(routes: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a controller has judged every route's current version on every parent."""
    return all(
        _parent_problem(route, ref, {})[1]
        for route in routes
        for ref in (route.get("spec") or {}).get("parentRefs") or []
    )


def serving_problem(states: Sequence[RouteState]) -> str | None:
    """Why some of the routes carry no traffic (each route's reason), or None."""
    problems = [s.problem for s in states if s.problem]
    return "; ".join(problems) if problems else None


def served_lines(states: Sequence[RouteState]) -> list[str]:
    """The served routes, one line each: `HTTPRoute ns/name via Gateway ns/gw for host`."""
    return [
        f"{s.kind} {s.namespace}/{s.name} via {', '.join(s.parents)}"
        + (f" for {', '.join(s.hostnames)}" if s.hostnames else "")
        for s in states
        if s.served
    ]


def served_links(env: EnvironmentSpec, states: Sequence[RouteState]) -> list[str]:
    """The share links whose route is served."""
    if not any(s.role == "share" and s.served for s in states):
        return []
    return share_links(env)


def others_routes_problem(
    mine: Sequence[Mapping[str, Any]],
    theirs: Sequence[Mapping[str, Any]],
    service: ServiceSpec,
    key: str,
) -> str | None:
    """Before a start: Busy when another environment holds one of `mine`'s (stable) share
    hosts; a warning when this target's header filter would also take the requests of
    another live environment routed on the same target Service (`theirs`: other stacks'
    routes in its namespace)."""
    shares = [r for r in theirs if route_role(r) == "share"]
    for route in mine:
        if route_role(route) != "share":
            continue  # a twin has the public route's hosts, as every key's twin does
        for host in route["spec"].get("hostnames", []):
            for other in shares:
                if host in other["spec"].get("hostnames", []):
                    holder = naming.labels_of(other).get(naming.LABEL_KEY)
                    raise Busy(
                        f"share host {host} is held by environment {holder!r}; drop "
                        "--stable-share-host to get an unguessable host of your own"
                    )
    header = effective_filter(service.incoming, key) if service.routing else None
    if header is None:
        return None
    parents = {
        (r["metadata"]["namespace"], ref["name"])
        for r in mine
        for ref in r["spec"]["parentRefs"]
        if ref.get("kind") == "Service"
    }
    same_target = [
        r
        for r in theirs
        if any(
            (r["metadata"]["namespace"], ref.get("name")) in parents
            for ref in r["spec"].get("parentRefs", [])
            if ref.get("kind") == "Service"
        )
    ]
    crossed = crossing_keys(header, key, route_headers(same_target))
    if not crossed:
        return None
    return (
        f"the header filter {header.name}: {header.value} also matches the requests of "
        f"environment(s) {', '.join(crossed)} on the same target; make it match only this key"
    )
