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
            "annotations": dict(annotations),
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


def serving_problem(routes: Sequence[Mapping[str, Any]]) -> str | None:
    """Why these routes carry no traffic yet, from their `status.parents` as controllers
    write it; None when a controller accepted every route for every parent. Declaring a
    route proves nothing: without a mesh (GAMMA) or gateway accepting it, it is inert."""
    for route in routes:
        meta = route.get("metadata", {})
        where = f"HTTPRoute {meta.get('namespace')}/{meta.get('name')}"
        statuses = (route.get("status") or {}).get("parents") or []
        for ref in route.get("spec", {}).get("parentRefs", []):
            mine = [s for s in statuses if (s.get("parentRef") or {}).get("name") == ref["name"]]
            if not mine:
                return (
                    f"no controller accepted {where} (parent {ref.get('kind', 'Gateway')} "
                    f"{ref['name']}): is a mesh (GAMMA) or gateway implementation installed?"
                )
            for status in mine:
                conditions = {c.get("type"): c for c in status.get("conditions") or []}
                accepted = conditions.get("Accepted") or {}
                if accepted.get("status") != "True":
                    why = accepted.get("reason") or "no Accepted condition"
                    detail = accepted.get("message")
                    return (
                        f"{status.get('controllerName', 'the controller')} did not accept "
                        f"{where}: {why}" + (f" ({detail})" if detail else "")
                    )
    return None


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
    for route in mine:
        for host in route["spec"].get("hostnames", []):
            for other in theirs:
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
