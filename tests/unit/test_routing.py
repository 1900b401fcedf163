"""mirrord incoming config -> Gateway API routes (pure)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from preview_stack.config import IncomingFeature
from preview_stack.errors import BadInput
from preview_stack.routing import (
    default_filter,
    parse_header_filter,
    service_routes,
    share_route,
    traffic_hint,
)

USERS = {
    "metadata": {"name": "users", "namespace": "staging"},
    "spec": {
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "admin", "port": 9901, "targetPort": 9901},
        ]
    },
}


def routes(incoming: IncomingFeature | None, key: str = "pr-42") -> list[dict[str, Any]]:
    return service_routes(
        key=key,
        incoming=incoming,
        target_services=[USERS],
        container_ports={"http": 8080},
        labels={"l": "v"},
        annotations={"a": "b"},
    )


def incoming(**kwargs: Any) -> IncomingFeature:
    return IncomingFeature.model_validate(kwargs)


def test_steal_with_custom_filter_matches_the_header_and_keeps_a_catch_all() -> None:
    made = routes(
        incoming(mode="steal", ports=[8080], http_filter={"header_filter": "^x-preview: pr-42$"})
    )
    assert len(made) == 1  # only the Service port whose target is container port 8080
    route = made[0]
    assert route["metadata"]["name"] == "users-pr-42"
    assert route["spec"]["parentRefs"] == [
        {"group": "", "kind": "Service", "name": "users", "port": 80}
    ]
    header_rule, catch_all = route["spec"]["rules"]
    assert header_rule["matches"][0]["headers"] == [
        {"type": "Exact", "name": "x-preview", "value": "pr-42"}
    ]
    assert header_rule["backendRefs"] == [{"name": "users-pr-42", "port": 80}]
    assert "headers" not in catch_all["matches"][0]
    assert catch_all["backendRefs"] == [{"name": "users", "port": 80}]


def test_steal_without_filter_uses_mirrords_default_with_the_key_escaped() -> None:
    made = routes(incoming(mode="steal"), key="pr.42x")
    assert len(made) == 2  # one route per routed Service port
    header = made[0]["spec"]["rules"][0]["matches"][0]["headers"][0]
    assert header == {
        "type": "RegularExpression",
        "name": "baggage",
        "value": r".*mirrord-session=pr\.42x.*",
    }
    assert re.fullmatch(header["value"], "a=1,mirrord-session=pr.42x")
    assert not re.fullmatch(header["value"], "mirrord-session=prX42x")
    assert default_filter("pr-1") == r"^baggage: .*mirrord-session=pr\-1.*$"


def test_mirror_copies_and_keeps_serving_from_the_target() -> None:
    [route] = routes(incoming(mode="mirror", ports=[8080]))
    [rule] = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": "users", "port": 80}]
    assert rule["filters"] == [
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": "users-pr-42", "port": 80}},
        }
    ]
    filtered = routes(
        incoming(mode="mirror", ports=[8080], http_filter={"header_filter": "^x-debug: yes$"})
    )
    assert len(filtered[0]["spec"]["rules"]) == 2


@pytest.mark.parametrize("given", [None, IncomingFeature(mode="off")])
def test_off_or_absent_means_no_route(given: IncomingFeature | None) -> None:
    assert routes(given) == []


@pytest.mark.parametrize(
    "text",
    [
        "^(x-a|x-b): 1$",
        "^x-a: 1|^x-b: 2$",
        "no colon here",
        "^x-a: (unclosed$",
    ],
)
def test_inexpressible_filters_are_refused(text: str) -> None:
    with pytest.raises(BadInput, match="header_filter"):
        parse_header_filter(text)


def test_share_route_adds_the_key_header_on_the_gateway() -> None:
    preview = {
        "metadata": {"name": "users-pr-42", "namespace": "staging"},
        "spec": {"ports": [{"port": 80}]},
    }
    route = share_route(
        key="pr-42",
        incoming=incoming(mode="steal"),
        gateway="infra/public",
        domain="preview.example.com",
        preview_service=preview,
        labels={},
        annotations={},
    )
    assert route["spec"]["hostnames"] == ["pr-42.preview.example.com"]
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "infra"}]
    [rule] = route["spec"]["rules"]
    assert rule["filters"][0]["requestHeaderModifier"]["add"] == [
        {"name": "baggage", "value": "mirrord-session=pr-42"}
    ]
    assert rule["backendRefs"] == [{"name": "users-pr-42", "port": 80}]


def test_traffic_hints() -> None:
    assert (
        traffic_hint(incoming(mode="steal"), "k1")
        == "steal: send header 'baggage: mirrord-session=k1'"
    )
    assert traffic_hint(incoming(mode="mirror"), "k1") == "mirror of all traffic"
    assert traffic_hint(None, "k1") is None
