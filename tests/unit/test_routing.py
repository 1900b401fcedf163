"""mirrord incoming config -> Gateway API routes (pure)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import re2

from preview_stack import naming
from preview_stack.config import IncomingFeature
from preview_stack.errors import BadInput
from preview_stack.routing import (
    ANNOTATION_HEADER_EXAMPLE,
    ANNOTATION_ROUTE,
    HeaderMatch,
    crossing_keys,
    default_filter,
    new_share_token,
    parse_header_filter,
    route_headers,
    service_routes,
    share_host,
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
        labels={"l": "v", naming.LABEL_KEY: key},
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


def test_steal_without_filter_uses_the_keys_baggage_member() -> None:
    made = routes(incoming(mode="steal"), key="pr-1")
    assert len(made) == 2  # one route per routed Service port
    header = made[0]["spec"]["rules"][0]["matches"][0]["headers"][0]
    assert header == {
        "type": "RegularExpression",
        "name": "baggage",
        "value": r"^(?:.*,)?[ \t]*mirrord-session[ \t]*=[ \t]*pr\-1[ \t]*(?:[;,].*)?$",
    }
    assert made[0]["metadata"]["annotations"] == {
        "a": "b",
        ANNOTATION_HEADER_EXAMPLE: "mirrord-session=pr-1",
        ANNOTATION_ROUTE: "mesh",
    }


KEYS = ["pr-1", "k", "0", "a-b-c9", "x" * 40]


def _member_values(key: str) -> tuple[list[str], list[str]]:
    session = "mirrord-session"
    matching = [
        f"{session}={key}",
        f"a=b, {session}={key};p=q",
        f"{session}={key} ,x=y",
        f"a=b,{session}={key},c=d;e",
        f"\t{session} = {key}\t; p ; q=r",
        f"{session}={key};p=q,x=y",
    ]
    other = f"{key}2"
    not_matching = [
        f"{session}={other}",
        f"x{session}={key}",
        f"{session}={key}x",
        f"{session}={key}-",
        f"{session}=x{key}",
        f"a={session}={key}",
        f"a=b;{session}={key}",  # a property of member `a`, not a member
        f"{session}={other},y=z",
        f"{session}_{key}",
        f"{session}=",
        "",
    ]
    return matching, not_matching


@pytest.mark.parametrize(
    ("key", "header", "expected"),
    [(k, h, True) for k in KEYS for h in _member_values(k)[0]]
    + [(k, h, False) for k in KEYS for h in _member_values(k)[1]],
)
def test_the_default_filter_matches_the_key_only_as_a_whole_baggage_member(
    key: str, header: str, expected: bool
) -> None:
    value = default_filter(key).value
    assert bool(re2.fullmatch(value, header)) is expected  # Envoy's engine and semantics
    assert bool(re.fullmatch(value, header)) is expected
    assert bool(re.search(value, header)) is expected


def test_default_filters_of_different_keys_never_cross() -> None:
    assert (
        crossing_keys(
            default_filter("pr-1"),
            "pr-1",
            {k: default_filter(k) for k in ["pr-1", "pr-12", "pr-1-x", "xpr-1", "pr"]},
        )
        == []
    )
    assert default_filter("pr-1").example_value() == "mirrord-session=pr-1"


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


PREVIEW = {
    "metadata": {"name": "users-pr-42", "namespace": "staging"},
    "spec": {"ports": [{"name": "admin", "port": 9901}, {"name": "http-api", "port": 80}]},
}


def share(preview: dict[str, Any] = PREVIEW, **kwargs: Any) -> dict[str, Any]:
    return share_route(
        key="pr-42",
        incoming=kwargs.get("incoming", incoming(mode="steal")),
        gateway="infra/public",
        host="pr-42-abc.preview.example.com",
        preview_service=preview,
        labels={},
        annotations={},
    )


def test_share_route_sets_the_key_header_on_the_gateway() -> None:
    route = share()
    assert route["spec"]["hostnames"] == ["pr-42-abc.preview.example.com"]
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "infra"}]
    [rule] = route["spec"]["rules"]
    assert rule["filters"] == [
        {
            "type": "RequestHeaderModifier",
            "requestHeaderModifier": {
                "set": [{"name": "baggage", "value": "mirrord-session=pr-42"}]
            },
        }
    ]
    assert rule["backendRefs"] == [{"name": "users-pr-42", "port": 80}]
    custom = share(incoming=incoming(mode="steal", http_filter={"header_filter": "^x-p: a$"}))
    assert custom["spec"]["rules"][0]["filters"][0]["requestHeaderModifier"]["set"] == [
        {"name": "x-p", "value": "a"}
    ]


@pytest.mark.parametrize(
    ("ports", "chosen"),
    [
        ([{"name": "grpc", "port": 1}, {"name": "web", "port": 2}], 2),
        ([{"name": "a", "port": 1, "appProtocol": "kubernetes.io/h2c"}], 1),
        ([{"name": "https-x", "port": 3}, {"name": "http", "port": 4}], 3),
        (
            [
                {"name": "http", "port": 1, "appProtocol": "grpc"},
                {"port": 2, "appProtocol": "HTTP"},
            ],
            2,
        ),
    ],
)
def test_share_route_picks_the_first_http_port(ports: list[Any], chosen: int) -> None:
    route = share({**PREVIEW, "spec": {"ports": ports}})
    assert route["spec"]["rules"][0]["backendRefs"][0]["port"] == chosen


@pytest.mark.parametrize("ports", [[{"port": 80}], [{"name": "admin", "port": 9901}], []])
def test_share_route_refuses_a_service_without_an_http_port(ports: list[Any]) -> None:
    with pytest.raises(BadInput, match="service staging/users-pr-42 has no HTTP port"):
        share({**PREVIEW, "spec": {"ports": ports}})


def test_share_hosts_and_tokens() -> None:
    assert share_host("pr-42", "preview.example.com.", None) == "pr-42.preview.example.com"
    assert share_host("pr-42", "preview.example.com", "k3x") == "pr-42-k3x.preview.example.com"
    tokens = {new_share_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(re.fullmatch(r"[a-z0-9]{10}", t) for t in tokens)


def test_crossing_keys_finds_the_keys_a_user_filter_also_matches() -> None:
    broad = parse_header_filter("^x-preview: pr-.*$")
    others = {
        "pr-9": HeaderMatch("x-preview", "pr-9", regex=False),  # own key: skipped
        "pr-2": HeaderMatch("X-Preview", "pr-2", regex=False),  # names are case-insensitive
        "pr-1": default_filter("pr-1"),  # another header
        "qa": HeaderMatch("x-preview", "qa", regex=False),
        "odd": HeaderMatch("x-preview", "pr-[0-9]+", regex=True),  # no example: unknown
    }
    assert crossing_keys(broad, "pr-9", others) == ["pr-2"]
    old_default = parse_header_filter("^baggage: .*mirrord-session=pr-1.*$")
    assert crossing_keys(old_default, "pr-1", {"pr-12": default_filter("pr-12")}) == ["pr-12"]
    exact = parse_header_filter("^x-preview: pr-9$")
    assert crossing_keys(exact, "pr-9", others) == []


def test_route_headers_reads_each_keys_header_and_example_back() -> None:
    custom = incoming(mode="steal", http_filter={"header_filter": "^x-preview: pr-(7|8)$"})
    made = [
        *routes(incoming(mode="steal", ports=[8080]), key="pr-1"),
        *routes(custom, key="pr-7"),
        *routes(incoming(mode="mirror"), key="all"),  # no header match: skipped
        *routes(incoming(mode="steal", http_filter={"header_filter": "^x-a: b$"}), key="e"),
    ]
    found = route_headers(made)
    assert found == {
        "pr-1": default_filter("pr-1"),
        "pr-7": HeaderMatch("x-preview", "pr-(7|8)", regex=True),
        "e": HeaderMatch("x-a", "b", regex=False, example="b"),
    }
    assert crossing_keys(found["pr-7"], "pr-7", {"pr-8": HeaderMatch("x-preview", "pr-8", False)})
    # A route made before the annotation existed, with the old default: the example comes
    # from the match itself.
    del made[0]["metadata"]["annotations"][ANNOTATION_HEADER_EXAMPLE]
    made[0]["spec"]["rules"][0]["matches"][0]["headers"][0]["value"] = r".*mirrord-session=pr\-1.*"
    assert route_headers(made[:1])["pr-1"].example_value() == "mirrord-session=pr-1"


def test_traffic_hints() -> None:
    assert (
        traffic_hint(incoming(mode="steal"), "k1")
        == "steal: send header 'baggage: mirrord-session=k1'"
    )
    assert traffic_hint(incoming(mode="mirror"), "k1") == "mirror of all traffic"
    assert traffic_hint(None, "k1") is None
