"""The bed's Gateway data plane (testbed.gateway): Traefik on the real node routes by key.

Two echo Deployments on the real node behind two Services and one HTTPRoute on the bed's
Gateway, with the exact baggage match preview-env declares (preview_stack.routing): the
request reaches the preview's pod only with the key's baggage member. And a bed started
with `python -m testbed up --gateway` leaves no process or listener behind once down.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from preview_stack.routing import default_filter
from testbed import Testbed, echo
from testbed import gateway as bed_gateway
from testbed import node as real_node
from tests.support.bed import gone, testbed_cli
from tests.support.polling import wait_until

pytestmark = pytest.mark.cluster
HOST = "shop.preview-env.test"


@pytest.fixture
def namespace(testbed: Testbed) -> Iterator[str]:
    assert testbed.real_node, "the Gateway runs on the real node (PREVIEW_ENV_REAL_NODE=0)"
    name = f"gw-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        testbed.kubectl("delete", "namespace", name, "--wait=false")


def _route(namespace: str, gateway: str) -> dict[str, Any]:
    gw_namespace, gw_name = gateway.split("/")
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "shop", "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": gw_name, "namespace": gw_namespace}],
            "hostnames": [HOST],
            "rules": [
                {"backendRefs": [{"name": "staging", "port": 80}]},
                {
                    "matches": [{"headers": [default_filter("pr-1").as_match()]}],
                    "backendRefs": [{"name": "preview", "port": 80}],
                },
            ],
        },
    }


def _get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _pod(testbed: Testbed, namespace: str, app: str) -> str:
    pods = json.loads(
        testbed.kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o", "json")
    )
    (pod,) = pods["items"]
    assert pod["spec"]["nodeName"] == real_node.NAME
    return str(pod["metadata"]["name"])


def test_gateway_routes_the_key_to_the_preview(testbed: Testbed, namespace: str) -> None:
    gateway, url = os.environ["PREVIEW_ENV_GATEWAY"], os.environ["PREVIEW_ENV_GATEWAY_URL"]
    assert gateway == "preview-env-gateway/bed"
    assert url.startswith("http://127.0.0.1:")
    image = os.environ["PREVIEW_ENV_ECHO_IMAGE"]
    docs = [*echo.objects(namespace, "staging", image), *echo.objects(namespace, "preview", image)]
    docs.append(_route(namespace, gateway))
    testbed.kubectl(
        "apply",
        "-f",
        "-",
        input_text=json.dumps({"kind": "List", "apiVersion": "v1", "items": docs}),
    )
    for app in ("staging", "preview"):
        testbed.kubectl("rollout", "status", f"deployment/{app}", "-n", namespace, "--timeout=90s")
    staging, preview = _pod(testbed, namespace, "staging"), _pod(testbed, namespace, "preview")

    def answer(baggage: str | None) -> str:
        headers = {"Host": HOST, **({"baggage": baggage} if baggage is not None else {})}
        status, body = _get(url, headers)
        assert status == 200, (status, body)
        reply = json.loads(body)
        if baggage is not None:
            assert reply["headers"]["Baggage"] == baggage
        return str(reply["hostname"])

    def served() -> bool:
        # Traefik picks the route up, and the preview's endpoints, a moment after they exist.
        try:
            return answer("mirrord-session=pr-1") == preview and answer(None) == staging
        except (OSError, AssertionError, http.client.HTTPException):
            return False

    assert wait_until(served, timeout=60), testbed.kubectl(
        "get", "httproute", "shop", "-n", namespace, "-o", "yaml"
    )
    assert answer(None) == staging
    assert answer("mirrord-session=pr-1") == preview
    assert answer("a=b, mirrord-session=pr-1;p=1") == preview
    assert answer("mirrord-session=pr-12") == staging
    assert answer("mirrord-session=pr-2") == staging

    route = json.loads(testbed.kubectl("get", "httproute", "shop", "-n", namespace, "-o", "json"))
    (parent,) = route["status"]["parents"]
    assert parent["controllerName"] == bed_gateway.CONTROLLER
    conditions = {c["type"]: c["status"] for c in parent["conditions"]}
    assert conditions["Accepted"] == "True" and conditions["ResolvedRefs"] == "True"


def _closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_up_with_gateway_and_down_leave_nothing(tmp_path: Path, testbed: Testbed) -> None:
    assert testbed.real_node, "the Gateway runs on the real node (PREVIEW_ENV_REAL_NODE=0)"
    state = tmp_path / "bed"
    up = testbed_cli("up", "--gateway", "--state", str(state), timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        processes = json.loads((state / "pids.json").read_text())
        pids = {p["pid"] for p in processes}
        assert "gateway-relay" in {p["name"] for p in processes}
        shell = f"source {state}/env && echo $PREVIEW_ENV_GATEWAY $PREVIEW_ENV_GATEWAY_URL"
        out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True)
        gateway, url = out.stdout.split()
        assert gateway == "preview-env-gateway/bed"
        port = int(urllib.parse.urlsplit(url).port or 0)
        assert url == f"http://127.0.0.1:{port}"
        status, _ = _get(url, {"Host": "nothing-routes-here.invalid"})
        assert status == 404  # Traefik itself answers: no route for that host
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True)
        assert f"127.0.0.1:{port} " in listening.stdout
        assert f"0.0.0.0:{port} " not in listening.stdout  # loopback only on the host
    finally:
        down = testbed_cli("down", "--state", str(state), timeout=120)
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    assert all(gone(pid) for pid in pids), pids
    assert _closed(port), f"127.0.0.1:{port} still open after down"
    assert real_node.shim_pids(state) == []
    assert not real_node.Paths.of(state).netns.exists()
