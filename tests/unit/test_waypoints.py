"""Waypoints (preview_stack.waypoints, pure): the objects put in front of a Service, the
selector swap and its inverse, what they refuse, and a preview's twin on the waypoint."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from preview_stack import naming
from preview_stack.config import IncomingFeature
from preview_stack.errors import BadInput
from preview_stack.routing import default_filter, twin_routes
from preview_stack.waypoints import (
    ANNOTATION_ORIGINAL_SELECTOR,
    LABEL_POD,
    LABEL_WAYPOINT,
    Names,
    WaypointOptions,
    check_service,
    manifests,
    parse_node_selector,
    parse_service_ref,
    parse_tolerations,
    restore_patch,
    selector_state,
    swap_patch,
)


def orders(**spec: Any) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": "orders", "namespace": "staging", "annotations": {"a": "b"}},
        "spec": {
            "selector": {"app": "orders"},
            "clusterIP": "10.96.0.20",
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "admin", "port": 81, "targetPort": "admin"},
            ],
            **spec,
        },
    }


def apply_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A small RFC 6902 applier (test, add, replace, remove) over nested dicts."""
    out = copy.deepcopy(obj)
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]
        ]
        node = out
        for part in parents:
            node = node[part]
        if op["op"] == "test":
            assert node[last] == op["value"], "test failed"
        elif op["op"] in ("add", "replace"):
            node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[last]
    return out


def by_kind(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [i for i in items if i["kind"] == kind]


def test_service_refs_and_options_are_parsed_or_refused_with_the_fix() -> None:
    assert parse_service_ref("staging/orders") == ("staging", "orders")
    for bad in ("orders", "staging/", "/orders", "a/b/c", "Staging/orders"):
        with pytest.raises(BadInput):
            parse_service_ref(bad)
    assert parse_node_selector(["a=b"]) == {"a": "b"}
    assert parse_tolerations(["t=true:NoSchedule", "x:NoExecute"]) == [
        {"key": "t", "value": "true", "operator": "Equal", "effect": "NoSchedule"},
        {"key": "x", "operator": "Exists", "effect": "NoExecute"},
    ]
    with pytest.raises(BadInput, match="KEY\\[=VALUE\\]:EFFECT"):
        parse_tolerations(["t=true"])


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"clusterIP": "None"}, "headless"),
        ({"selector": {}}, "no selector"),
        ({"type": "ExternalName"}, "ExternalName"),
        ({"ports": [{"port": 53, "protocol": "UDP"}]}, "UDP"),
        ({"ports": [{"port": 80, "targetPort": 8080}, {"port": 81, "targetPort": 8080}]}, "two"),
    ],
    ids=["headless", "no-selector", "external-name", "udp", "shared-target-port"],
)
def test_services_a_waypoint_cannot_front_are_refused(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(BadInput, match=problem):
        check_service(orders(**spec))


def test_the_waypoint_mirrors_the_services_ports_and_keeps_staging_behind_origin() -> None:
    items = manifests(orders(), WaypointOptions(image="traefik:test", node_selector={"n": "1"}))
    names = Names("staging", "orders")
    (origin,) = by_kind(items, "Service")
    assert origin["metadata"]["name"] == "orders-origin"
    assert origin["spec"]["selector"] == {"app": "orders"}
    assert [p["targetPort"] for p in origin["spec"]["ports"]] == [8080, "admin"]
    (gateway,) = by_kind(items, "Gateway")
    (klass,) = by_kind(items, "GatewayClass")
    assert gateway["spec"]["gatewayClassName"] == klass["metadata"]["name"]
    assert klass["metadata"]["labels"][LABEL_WAYPOINT] == "staging.orders"
    # Listeners on the target ports: the Service's ports are untouched, so its targetPorts
    # must reach the waypoint; the named one gets a spare port under that name.
    assert [(x["name"], x["port"]) for x in gateway["spec"]["listeners"]] == [
        ("port-80", 8080),
        ("port-81", 10080),
    ]
    (deployment,) = by_kind(items, "Deployment")
    assert items[-1] is deployment  # Traefik last: its readiness needs the routes
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert {"name": "admin", "containerPort": 10080} in container["ports"]
    assert (
        f"--providers.kubernetesgateway.labelselector={LABEL_WAYPOINT}=staging.orders"
        in (container["args"])
    )
    assert deployment["spec"]["template"]["metadata"]["labels"][LABEL_POD] == names.label
    assert pod["nodeSelector"] == {"n": "1"}
    routes = by_kind(items, "HTTPRoute")
    assert [r["spec"]["rules"][0]["backendRefs"] for r in routes] == [
        [{"name": "orders-origin", "port": 80}],
        [{"name": "orders-origin", "port": 81}],
    ]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] == 8080
    assert routes[0]["spec"]["rules"][1]["filters"][0]["type"] == "RequestRedirect"
    for item in items:
        assert item["metadata"]["labels"][naming.LABEL_MANAGED_BY] != naming.MANAGED_BY


