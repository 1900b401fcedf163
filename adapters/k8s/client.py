"""Kubernetes REST calls that return plain JSON, without the client's typed API classes.

Every cluster read here wants Kubernetes-native JSON dicts, while kubernetes 37's generated
API classes (`CoreV1Api` and friends) build about 300 pydantic models when first touched:
1 to 5 s per process on our machines, most of a `status` run (BENCHMARKS.md, issue 15).
So requests go through the client's `ApiClient`, which keeps what the kubeconfig gives
(server, TLS, client certificates, proxies, bearer tokens and their refresh), to paths
built from the small resource table below; responses are parsed with `json` only.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes.client.api_client import ApiClient
from kubernetes.client.exceptions import ApiException


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: group/version ("v1" is the core group) and plural."""

    group_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The collection (no name) or object path; all namespaces when `namespace` is None."""
        root = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        path = root
        if self.namespaced and namespace is not None:
            path += f"/namespaces/{quote(namespace, safe='')}"
        path += f"/{self.plural}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
        return path


RESOURCES: Mapping[str, Resource] = {
    "namespace": Resource("v1", "namespaces", namespaced=False),
    "pod": Resource("v1", "pods"),
    "service": Resource("v1", "services"),
    "configmap": Resource("v1", "configmaps"),
    "secret": Resource("v1", "secrets"),
    "persistentvolumeclaim": Resource("v1", "persistentvolumeclaims"),
    "deployment": Resource("apps/v1", "deployments"),
    "replicaset": Resource("apps/v1", "replicasets"),
    "statefulset": Resource("apps/v1", "statefulsets"),
    "job": Resource("batch/v1", "jobs"),
    "cronjob": Resource("batch/v1", "cronjobs"),
    "rollout": Resource("argoproj.io/v1alpha1", "rollouts"),
    "httproute": Resource("gateway.networking.k8s.io/v1", "httproutes"),
    "grpcroute": Resource("gateway.networking.k8s.io/v1", "grpcroutes"),
    "gateway": Resource("gateway.networking.k8s.io/v1", "gateways"),
    "endpointslice": Resource("discovery.k8s.io/v1", "endpointslices"),
    "gatewayclass": Resource("gateway.networking.k8s.io/v1", "gatewayclasses", namespaced=False),
}


class KubeApi:
    """JSON requests through one `ApiClient`. Errors are the client's `ApiException` (with
    the status), so callers handle them as they did with the typed APIs."""

    def __init__(self, api_client: ApiClient) -> None:
        self.client = api_client

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """The raw urllib3 response, body unread; non-2xx raises `ApiException`."""
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self.client.param_serialize(
            method, path, query_params=params, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        response = self.client.rest_client.request(  # type: ignore[no-untyped-call]
            method, url, headers=headers, body=body
        )
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException(http_resp=response)
        return response.response

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        raw = self._send("GET", path, query)
        result: dict[str, Any] = json.loads(raw.data)
        return result

    def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        """The items of a list, each with the `kind` Kubernetes leaves out of list items."""
        listed = self.get(path, labelSelector=label_selector)
        kind = str(listed.get("kind", "")).removesuffix("List")
        return [{"kind": kind, **item} for item in listed.get("items") or []]

    def text(self, path: str, **query: Any) -> str:
        data: bytes = self._send("GET", path, query).data
        return data.decode(errors="replace")

    def stream(self, path: str, **query: Any) -> Iterator[bytes]:
        """The body in chunks as the server sends them (a followed log)."""
        raw = self._send("GET", path, query)
        try:
            yield from raw.stream(4096)
        finally:
            raw.release_conn()

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create: the object the API server returns (a review's answer, for one)."""
        result: dict[str, Any] = json.loads(self._send("POST", path, body=dict(body)).data)
        return result

    def delete(self, path: str, propagation: str = "Background") -> None:
        self._send("DELETE", path, body={"propagationPolicy": propagation})

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> None:
        self._send("PATCH", path, body=dict(patch), content_type="application/merge-patch+json")

    def json_patch(self, path: str, ops: builtins.list[dict[str, Any]]) -> dict[str, Any]:
        """RFC 6902 JSON Patch (a failed `test` op is HTTP 422): the patched object."""
        raw = self._send("PATCH", path, body=ops, content_type="application/json-patch+json")
        result: dict[str, Any] = json.loads(raw.data)
        return result


__all__ = ["RESOURCES", "ApiException", "KubeApi", "Resource"]
