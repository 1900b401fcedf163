"""North-south twins of the platform's Gateway routes, and routes judged served or not from
their status and the Gateway class's supported features (preview_stack.routing, pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from preview_stack import naming
from preview_stack.config import IncomingFeature
from preview_stack.routing import (
    ANNOTATION_ROUTE,
    ANNOTATION_TWIN_OF,
    GatewaySupport,
    default_filter,
    others_routes_problem,
    route_states,
    routes_judged,
    served_lines,
    served_links,
    serving_problem,
    share_route,
    twin_routes,
)
from preview_stack.spec import EnvironmentSpec, ServiceSpec, ShareLink

USERS = {
    "metadata": {"name": "users", "namespace": "staging"},
    "spec": {
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "grpc", "port": 81, "targetPort": 9090},
        ]
    },
}
GATEWAY = {"name": "public", "namespace": "infra"}
PREVIEW_HEADER = {"type": "Exact", "name": "x-preview", "value": "pr-42"}


def public_route(**spec: Any) -> dict[str, Any]:
    """The platform's route for shop.example.com: /api (with a header of its own) to users,
    / to the frontend."""
    return {
        "kind": "HTTPRoute",
        "metadata": {"name": "shop", "namespace": "staging"},
        "spec": {
            "parentRefs": [GATEWAY],
            "hostnames": ["shop.example.com"],
            "rules": [
                {
                    "matches": [
                        {"path": {"type": "PathPrefix", "value": "/api"}},
                        {"headers": [{"name": "x-beta", "value": "1"}]},
                    ],
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"add": [{"name": "x-via", "value": "gw"}]},
                        }
                    ],
                    "backendRefs": [
                        {"name": "users", "port": 80, "weight": 9},
                        {"name": "users-canary", "port": 80, "weight": 1},
                    ],
                },
                {"backendRefs": [{"name": "frontend", "port": 80}]},
            ],
            **spec,
        },
    }


def grpc_route() -> dict[str, Any]:
    return {
        "kind": "GRPCRoute",
        "metadata": {"name": "shop", "namespace": "staging"},
        "spec": {
            "parentRefs": [GATEWAY],
            "rules": [{"backendRefs": [{"name": "users", "port": 81}]}],
        },
    }


def twins(
    mode: str = "steal", header_filter: str | None = "^x-preview: {{ key }}$", **more: Any
) -> list[dict[str, Any]]:
    incoming = IncomingFeature.model_validate(
        {
            "mode": mode,
            "http_filter": {"header_filter": (header_filter or "").replace("{{ key }}", "pr-42")},
            **more,
        }
    )
    platform = [
        public_route(),
        grpc_route(),
        # Not twinned: a mesh route (GAMMA), a route to another Service, one of ours.
        {
            "kind": "HTTPRoute",
            "metadata": {"name": "mesh", "namespace": "staging"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "users"}],
                "rules": [{"backendRefs": [{"name": "users", "port": 80}]}],
            },
        },
        {
            "kind": "HTTPRoute",
            "metadata": {"name": "orders", "namespace": "staging"},
            "spec": {
                "parentRefs": [GATEWAY],
                "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}],
            },
        },
        {
            "kind": "HTTPRoute",
            "metadata": {
                "name": "shop-gw-pr-7",
                "namespace": "staging",
                "labels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY},
            },
            "spec": {
                "parentRefs": [GATEWAY],
                "rules": [{"backendRefs": [{"name": "users", "port": 80}]}],
            },
        },
    ]
    before = copy.deepcopy(platform)
    made = twin_routes(
        key="pr-42",
        incoming=incoming,
        platform_routes=platform,
        target_services=[USERS],
        container_ports={"http": 8080},
        labels={naming.LABEL_KEY: "pr-42"},
        annotations={"a": "b"},
    )
    assert platform == before  # the platform's routes are read, never changed
    return made


def test_steal_twins_each_gateway_route_to_the_target_with_the_key_header() -> None:
    http, grpc = twins()
    assert http["kind"] == "HTTPRoute" and grpc["kind"] == "GRPCRoute"
    assert http["metadata"]["name"] == "shop-gw-pr-42"
    assert http["metadata"]["namespace"] == "staging"
    assert http["metadata"]["labels"] == {naming.LABEL_KEY: "pr-42"}
    assert http["metadata"]["annotations"][ANNOTATION_ROUTE] == "gateway"
    assert http["metadata"]["annotations"][ANNOTATION_TWIN_OF] == "HTTPRoute staging/shop"
    assert http["spec"]["parentRefs"] == [GATEWAY]
    assert http["spec"]["hostnames"] == ["shop.example.com"]
    (rule,) = http["spec"]["rules"]  # the frontend's rule is not the target's
    assert rule["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/api"}, "headers": [PREVIEW_HEADER]},
        {"headers": [{"name": "x-beta", "value": "1"}, PREVIEW_HEADER]},
    ]
    assert rule["filters"] == public_route()["spec"]["rules"][0]["filters"]  # kept as is
    assert rule["backendRefs"] == [{"name": "users-pr-42", "port": 80, "weight": 9}]
    # A rule without matches matches everything: the twin's matches the header alone.
    assert grpc["spec"]["rules"] == [
        {
            "matches": [{"headers": [PREVIEW_HEADER]}],
            "backendRefs": [{"name": "users-pr-42", "port": 81}],
        }
    ]
    assert "hostnames" not in grpc["spec"]


def test_the_default_filter_is_the_keys_baggage_member() -> None:
    http, _ = twins(header_filter=None)
    headers = http["spec"]["rules"][0]["matches"][0]["headers"]
    assert headers == [default_filter("pr-42").as_match()]
    assert http["metadata"]["annotations"]["preview-env.dev/header-example"] == (
        "mirrord-session=pr-42"
    )


def test_mirror_with_a_filter_keeps_the_backends_and_mirrors_http_routes_only() -> None:
    (http,) = twins(mode="mirror")
    (rule,) = http["spec"]["rules"]
    assert rule["backendRefs"] == public_route()["spec"]["rules"][0]["backendRefs"]
    assert rule["filters"][-1] == {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "users-pr-42", "port": 80}},
    }
    assert twins(mode="mirror", header_filter=None) == []  # it would tie with the original


def test_no_twin_for_off_or_ports_that_are_not_routed() -> None:
    assert twins(mode="off") == []
    (grpc,) = twins(ports=[9090])  # only the Service port whose target is 9090
    assert grpc["kind"] == "GRPCRoute"


def _status(route: dict[str, Any], *conditions: tuple[str, str, str], generation: int = 1) -> None:
    route["metadata"]["generation"] = 1
    route["status"] = {
        "parents": [
            {
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", **GATEWAY},
                "controllerName": "traefik.io/gateway-controller",
                "conditions": [
                    {"type": t, "status": s, "reason": r, "observedGeneration": generation}
                    for t, s, r in conditions
                ],
            }
        ]
    }


SUPPORT = GatewaySupport("traefik", "traefik.io/gateway-controller", frozenset({"HTTPRoute"}))


def test_a_route_is_served_once_its_controller_accepts_what_its_class_supports() -> None:
    http, _ = twins()
    assert not routes_judged([http])
    (unjudged,) = route_states([http])
    assert not unjudged.served and "no controller accepted HTTPRoute staging/shop-gw-pr-42" in (
        unjudged.problem or ""
    )
    _status(http, ("Accepted", "True", "Accepted"), ("ResolvedRefs", "True", "ResolvedRefs"))
    assert routes_judged([http])
    (state,) = route_states([http], {"infra/public": SUPPORT})
    assert state.served and state.problem is None and state.role == "gateway"
    assert served_lines([state]) == [
        "HTTPRoute staging/shop-gw-pr-42 via Gateway infra/public for shop.example.com"
    ]
    # An old generation's verdict does not count.
    _status(http, ("Accepted", "True", "Accepted"), generation=0)
    http["metadata"]["generation"] = 2
    assert not routes_judged([http])


@pytest.mark.parametrize(
    ("conditions", "problem"),
    [
        (
            [("Accepted", "False", "NotAllowedByListeners")],
            "traefik.io/gateway-controller did not accept HTTPRoute staging/shop-gw-pr-42: "
            "NotAllowedByListeners",
        ),
        (
            [("Accepted", "True", "Accepted"), ("ResolvedRefs", "False", "RefNotPermitted")],
            "traefik.io/gateway-controller accepted HTTPRoute staging/shop-gw-pr-42 but cannot "
            "resolve its backends: RefNotPermitted",
        ),
    ],
)
def test_a_refused_route_says_why(conditions: list[tuple[str, str, str]], problem: str) -> None:
    http, _ = twins()
    _status(http, *conditions)
    (state,) = route_states([http])
    assert not state.served and state.problem == problem
    assert serving_problem([state]) == problem


def test_a_filter_the_gateway_class_does_not_list_is_named() -> None:
    (http,) = twins(mode="mirror")
    _status(http, ("Accepted", "True", "Accepted"), ("ResolvedRefs", "True", "ResolvedRefs"))
    (state,) = route_states([http], {"infra/public": SUPPORT})
    assert state.problem == (
        "HTTPRoute staging/shop-gw-pr-42: Gateway infra/public (class traefik) does not "
        "support filter RequestMirror (feature HTTPRouteRequestMirror)"
    )
    listed = GatewaySupport("envoy", "x", frozenset({"HTTPRoute", "HTTPRouteRequestMirror"}))
    assert route_states([http], {"infra/public": listed})[0].served
    silent = GatewaySupport("other", "y", None)  # lists nothing: nothing assumed missing
    assert route_states([http], {"infra/public": silent})[0].served


def test_twins_share_the_public_hosts_without_holding_them() -> None:
    mine, _ = twins()
    theirs = copy.deepcopy(mine)
    theirs["metadata"]["labels"] = {naming.LABEL_KEY: "pr-7"}
    service = ServiceSpec(namespace="staging", image="users:1")
    assert others_routes_problem([mine], [theirs], service, "pr-42") is None


def test_a_share_link_is_shown_only_while_its_route_is_served() -> None:
    share = ShareLink(gateway="infra/public", domain="preview.test", token="abcdefghij")
    service = ServiceSpec(namespace="staging", image="users:1", share=share)
    env = EnvironmentSpec(
        key="pr-42", owner="", created_at="", expires_at=None, ttl_seconds=None, services=[service]
    )
    route = {
        "kind": "HTTPRoute",
        **share_route(
            key="pr-42",
            incoming=None,
            gateway="infra/public",
            host="pr-42-abcdefghij.preview.test",
            preview_service={
                "metadata": {"name": "users-pr-42", "namespace": "staging"},
                "spec": {"ports": [{"name": "http", "port": 80}]},
            },
            labels={},
            annotations={},
        ),
    }
    (waiting,) = route_states([route])
    assert waiting.role == "share" and served_links(env, [waiting]) == []
    _status(route, ("Accepted", "True", "Accepted"))
    assert served_links(env, route_states([route])) == ["http://pr-42-abcdefghij.preview.test"]
