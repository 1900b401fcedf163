"""The Deployment and Service every cluster test builds its targets from: pods labelled
app=<name>, a Service selecting them."""

from __future__ import annotations

import json
from typing import Any

from testbed import Testbed


def deployment(
    name: str,
    namespace: str,
    containers: list[dict[str, Any]],
    *,
    replicas: int = 1,
    pod: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Deployment of pods labelled app=<name>; `pod` adds pod-spec fields."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {**(pod or {}), "containers": containers},
            },
        },
    }


def service(name: str, namespace: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    """A Service named like the Deployment `name`, selecting its pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": ports},
    }


def deployment_and_service(
    name: str,
    namespace: str,
    containers: list[dict[str, Any]],
    ports: list[dict[str, Any]],
    *,
    replicas: int = 1,
    pod: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """A target: the Deployment `name` and the Service in front of its pods."""
    return [
        deployment(name, namespace, containers, replicas=replicas, pod=pod),
        service(name, namespace, ports),
    ]


def apply_unschedulable_target(testbed: Testbed, name: str, namespace: str = "staging") -> None:
    """A Deployment whose pods can never be scheduled: under kwok, the stand-in for pods
    that never become Ready (an unpullable image, a crash loop)."""
    manifest = deployment(
        name,
        namespace,
        [{"name": name, "image": f"{name}:1"}],
        replicas=0,
        pod={"nodeSelector": {"disktype": "none"}},
    )
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
