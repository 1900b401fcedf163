"""Reads and writes on the test bed's cluster: what an environment left there, `kubectl
apply` of built documents, a Job's outcome."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

from preview_stack import naming
from testbed import Testbed


@dataclass
class Kube:
    core: Any
    apps: Any
    discovery: Any
    custom: Any


def objects_of(kube: Kube, key: str) -> list[str]:
    """Every live object labelled with the environment `key`, as kind/name."""
    selector = f"{naming.LABEL_KEY}={key}"
    names = [
        f"deploy/{d.metadata.name}"
        for d in kube.apps.list_deployment_for_all_namespaces(label_selector=selector).items
    ]
    names += [
        f"svc/{s.metadata.name}"
        for s in kube.core.list_service_for_all_namespaces(label_selector=selector).items
    ]
    names += [
        f"cm/{c.metadata.name}"
        for c in kube.core.list_config_map_for_all_namespaces(label_selector=selector).items
    ]
    names += [
        f"pod/{p.metadata.name}"
        for p in kube.core.list_pod_for_all_namespaces(label_selector=selector).items
        if p.metadata.deletion_timestamp is None
    ]
    for plural in ("httproutes", "grpcroutes"):
        try:
            routes = kube.custom.list_cluster_custom_object(
                "gateway.networking.k8s.io", "v1", plural, label_selector=selector
            )["items"]
        except ApiException as exc:
            if exc.status != 404:
                raise
            routes = []
        names += [f"{plural[:-1]}/{r['metadata']['name']}" for r in routes]
    return names


def previews(kube: Kube, key: str) -> dict[str, str]:
    """Live preview Deployments of `key`: name -> image of their first container."""
    items = kube.apps.list_deployment_for_all_namespaces(
        label_selector=f"{naming.LABEL_KEY}={key}"
    ).items
    return {
        d.metadata.name: d.spec.template.spec.containers[0].image
        for d in items
        if d.metadata.deletion_timestamp is None
    }


def endpoint_ips(kube: Kube, namespace: str, service: str) -> set[str]:
    """The pod addresses behind `service`, from its EndpointSlices."""
    slices = kube.discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    ).items
    return {a for s in slices for ep in (s.endpoints or []) for a in ep.addresses}


def container(deployment: Any, name: str) -> Any:
    """The container `name` of a Deployment read through the client."""
    return next(c for c in deployment.spec.template.spec.containers if c.name == name)


def apply(testbed: Testbed, *docs: dict[str, Any]) -> None:
    """`kubectl apply` of these documents, as one List."""
    listing = {"apiVersion": "v1", "kind": "List", "items": list(docs)}
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(listing))


def documents(path: Path) -> list[dict[str, Any]]:
    """The documents of a YAML file, empty ones left out."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def job_state(testbed: Testbed, namespace: str, job: str) -> str:
    """Complete, Failed, or Running while neither condition holds."""
    doc = json.loads(testbed.kubectl("-n", namespace, "get", "job", job, "-o", "json"))
    for condition in doc.get("status", {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return str(condition["type"])
    return "Running"
