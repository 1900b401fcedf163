"""Paths of the JSON-only Kubernetes client (`adapters.k8s.client`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapters.k8s.client import RESOURCES


@pytest.mark.parametrize(
    ("kind", "namespace", "name", "expected"),
    [
        ("pod", "shop", "web-1", "/api/v1/namespaces/shop/pods/web-1"),
        ("pod", None, None, "/api/v1/pods"),
        ("deployment", "shop", None, "/apis/apps/v1/namespaces/shop/deployments"),
        ("cronjob", "shop", "nightly", "/apis/batch/v1/namespaces/shop/cronjobs/nightly"),
        ("namespace", None, "shop", "/api/v1/namespaces/shop"),
        ("namespace", "ignored", None, "/api/v1/namespaces"),
        ("rollout", "a", "b", "/apis/argoproj.io/v1alpha1/namespaces/a/rollouts/b"),
        ("httproute", None, None, "/apis/gateway.networking.k8s.io/v1/httproutes"),
    ],
)
def test_paths(kind: str, namespace: str | None, name: str | None, expected: str) -> None:
    assert RESOURCES[kind].path(namespace, name) == expected


def test_names_are_quoted() -> None:
    assert RESOURCES["secret"].path("a b", "x/y") == "/api/v1/namespaces/a%20b/secrets/x%2Fy"


KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: shop}}]
current-context: x
"""


def test_cluster_reads_never_load_the_typed_models(tmp_path: Path) -> None:
    """The point of adapters.k8s.client: a Cluster imports no generated API class or model
    (each costs seconds of pydantic model building in kubernetes 37)."""
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)
    code = (
        "import sys\n"
        "from adapters.k8s.cluster import Cluster, ClusterTarget\n"
        f"assert Cluster(ClusterTarget({str(config)!r})).default_namespace() == 'shop'\n"
        "loaded = [m for m in sys.modules if m.startswith(('kubernetes.client.api.',"
        " 'kubernetes.client.models.'))]\n"
        "print(len(loaded), loaded[:3])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("0 "), out.stdout
