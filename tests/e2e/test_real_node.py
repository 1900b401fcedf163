"""The bed's real node runs real containers: image, probes, Service, logs, pull errors.

kwok nodes only pretend; these cases need behaviour, so they pin their pods to the real
node with `testbed.node.pod_placement()` (a nodeSelector plus the toleration of its taint).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from testbed import Testbed
from testbed import node as real_node
from tests.support.kube import apply
from tests.support.polling import wait_until
from tests.support.workloads import deployment_and_service

pytestmark = pytest.mark.cluster


def _echo(namespace: str, image: str) -> list[dict[str, Any]]:
    container = {
        "name": "echo",
        "image": image,
        "imagePullPolicy": "Never",
        "env": [{"name": "GREETING", "value": "from-the-real-node"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1},
    }
    return deployment_and_service(
        "echo",
        namespace,
        [container],
        [{"port": 80, "targetPort": 8080}],
        pod={**real_node.pod_placement(), "terminationGracePeriodSeconds": 1},
    )


def test_echo_on_the_real_node_serves_through_its_service(testbed: Testbed, namespace: str) -> None:
    image = os.environ["PREVIEW_ENV_ECHO_IMAGE"]
    apply(testbed, *_echo(namespace, image))
    testbed.kubectl("rollout", "status", "deployment/echo", "-n", namespace, "--timeout=90s")

    pods = json.loads(
        testbed.kubectl("get", "pods", "-n", namespace, "-l", "app=echo", "-o", "json")
    )
    (pod,) = pods["items"]
    assert pod["spec"]["nodeName"] == real_node.NAME
    pod_name = pod["metadata"]["name"]
    cluster_ip = json.loads(
        testbed.kubectl("get", "service", "echo", "-n", namespace, "-o", "json")
    )["spec"]["clusterIP"]

    answers: list[dict[str, Any]] = []

    def answered() -> bool:
        # kube-proxy writes the Service's rules a moment after the endpoints turn ready.
        try:
            status, body = real_node.http_get(
                testbed.node_netns, f"http://{cluster_ip}/hello", {"X-Preview-Env": "probe-42"}
            )
        except OSError:
            return False
        if status == 200:
            answers.append(json.loads(body))
        return status == 200

    assert wait_until(answered, timeout=30), f"no answer from {cluster_ip}"
    reply = answers[-1]
    assert reply["hostname"] == pod_name
    assert reply["path"] == "/hello"
    assert reply["headers"]["X-Preview-Env"] == "probe-42"
    assert reply["env"]["GREETING"] == "from-the-real-node"
    assert reply["env"]["HOSTNAME"] == pod_name

    # API server -> kubelet (through the bed's relay) -> containerd's log file.
    logs = testbed.kubectl("logs", "-n", namespace, pod_name)
    assert f"echo: {pod_name} listening on :8080" in logs
    assert "echo: GET /hello from" in logs
    assert "echo: GET /ready from" in logs  # the kubelet's readiness probe, for real


def test_missing_image_is_err_image_never_pull(testbed: Testbed, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "missing", "namespace": namespace},
        "spec": {
            **real_node.pod_placement(),
            "containers": [
                {
                    "name": "missing",
                    "image": "preview-env.local/does-not-exist:0",
                    "imagePullPolicy": "Never",
                }
            ],
        },
    }
    apply(testbed, pod)

    def reason() -> str:
        status = json.loads(testbed.kubectl("get", "pod", "missing", "-n", namespace, "-o", "json"))
        for container in status.get("status", {}).get("containerStatuses", []):
            return str(container.get("state", {}).get("waiting", {}).get("reason", ""))
        return ""

    assert wait_until(lambda: reason() == "ErrImageNeverPull", timeout=60), reason()


def test_pods_that_do_not_choose_stay_on_kwok_nodes(testbed: Testbed) -> None:
    nodes = json.loads(testbed.kubectl("get", "nodes", "-o", "json"))["items"]
    kinds = {n["metadata"]["name"]: n["metadata"]["labels"].get(real_node.LABEL) for n in nodes}
    assert kinds[real_node.NAME] == "real"
    assert {k for name, k in kinds.items() if name != real_node.NAME} == {"kwok"}
    (real,) = [n for n in nodes if n["metadata"]["name"] == real_node.NAME]
    assert {"key": real_node.TAINT, "value": "true", "effect": "NoSchedule"} in real["spec"][
        "taints"
    ]
