"""Key-scoped traffic through a real Gateway (issue 23 items 2, 3 and 5): the bed's Traefik
serves the platform's public routes to a target on the real node, and `start` twins them,
so a request to the public host carrying the key's header is answered by that key's
preview pod, everything else by staging; share links reach the preview until `clean`; what
the Gateway cannot serve is named.

One target, its public HTTPRoute and GRPCRoute are set up once for the module; requests go
to `$PREVIEW_ENV_GATEWAY_URL` with the route's `Host` (gRPC as HTTP/2 with prior knowledge,
through curl), and the echo pods say who answered.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import Testbed
from testbed import node as real_node
from tests.support.cli import Cli
from tests.support.kube import Kube, apply, objects_of
from tests.support.polling import wait_until
from tests.support.stacks import stack_names
from tests.support.workloads import deployment_and_service

pytestmark = pytest.mark.cluster
GROUP = ("gateway.networking.k8s.io", "v1")
HOST = "shop.gw.test"
EDGE_HOST = "edge.gw.test"  # a route in another namespace, through a ReferenceGrant
GRPC_HOST = "grpc.gw.test"
SHARE_DOMAIN = "share.gw.test"
# Traefik writes a route's status within a second or two; the mesh routes it never serves.
ROUTE_WAIT = {"PREVIEW_ENV_ROUTE_WAIT": "6"}


def _gateway() -> tuple[str, str]:
    return os.environ["PREVIEW_ENV_GATEWAY"], os.environ["PREVIEW_ENV_GATEWAY_URL"]


def _public_routes(namespace: str) -> list[dict[str, Any]]:
    """What a platform team declares: the public hosts to the target's Service, one of them
    from an edge namespace (`<namespace>-edge`) that a ReferenceGrant lets in."""
    gw_namespace, gw_name = _gateway()[0].split("/")
    parents = [{"name": gw_name, "namespace": gw_namespace}]
    edge = f"{namespace}-edge"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": edge}},
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "ReferenceGrant",
            "metadata": {"name": "edge", "namespace": namespace},
            "spec": {
                "from": [{"group": GROUP[0], "kind": "HTTPRoute", "namespace": edge}],
                "to": [{"group": "", "kind": "Service"}],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "edge", "namespace": edge},
            "spec": {
                "parentRefs": parents,
                "hostnames": [EDGE_HOST],
                "rules": [{"backendRefs": [{"name": "shop", "namespace": namespace, "port": 80}]}],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "shop", "namespace": namespace},
            "spec": {
                "parentRefs": parents,
                "hostnames": [HOST],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                        "backendRefs": [{"name": "shop", "port": 80}],
                    }
                ],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GRPCRoute",
            "metadata": {"name": "shop", "namespace": namespace},
            "spec": {
                "parentRefs": parents,
                "hostnames": [GRPC_HOST],
                "rules": [
                    {
                        "matches": [{"method": {"service": "shop.Shop"}}],
                        "backendRefs": [{"name": "shop", "port": 81}],
                    }
                ],
            },
        },
    ]


@pytest.fixture(scope="module")
def shop(testbed: Testbed) -> Iterator[str]:
    """Namespace with the target `shop` (echo, on the real node) behind Service `shop`
    (HTTP on 80, h2c gRPC on 81) and its public routes, served by the bed's Gateway."""
    assert testbed.real_node, "the Gateway runs on the real node (PREVIEW_ENV_REAL_NODE=0)"
    namespace = f"gwt-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", namespace)
    container = {
        "name": "echo",
        "image": os.environ["PREVIEW_ENV_ECHO_IMAGE"],
        "imagePullPolicy": "Never",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1},
    }
    ports = [
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "grpc", "port": 81, "targetPort": 8080, "appProtocol": "kubernetes.io/h2c"},
    ]
    placement = {**real_node.pod_placement(), "terminationGracePeriodSeconds": 1}
    try:
        apply(
            testbed, *deployment_and_service("shop", namespace, [container], ports, pod=placement)
        )
        apply(testbed, *_public_routes(namespace))
        testbed.kubectl("rollout", "status", "deployment/shop", "-n", namespace, "--timeout=90s")
        staging = _pods(testbed, namespace, "app=shop")
        assert wait_until(lambda: _answer(HOST) in staging, timeout=60), "public route not served"
        assert wait_until(lambda: _answer(EDGE_HOST) in staging, timeout=30), "edge not served"
        assert wait_until(lambda: _grpc(GRPC_HOST) in staging, timeout=30), "gRPC not served"
        yield namespace
    finally:
        testbed.kubectl("delete", "namespace", namespace, f"{namespace}-edge", "--wait=false")


def _pods(testbed: Testbed, namespace: str, selector: str) -> set[str]:
    listed = json.loads(
        testbed.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    )
    return {
        p["metadata"]["name"] for p in listed["items"] if "deletionTimestamp" not in p["metadata"]
    }