def test_the_swap_records_the_selector_and_the_restore_puts_it_back() -> None:
    service = orders()
    assert selector_state(service) == "original"
    swapped = apply_patch(service, swap_patch(service))
    assert swapped["spec"]["selector"] == Names("staging", "orders").selector
    assert json.loads(swapped["metadata"]["annotations"][ANNOTATION_ORIGINAL_SELECTOR]) == {
        "app": "orders"
    }
    assert selector_state(swapped) == "waypoint"
    # Re-derived from the swapped Service, staging's Service keeps the original selector.
    (origin,) = by_kind(manifests(swapped, WaypointOptions()), "Service")
    assert origin["spec"]["selector"] == {"app": "orders"}
    restored = apply_patch(swapped, restore_patch(swapped))
    assert restored == service
    assert restore_patch(restored) == []  # nothing to restore: idempotent
    bare = orders()
    del bare["metadata"]["annotations"]
    assert apply_patch(bare, swap_patch(bare))["metadata"]["annotations"]


def test_a_selector_not_written_by_the_waypoint_is_foreign() -> None:
    swapped = apply_patch(orders(), swap_patch(orders()))
    changed = copy.deepcopy(swapped)
    changed["spec"]["selector"] = {"app": "orders-v2"}
    assert selector_state(changed) == "foreign"
    lost = copy.deepcopy(swapped)
    del lost["metadata"]["annotations"][ANNOTATION_ORIGINAL_SELECTOR]
    assert selector_state(lost) == "foreign"
    with pytest.raises(AssertionError, match="test failed"):  # a concurrent writer
        apply_patch(changed, swap_patch(orders()))


def test_a_preview_behind_the_waypoint_twins_its_default_route() -> None:
    """After the swap the target's Service is staging's `orders-origin`; the waypoint's
    default route sends to it, so the preview's twin hangs on the waypoint's Gateway."""
    swapped = apply_patch(orders(), swap_patch(orders()))
    items = manifests(swapped, WaypointOptions())
    (origin,) = by_kind(items, "Service")
    twins = twin_routes(
        key="pr-42",
        incoming=IncomingFeature(mode="steal"),
        platform_routes=by_kind(items, "HTTPRoute"),
        target_services=[origin],
        container_ports={"admin": 9000},
        labels={naming.LABEL_KEY: "pr-42"},
        annotations={},
    )
    assert [t["spec"]["parentRefs"] for t in twins] == [
        [{"name": "orders-waypoint", "namespace": "staging", "sectionName": "port-80"}],
        [{"name": "orders-waypoint", "namespace": "staging", "sectionName": "port-81"}],
    ]
    (rule,) = twins[0]["spec"]["rules"]  # the probe rule has no backend: not twinned
    assert rule["matches"] == [{"headers": [default_filter("pr-42").as_match()]}]
    assert rule["backendRefs"] == [
        {"name": naming.service_name("orders-origin", "pr-42"), "port": 80}
    ]


def test_waypoint_list_renders_a_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    from cli import render
    from cli.output import Format
    from preview_stack.waypoints import WaypointStatus

    listed = [
        WaypointStatus(
            service="staging/orders",
            selector="waypoint",
            gateway="staging/orders-waypoint",
            origin="staging/orders-origin",
            ready=True,
            stack=True,
        )
    ]
    render.waypoints(listed, Format.text)
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "SERVICE", "SELECTOR", "READY", "GATEWAY", "STAGING", "STACK", "PREVIEW", "ROUTES",
    ]  # fmt: skip
    assert row.split() == [
        "staging/orders", "waypoint", "yes", "staging/orders-waypoint", "staging/orders-origin",
        "yes", "0",
    ]  # fmt: skip
    render.waypoints(listed, Format.json)
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["previewRoutes"] == [] and doc["selector"] == "waypoint"
    render.waypoints([], Format.text)
    assert capsys.readouterr().out == "No waypoints.\n"
