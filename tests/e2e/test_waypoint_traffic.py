"""Key routing inside the cluster without a mesh (issue 23 items 4 and 6): `waypoint add`
puts Traefik in front of a Service on the real node under a steady stream of requests to
the Service's ClusterIP (none fails; each is answered by staging, directly before and
through the waypoint after), a preview of the target then gets its key's requests to the
same ClusterIP, `remove` gives the Service its selector back (again none fails), and an
expired environment reaped sends its key back to staging through the Gateway.

Who answered: the echo pods print their pod name and the request's headers; Traefik adds
`X-Forwarded-Server` (its pod's name), so an answer says whether a waypoint carried it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import Testbed
from tests.support.cli import Cli, pulumi
from tests.support.kube import Kube, apply, objects_of
from tests.support.polling import wait_until
from tests.support.stacks import stack_names
from tests.support.traffic import (
    GatewayLoop,
    RequestLoop,
    echo_target,
    pod_names,
    via_cluster_ip,
    via_gateway,
)

pytestmark = pytest.mark.cluster
ROUTE_WAIT = {"PREVIEW_ENV_ROUTE_WAIT": "6"}
HOST = "orders.wp.test"


@pytest.fixture
def namespace(testbed: Testbed) -> Iterator[str]:
    """A namespace with `orders` (echo, 2 pods on the real node) behind Service `orders`."""
    assert testbed.real_node, "waypoints run on the real node (PREVIEW_ENV_REAL_NODE=0)"
    name = f"wpt-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", name)
    try:
        echo_target(testbed, name, "orders", replicas=2)
        yield name
    finally:
        testbed.kubectl("delete", "namespace", name, "--wait=false")


def _service(testbed: Testbed, namespace: str, name: str = "orders") -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        testbed.kubectl("get", "service", name, "-n", namespace, "-o", "json")
    )
    return doc


def _add_argv(testbed: Testbed, namespace: str) -> list[str]:
    return [
        "waypoint",
        "add",
        f"{namespace}/orders",
        "--image",
        testbed.images["traefik"].name,
        "--node-selector",
        "preview-env.dev/node=real",
        "--toleration",
        "preview-env.dev/real-node=true:NoSchedule",
    ]


def _start(cli: Cli, tmp_path: Path, namespace: str, key: str, *extra: str) -> Any:
    config = tmp_path / f"{key}.json"
    config.write_text(
        json.dumps(
            {
                "target": {"path": "deployment/orders/container/echo", "namespace": namespace},
                "feature": {"network": {"incoming": {"mode": "steal"}}},
            }
        )
    )
    image = os.environ["PREVIEW_ENV_ECHO_IMAGE"]
    result = cli(
        "start", "-f", str(config), "-i", image, "-k", key, "-o", "json", *extra, env=ROUTE_WAIT
    )
    assert result.code == 0, result.stderr
    return result.json()


def test_waypoint_add_and_remove_under_a_request_loop(
    cli: Cli, kube: Kube, testbed: Testbed, namespace: str, tmp_path: Path
) -> None:
    before = _service(testbed, namespace)
    address = before["spec"]["clusterIP"]
    staging = pod_names(testbed, namespace, "app=orders")
    # kube-proxy programs a new Service's endpoints a moment after they are Ready.
    assert wait_until(lambda: via_cluster_ip(testbed, address).pod in staging, 30)

    with RequestLoop(testbed, address) as loop:
        time.sleep(1)
        added = cli(*_add_argv(testbed, namespace), "-o", "json", timeout=300)
        assert added.code == 0, added.stderr
        after_add = loop.mark()
        time.sleep(2)
        end = loop.mark()
    assert loop.failed() == [], loop.failed()[:5]
    assert end - after_add > 5, "too few requests after the swap"
    waypoint_pods = pod_names(testbed, namespace, "preview-env.dev/waypoint-pod")
    # Before: staging directly; after `add` returned: staging through the waypoint only.
    assert {pod for pod, via in loop.sides(0, 10)} <= staging
    assert not any(via for _, via in loop.sides(0, 10))
    assert set(loop.sides(after_add, end)) <= {(pod, True) for pod in staging}
    assert {a.via for a in loop.answers[after_add:end]} <= waypoint_pods
    (shown,) = added.json()
    assert shown["service"] == f"{namespace}/orders" and shown["selector"] == "waypoint"
    assert shown["ready"] is True and shown["stack"] is True

    # The Service keeps its name, ClusterIP and ports; staging sits behind orders-origin.
    swapped = _service(testbed, namespace)
    assert swapped["spec"]["clusterIP"] == address
    assert swapped["spec"]["ports"] == before["spec"]["ports"]
    assert swapped["spec"]["selector"] == {"preview-env.dev/waypoint-pod": f"{namespace}.orders"}
    assert _service(testbed, namespace, "orders-origin")["spec"]["selector"] == {"app": "orders"}
    assert f"waypoint.{namespace}.orders" in stack_names()
    # Idempotent, and listed.
    again = cli(*_add_argv(testbed, namespace))
    assert again.code == 0, again.stderr
    listed = {w["service"]: w for w in cli("waypoint", "list", "-o", "json").json()}
    assert listed[f"{namespace}/orders"]["selector"] == "waypoint"

    # A preview behind the waypoint: its key's requests to the ClusterIP reach it.
    started = _start(cli, tmp_path, namespace, "wp-a")
    preview = pod_names(testbed, namespace, "preview-env.dev/key=wp-a")
    served = {r["name"] for r in started["routes"] if r["served"]}
    assert any(name.startswith("orders-waypoint-80-gw-") for name in served), started["routes"]
    listed = {w["service"]: w for w in cli("waypoint", "list", "-o", "json").json()}
    assert listed[f"{namespace}/orders"]["previewRoutes"] == ["orders-waypoint-80-gw-wp-a"]
    table = cli("waypoint", "list").stdout
    assert f"{namespace}/orders" in table and "PREVIEW ROUTES" in table
    member = {"baggage": "mirrord-session=wp-a"}
    assert wait_until(lambda: via_cluster_ip(testbed, address, member).pod in preview, 30)
    assert via_cluster_ip(testbed, address).pod in staging
    assert via_cluster_ip(testbed, address, {"baggage": "mirrord-session=wp-a2"}).pod in staging
    assert cli("clean", "-k", "wp-a").code == 0
    assert wait_until(lambda: via_cluster_ip(testbed, address, member).pod in staging, 30)
    assert objects_of(kube, "wp-a") == []

    with RequestLoop(testbed, address) as loop:
        time.sleep(1)
        removed = cli("waypoint", "remove", f"{namespace}/orders", timeout=300)
        assert removed.code == 0, removed.stderr
        after_remove = loop.mark()
        time.sleep(2)
        end = loop.mark()
    assert loop.failed() == [], loop.failed()[:5]
    assert set(loop.sides(after_remove, end)) <= {(pod, False) for pod in staging}
    restored = _service(testbed, namespace)
    assert restored["spec"]["selector"] == {"app": "orders"}
    assert "preview-env.dev/waypoint-original-selector" not in (
        restored["metadata"].get("annotations") or {}
    )
    assert f"waypoint.{namespace}.orders" not in stack_names()
    left = testbed.kubectl(
        "get", "deployment,service,gateway,httproute", "-n", namespace, "-o", "name"
    )
    assert "waypoint" not in left and "origin" not in left, left
    cluster_wide = testbed.kubectl(
        "get", "gatewayclass,clusterrole,clusterrolebinding", "-o", "name"
    )
    assert f"preview-env-waypoint-{namespace}" not in cluster_wide
    assert "orders-waypoint" not in testbed.kubectl("get", "serviceaccount", "-n", namespace)
    again = cli("waypoint", "remove", f"{namespace}/orders")
    assert again.code == 0 and "No waypoint" in again.stdout


def test_waypoint_refuses_bad_input_and_selectors_it_did_not_write(
    cli: Cli, testbed: Testbed, namespace: str
) -> None:
    bad = cli("waypoint", "add", "orders")
    assert bad.code == 2 and bad.stderr.startswith("error: 'orders': name the Service as")
    missing = cli("waypoint", "add", f"{namespace}/nowhere")
    assert missing.code == 2 and "not found" in missing.stderr
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "headless", "namespace": namespace},
        "spec": {"clusterIP": "None", "selector": {"app": "orders"}, "ports": [{"port": 80}]},
    }
    apply(testbed, headless)
    refused = cli("waypoint", "add", f"{namespace}/headless")
    assert refused.code == 2 and "headless" in refused.stderr
    # A selector someone else wrote, with our annotation: neither add nor remove touch it.
    testbed.kubectl(
        "annotate",
        "service",
        "orders",
        "-n",
        namespace,
        'preview-env.dev/waypoint-original-selector={"app":"old"}',
    )
    for argv in (_add_argv(testbed, namespace), ["waypoint", "remove", f"{namespace}/orders"]):
        result = cli(*argv)
        assert result.code == 2 and "was not written by preview-env waypoint" in result.stderr
    assert _service(testbed, namespace)["spec"]["selector"] == {"app": "orders"}
    assert f"waypoint.{namespace}.orders" not in stack_names()
    assert "waypoint" not in testbed.kubectl("get", "deployment", "-n", namespace, "-o", "name")


def test_an_expired_environment_reaped_sends_its_key_back_to_staging(
    cli: Cli, kube: Kube, testbed: Testbed, namespace: str, tmp_path: Path
) -> None:
    gw_namespace, gw_name = os.environ["PREVIEW_ENV_GATEWAY"].split("/")
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "orders", "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": gw_name, "namespace": gw_namespace}],
            "hostnames": [HOST],
            "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}],
        },
    }
    apply(testbed, route)
    staging = pod_names(testbed, namespace, "app=orders")
    assert wait_until(lambda: via_gateway(HOST).pod in staging, 60), "public route not served"
    _start(cli, tmp_path, namespace, "wp-r", "--ttl", "20s")
    preview = pod_names(testbed, namespace, "preview-env.dev/key=wp-r")
    member = {"baggage": "mirrord-session=wp-r"}
    assert wait_until(lambda: via_gateway(HOST, member).pod in preview, 30)

    def expired() -> bool:
        listed = cli("reap", "--dry-run", "-o", "json").json()["results"]
        return any(r["key"] == "wp-r" and r["outcome"] == "would-reap" for r in listed)

    assert wait_until(expired, timeout=40)
    # The key's requests through the Gateway while the reaper removes the environment: each
    # answered, by the preview until its route goes, then by staging.
    with GatewayLoop(HOST, member) as loop:
        reaped = cli("reap", "-o", "json")
        time.sleep(3)
    outcomes = {r["key"]: r["outcome"] for r in reaped.json()["results"]}
    assert outcomes.get("wp-r") == "reaped", reaped.stdout + reaped.stderr
    assert loop.failed() == [], loop.failed()[:5]
    assert {a.pod for a in loop.answers} <= preview | staging
    assert "wp-r" not in stack_names()
    assert wait_until(lambda: objects_of(kube, "wp-r") == [], 30)
    answers = [via_gateway(HOST, member) for _ in range(10)]
    assert all(a.status == 200 and a.pod in staging for a in answers), answers


def test_pulumi_up_and_destroy_on_a_waypoint_stack_are_add_and_remove(
    cli: Cli, testbed: Testbed, namespace: str, stack_config: Any
) -> None:
    stack = f"waypoint.{namespace}.orders"
    address = _service(testbed, namespace)["spec"]["clusterIP"]
    staging = pod_names(testbed, namespace, "app=orders")
    assert pulumi("stack", "init", stack).returncode == 0
    stack_config(
        stack,
        {
            "image": testbed.images["traefik"].name,
            "nodeSelector": {"preview-env.dev/node": "real"},
            "tolerations": [
                {
                    "key": "preview-env.dev/real-node",
                    "operator": "Equal",
                    "value": "true",
                    "effect": "NoSchedule",
                }
            ],
        },
    )
    with RequestLoop(testbed, address) as loop:
        up = pulumi("up", "--yes", "--skip-preview", "-s", stack)
        assert up.returncode == 0, up.stdout + up.stderr
        after_up = loop.mark()
        time.sleep(1)
        destroyed = pulumi("destroy", "--yes", "--run-program", "-s", stack)
        assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
        end = loop.mark()
    assert loop.failed() == [], loop.failed()[:5]
    assert all(via for _, via in loop.sides(after_up, after_up + 5))
    assert {pod for pod, _ in loop.sides()} <= staging
    assert loop.sides(end - 3, end)  # answered until the end
    assert _service(testbed, namespace)["spec"]["selector"] == {"app": "orders"}
    assert "waypoint" not in testbed.kubectl("get", "deployment", "-n", namespace, "-o", "name")
    assert pulumi("stack", "rm", "--yes", "-s", stack).returncode == 0
