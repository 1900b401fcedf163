"""The echo target the bed's traffic tests and benchmarks run: echo pods (the `echo` image,
scripts/images/echo, answering with their pod name and the request's headers) on the real
node, behind a Service on port 80."""

from __future__ import annotations

from typing import Any

from testbed import node as real_node

PORT = 8080  # the echo server's port in its pods


def objects(namespace: str, name: str, image: str, *, replicas: int = 1) -> list[dict[str, Any]]:
    """Deployment `name` (pods labelled app=<name>, Ready once they answer) and Service
    `name` (80 -> 8080)."""
    labels = {"app": name}
    container = {
        "name": "echo",
        "image": image,
        "imagePullPolicy": "Never",
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": PORT}, "periodSeconds": 1},
    }
    pod = {**real_node.pod_placement(), "terminationGracePeriodSeconds": 1}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {**pod, "containers": [container]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": 80, "targetPort": PORT}],
            },
        },
    ]
