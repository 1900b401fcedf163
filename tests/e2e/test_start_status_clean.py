"""`preview-env start | status | clean` on the real test bed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from preview_stack import naming
from tests.support.cli import Cli
from tests.support.kube import Kube, container, endpoint_ips, objects_of
from tests.support.paths import EXAMPLES
from tests.support.polling import wait_until
from tests.support.stacks import stack_names
from tests.support.workloads import apply_unschedulable_target

pytestmark = pytest.mark.cluster
CONFIG = str(EXAMPLES / "mirrord.json")


def test_start_status_replace_add_and_clean(cli: Cli, kube: Kube, staging: str) -> None:
    target_before = kube.apps.read_namespaced_deployment("users", staging)

    started = cli(
        "start", "-f", CONFIG, "-i", "ghcr.io/acme/users:pr-42", "-k", "e2e-one", "--output", "json"
    )
    assert started.code == 0, started.stderr
    doc = started.json()
    assert doc["key"] == "e2e-one" and doc["namespaces"] == ["staging"]
    assert doc["expiresAt"].endswith("Z")
    [pod] = doc["pods"]
    assert pod["ready"] is True and pod["target"] == "deployment/users"
    assert pod["image"] == "ghcr.io/acme/users:pr-42"

    preview = kube.apps.read_namespaced_deployment("users-e2e-one", staging)
    app, envoy = container(preview, "app"), container(preview, "envoy")
    assert app.image == "ghcr.io/acme/users:pr-42"
    assert envoy.image == "envoyproxy/envoy:v1.31.0"  # sidecar untouched
    env = {e.name: e.value for e in app.env}
    assert env[naming.ENV_KEY_VAR] == "e2e-one"
    assert env["LOG_LEVEL"] == "debug" and env["PREVIEW_OF"] == "users-e2e-one"
    assert "FEATURE_FLAGS" not in env and "DATABASE_URL" in env  # exclude, valueFrom kept
    # exclude applies to envFrom too: users-config's keys become references (no envFrom).
    assert not app.env_from
    refs = {e.name: e.value_from.config_map_key_ref for e in app.env if e.value_from}
    assert refs["ORDERS_URL"].name == "users-config" and refs["ORDERS_URL"].key == "ORDERS_URL"
    names = [e.name for e in app.env]
    assert names.index("LOG_LEVEL") < names.index("SERVICE_NAME")  # overridden in place
    assert app.readiness_probe.http_get.path == "/ready"
    assert preview.spec.template.spec.service_account_name == "users"
    assert preview.spec.template.spec.init_containers[0].name == "migrate"
    labels = preview.spec.template.metadata.labels
    assert "app" not in labels and labels[naming.LABEL_KEY] == "e2e-one"
    assert preview.metadata.annotations[naming.ANNOTATION_EXPIRES_AT] == doc["expiresAt"]

    # Isolation: the target's Service never lists the preview pod; the preview Service does.
    pod_ip = kube.core.read_namespaced_pod(pod["name"], staging).status.pod_ip
    assert wait_until(lambda: endpoint_ips(kube, staging, "users-e2e-one") == {pod_ip})
    assert pod_ip not in endpoint_ips(kube, staging, "users")
    target_after = kube.apps.read_namespaced_deployment("users", staging)
    assert target_after.metadata.generation == target_before.metadata.generation
    assert target_after.spec.template == target_before.spec.template

    status = cli("status", "-k", "e2e-one", "--output", "json")
    assert status.code == 0, status.stderr
    [env_status] = status.json()
    assert env_status["state"] == "ready" and env_status["ttl"].endswith("remaining")
    assert env_status["pods"][0]["ready"] is True

    # Same key, another target: adds. Same key and target: replaces the image.
    added = cli(
        "start",
        "-f",
        CONFIG,
        "-i",
        "ghcr.io/acme/orders:pr-42",
        "-k",
        "e2e-one",
        "-t",
        "deployment/orders",
        "--output",
        "json",
    )
    assert added.code == 0, added.stderr
    assert sorted(p["target"] for p in added.json()["pods"]) == [
        "deployment/orders",
        "deployment/users",
    ]
    replaced = cli("start", "-f", CONFIG, "-i", "ghcr.io/acme/users:pr-43", "-k", "e2e-one")
    assert replaced.code == 0, replaced.stderr
    assert "Preview environment is live!" in replaced.stdout
    assert "ghcr.io/acme/users:pr-43" in replaced.stdout
    preview = kube.apps.read_namespaced_deployment("users-e2e-one", staging)
    assert container(preview, "app").image == "ghcr.io/acme/users:pr-43"
    assert kube.apps.read_namespaced_deployment("orders-e2e-one", staging)

    text_status = cli("status")
    assert text_status.code == 0 and "e2e-one" in text_status.stdout

    one_target = cli("clean", "-k", "e2e-one", "-t", "deployment/orders")
    assert one_target.code == 0, one_target.stderr
    with pytest.raises(ApiException):
        kube.apps.read_namespaced_deployment("orders-e2e-one", staging)
    assert kube.apps.read_namespaced_deployment("users-e2e-one", staging)

    cleaned = cli("clean", "-k", "e2e-one")
    assert cleaned.code == 0, cleaned.stderr
    assert wait_until(lambda: objects_of(kube, "e2e-one") == [])
    assert "e2e-one" not in stack_names()
    again = cli("clean", "-k", "e2e-one")
    assert again.code == 0 and "Nothing to clean" in again.stdout


@pytest.mark.parametrize(
    ("kind", "manifest"),
    [
        (
            "statefulset",
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": "ledger", "namespace": "staging"},
                "spec": {
                    "serviceName": "ledger",
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "ledger"}},
                    "template": {
                        "metadata": {"labels": {"app": "ledger"}},
                        "spec": {"containers": [{"name": "ledger", "image": "ledger:1"}]},
                    },
                },
            },
        ),
        (
            "rollout",
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Rollout",
                "metadata": {"name": "checkout", "namespace": "staging"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "checkout"}},
                    "strategy": {"canary": {}},
                    "template": {
                        "metadata": {"labels": {"app": "checkout"}},
                        "spec": {"containers": [{"name": "checkout", "image": "checkout:1"}]},
                    },
                },
            },
        ),
        (
            "pod",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "worker", "namespace": "staging", "labels": {"app": "worker"}},
                "spec": {"containers": [{"name": "worker", "image": "worker:1"}]},
            },
        ),
    ],
)
def test_each_target_kind(
    cli: Cli, kube: Kube, staging: str, testbed: Any, kind: str, manifest: dict[str, Any]
) -> None:
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
    name = manifest["metadata"]["name"]
    key = f"e2e-{kind}"
    started = cli(
        "start",
        "-i",
        f"{name}:preview",
        "-k",
        key,
        "-t",
        f"{kind}/{name}",
        "-n",
        staging,
        "--output",
        "json",
    )
    assert started.code == 0, started.stderr
    [pod] = started.json()["pods"]
    assert pod["ready"] and pod["target"] == f"{kind}/{name}"
    deployment = kube.apps.read_namespaced_deployment(f"{name}-{key}", staging)
    assert deployment.spec.template.spec.containers[0].image == f"{name}:preview"
    assert cli("clean", "-k", key).code == 0
    assert wait_until(lambda: objects_of(kube, key) == [])


def test_targetless(cli: Cli, kube: Kube, staging: str, tmp_path: Any) -> None:
    config = tmp_path / "targetless.yaml"
    config.write_text(
        "feature:\n  preview:\n    image: ghcr.io/acme/search:{{ key }}\n"
        "  network:\n    incoming:\n      mode: 'off'\n      ports: [9000]\n"
    )
    started = cli("start", "-f", str(config), "-k", "e2e-solo", "-n", staging, "--output", "json")
    assert started.code == 0, started.stderr
    [pod] = started.json()["pods"]
    assert pod["target"] == "targetless" and pod["image"] == "ghcr.io/acme/search:e2e-solo"
    svc = kube.core.read_namespaced_service("search-e2e-solo", staging)
    assert svc.spec.ports[0].port == 9000
    assert cli("clean", "-k", "e2e-solo").code == 0
    assert wait_until(lambda: objects_of(kube, "e2e-solo") == [])


def test_clean_after_manual_deletion(cli: Cli, kube: Kube, staging: str) -> None:
    assert cli("start", "-f", CONFIG, "-i", "users:x", "-k", "e2e-gone").code == 0
    kube.apps.delete_namespaced_deployment("users-e2e-gone", staging)
    kube.core.delete_namespaced_service("users-e2e-gone", staging)
    cleaned = cli("clean", "-k", "e2e-gone")
    assert cleaned.code == 0, cleaned.stderr
    assert "e2e-gone" not in stack_names()
    assert wait_until(lambda: objects_of(kube, "e2e-gone") == [])


def test_pods_that_never_become_ready_fail_and_leave_nothing(
    cli: Cli, kube: Kube, staging: str, testbed: Any
) -> None:
    """A pod that cannot be scheduled stands in for an unpullable image under kwok."""
    apply_unschedulable_target(testbed, "stuck")
    failed = cli(
        "start",
        "-i",
        "stuck:2",
        "-k",
        "e2e-stuck",
        "-t",
        "deployment/stuck",
        "-n",
        staging,
        "--timeout",
        "8",
    )
    assert failed.code == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pod stuck-e2e-stuck-") and "Unschedulable" in last
    assert "e2e-stuck" not in stack_names()
    assert wait_until(lambda: objects_of(kube, "e2e-stuck") == [])