def _request(host: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    parts = urllib.parse.urlsplit(_gateway()[1])
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return 0, {}
    finally:
        conn.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, {}


def _answer(host: str, headers: dict[str, str] | None = None) -> str:
    """The pod that answered a request to `host` through the Gateway ("" when none)."""
    status, reply = _request(host, headers)
    return str(reply.get("hostname", "")) if status == 200 else ""


def _grpc(host: str, headers: dict[str, str] | None = None) -> str:
    """The pod that answered a gRPC call (HTTP/2 POST /shop.Shop/Get) through the Gateway."""
    argv = ["curl", "-s", "--max-time", "5", "--http2-prior-knowledge", "-X", "POST"]
    for name, value in {
        "Host": host,
        "content-type": "application/grpc",
        **(headers or {}),
    }.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*argv, f"{_gateway()[1]}/shop.Shop/Get"], capture_output=True, text=True, check=False
    )
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        return ""
    return str(reply["hostname"]) if reply.get("proto") == "HTTP/2.0" else ""


def _config(tmp_path: Path, namespace: str, name: str, incoming: dict[str, Any]) -> str:
    path = tmp_path / f"{name}.json"
    doc = {
        "target": {"path": "deployment/shop/container/echo", "namespace": namespace},
        "feature": {
            "preview": {"creation_timeout_secs": 60},
            "network": {"incoming": incoming},
        },
    }
    path.write_text(json.dumps(doc))
    return str(path)


def _start(cli: Cli, config: str, key: str, *extra: str) -> Any:
    image = os.environ["PREVIEW_ENV_ECHO_IMAGE"]
    result = cli(
        "start", "-f", config, "-i", image, "-k", key, "-o", "json", *extra, env=ROUTE_WAIT
    )
    assert result.code == 0, result.stderr
    return result.json()


def test_the_key_reaches_its_preview_through_the_public_routes_until_clean(
    cli: Cli, kube: Kube, testbed: Testbed, shop: str, tmp_path: Path
) -> None:
    staging = _pods(testbed, shop, "app=shop")
    gateway = _gateway()[0]
    baggage = _config(tmp_path, shop, "baggage", {"mode": "steal"})
    custom = _config(
        tmp_path,
        shop,
        "custom",
        {"mode": "steal", "http_filter": {"header_filter": "^x-preview: {{ key }}$"}},
    )
    share = ("--gateway", gateway, "--share-domain", SHARE_DOMAIN)
    started = _start(cli, baggage, "gw-a", *share)
    _start(cli, custom, "gw-b")
    try:
        pod_a = _pods(testbed, shop, "preview-env.dev/key=gw-a")
        pod_b = _pods(testbed, shop, "preview-env.dev/key=gw-b")
        assert len(pod_a) == len(pod_b) == 1
        (link,) = started["links"]
        share_host = urllib.parse.urlsplit(link).hostname or ""
        assert share_host.startswith("gw-a-") and share_host.endswith(f".{SHARE_DOMAIN}")
        # The twins are served; the mesh (GAMMA) routes, on a bed without a mesh, are not.
        served = {(r["kind"], r["name"]) for r in started["routes"] if r["served"]}
        assert ("HTTPRoute", "shop-gw-gw-a") in served and ("GRPCRoute", "shop-gw-gw-a") in served
        assert "no controller accepted" in started["routesProblem"]

        member = {"baggage": "mirrord-session=gw-a"}
        assert wait_until(lambda: _answer(HOST, member) in pod_a, timeout=30)
        assert _answer(HOST) in staging
        assert _answer(HOST, {"baggage": "a=b, mirrord-session=gw-a;p=1"}) in pod_a
        assert _answer(HOST, {"baggage": "mirrord-session=gw-a2"}) in staging
        assert _answer(HOST, {"baggage": "mirrord-session=gw-b"}) in staging  # b: x-preview
        assert wait_until(lambda: _answer(HOST, {"x-preview": "gw-b"}) in pod_b, timeout=30)
        assert wait_until(lambda: _answer(EDGE_HOST, member) in pod_a, timeout=30)
        assert _answer(EDGE_HOST) in staging
        assert wait_until(lambda: _grpc(GRPC_HOST, member) in pod_a, timeout=30)
        assert _grpc(GRPC_HOST) in staging
        # The share link: no header needed, the route sets it.
        assert wait_until(lambda: _answer(share_host) in pod_a, timeout=30)
        status, reply = _request(share_host)
        assert status == 200
        assert reply["headers"]["Baggage"] == "mirrord-session=gw-a"

        shown = cli("status", "-k", "gw-a", "-o", "json").json()[0]
        assert shown["links"] == [link]
        assert f"<{link}>" in cli("status", "-k", "gw-a", "-o", "markdown").stdout
        text = cli("status", "-k", "gw-a").stdout
        assert f"share link for gw-a: {link}" in text

        assert cli("clean", "-k", "gw-a").code == 0
        assert wait_until(lambda: _answer(HOST, member) in staging, timeout=30)
        assert wait_until(lambda: _answer(EDGE_HOST, member) in staging, timeout=30)
        assert wait_until(lambda: _request(share_host)[0] == 404, timeout=30)
        assert _grpc(GRPC_HOST, member) in staging
        assert _answer(HOST, {"x-preview": "gw-b"}) in pod_b  # the other key keeps its own
    finally:
        cli("clean", "-k", "gw-a")
        assert cli("clean", "-k", "gw-b").code == 0
    assert wait_until(lambda: _answer(HOST, {"x-preview": "gw-b"}) in staging, timeout=30)
    assert objects_of(kube, "gw-a") == [] and objects_of(kube, "gw-b") == []


def test_what_the_gateway_cannot_serve_is_named_and_routing_none_declares_nothing(
    cli: Cli, kube: Kube, testbed: Testbed, shop: str, tmp_path: Path
) -> None:
    staging = _pods(testbed, shop, "app=shop")
    gateway_ns = _gateway()[0].split("/")[0]
    config = _config(
        tmp_path,
        shop,
        "mirror",
        {"mode": "mirror", "http_filter": {"header_filter": "^x-mirror: {{ key }}$"}},
    )
    # A Gateway that does not exist: one line, exit 2, nothing created.
    missing = cli(
        "start", "-f", config, "-i", "echo:1", "-k", "gw-bad",
        "--gateway", f"{gateway_ns}/nowhere", "--share-domain", SHARE_DOMAIN,
    )  # fmt: skip
    assert missing.code == 2, missing.stderr
    assert len([x for x in missing.stderr.splitlines() if x.startswith("error:")]) == 1
    assert f"gateway {gateway_ns}/nowhere not found" in missing.stderr.lower()
    assert "gw-bad" not in stack_names() and objects_of(kube, "gw-bad") == []

    key = "gw-m"
    try:
        started = cli(
            "start", "-f", config, "-i", os.environ["PREVIEW_ENV_ECHO_IMAGE"], "-k", key,
            env=ROUTE_WAIT,
        )  # fmt: skip
        assert started.code == 0, started.stderr
        assert (
            f"HTTPRoute {shop}/shop-gw-{key}: Gateway {_gateway()[0]} (class "
            "preview-env-traefik) does not support filter RequestMirror "
            "(feature HTTPRouteRequestMirror)"
        ) in started.stdout, started.stdout
        assert _answer(HOST) in staging  # staging's own traffic is untouched

        # --routing none: the same target again, declaring no route at all.
        plain = cli(
            "start", "-f", config, "-i", os.environ["PREVIEW_ENV_ECHO_IMAGE"], "-k", key,
            "--routing", "none", "-o", "json",
        )  # fmt: skip
        assert plain.code == 0, plain.stderr
        assert plain.json()["routes"] == [] and plain.json()["routesProblem"] is None
        assert wait_until(
            lambda: not [o for o in objects_of(kube, key) if "route/" in o], timeout=30
        ), objects_of(kube, key)
        assert wait_until(lambda: _answer(HOST, {"x-mirror": key}) in staging, timeout=30)
    finally:
        assert cli("clean", "-k", key).code == 0
    assert objects_of(kube, key) == []


class _Stream:
    """Requests sent one after another through the Gateway from a thread, each answer
    recorded: (pod that answered, or "" for a failure: no answer, a 404 or a 5xx)."""

    def __init__(self, host: str, headers: dict[str, str] | None = None) -> None:
        self.host, self.headers = host, headers
        self.answers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.answers.append(_answer(self.host, self.headers))

    def __enter__(self) -> _Stream:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_no_request_fails_while_a_key_s_routes_are_added_and_removed(
    cli: Cli, testbed: Testbed, shop: str, tmp_path: Path
) -> None:
    """Requests without the key keep reaching staging, and the key's own requests reach
    staging or its preview, never an error, through `start` and `clean`: a twin route is
    served only once its preview answers, and goes before its preview does."""
    staging = _pods(testbed, shop, "app=shop")
    key = "gw-s"
    config = _config(tmp_path, shop, "steady", {"mode": "steal"})
    member = {"baggage": f"mirrord-session={key}"}
    with _Stream(HOST) as plain, _Stream(HOST, member) as keyed:
        try:
            _start(cli, config, key)
            preview = _pods(testbed, shop, f"preview-env.dev/key={key}")
            assert wait_until(lambda: bool(keyed.answers) and keyed.answers[-1] in preview, 30)
        finally:
            assert cli("clean", "-k", key).code == 0
        seen = len(keyed.answers)
        assert wait_until(lambda: len(keyed.answers) > seen + 20, timeout=30)
    assert len(plain.answers) > 50 and len(keyed.answers) > 50
    assert [a for a in plain.answers if a not in staging] == []
    failed = [i for i, a in enumerate(keyed.answers) if a not in staging | preview]
    assert failed == [], f"{len(failed)} of {len(keyed.answers)} keyed requests failed"
    assert keyed.answers[-1] in staging
