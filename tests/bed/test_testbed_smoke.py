"""The test bed works end to end: real pulumi CLI, real provider, real API server.

Creates a Namespace, a 2-replica Deployment and a Service through the Automation API with
an inline program, checks the live objects, destroys them and removes the stack.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from pulumi import automation as auto

from testbed import Testbed
from tests.support.polling import wait_until

pytestmark = pytest.mark.cluster


def _program(namespace: str, kubeconfig: str) -> Callable[[], None]:
    def program() -> None:
        provider = k8s.Provider("testbed", kubeconfig=kubeconfig)
        opts = pulumi.ResourceOptions(provider=provider)
        labels = {"app": "smoke"}
        ns = k8s.core.v1.Namespace("ns", metadata={"name": namespace}, opts=opts)
        child = pulumi.ResourceOptions(provider=provider, depends_on=[ns])
        k8s.apps.v1.Deployment(
            "web",
            metadata={"name": "web", "namespace": namespace},
            spec={
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": "registry.invalid/web:1",
                                "ports": [{"containerPort": 8080}],
                            }
                        ]
                    },
                },
            },
            opts=child,
        )
        k8s.core.v1.Service(
            "web",
            metadata={"name": "web", "namespace": namespace},
            spec={"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
            opts=child,
        )

    return program


def test_inline_program_creates_and_destroys_real_objects(testbed: Testbed) -> None:
    namespace = f"smoke-{uuid.uuid4().hex[:6]}"
    api = kconfig.new_client_from_config(config_file=str(testbed.kubeconfig))
    core, apps, discovery = (
        kclient.CoreV1Api(api),
        kclient.AppsV1Api(api),
        kclient.DiscoveryV1Api(api),
    )
    stack = auto.create_stack(
        stack_name=namespace,
        project_name="testbed-smoke",
        program=_program(namespace, testbed.kubeconfig.read_text()),
    )
    try:
        result = stack.up(on_output=lambda _line: None)
        assert result.summary.result == "succeeded"

        deployment: Any = apps.read_namespaced_deployment("web", namespace)
        available = {c.type: c.status for c in deployment.status.conditions}
        assert available.get("Available") == "True"
        assert deployment.status.ready_replicas == 2

        pods = core.list_namespaced_pod(namespace, label_selector="app=smoke").items
        assert len(pods) == 2
        for pod in pods:
            assert pod.status.phase == "Running"
            ready = {c.type: c.status for c in pod.status.conditions}
            assert ready["Ready"] == "True"
            assert pod.spec.node_name.startswith("kwok-node-")

        def endpoints_list_both_pods() -> bool:
            slices = discovery.list_namespaced_endpoint_slice(
                namespace, label_selector="kubernetes.io/service-name=web"
            ).items
            ready_ips = {
                addr
                for s in slices
                for ep in (s.endpoints or [])
                if ep.conditions and ep.conditions.ready
                for addr in ep.addresses
            }
            return ready_ips == {p.status.pod_ip for p in pods}

        assert wait_until(endpoints_list_both_pods), "EndpointSlice does not list both pods"

        stack.destroy(on_output=lambda _line: None)

        def gone() -> bool:
            try:
                core.read_namespace(namespace)
            except ApiException as exc:
                return exc.status == 404
            return False

        assert wait_until(gone), f"namespace {namespace} still present after destroy"
        assert core.list_pod_for_all_namespaces(label_selector="app=smoke").items == []
    finally:
        stack.workspace.remove_stack(namespace, force=True)
    assert namespace not in {s.name for s in stack.workspace.list_stacks()}


def test_fake_nodes_are_ready(testbed: Testbed) -> None:
    api = kconfig.new_client_from_config(config_file=str(testbed.kubeconfig))
    nodes = kclient.CoreV1Api(api).list_node().items
    assert len(nodes) >= 2
    for node in nodes:
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"


def test_restricted_user_is_bound_by_rbac(testbed: Testbed) -> None:
    kubeconfig = testbed.user_kubeconfig("alice", groups=("developers",))
    api = kconfig.new_client_from_config(config_file=str(kubeconfig))
    with pytest.raises(ApiException) as denied:
        kclient.CoreV1Api(api).list_namespace()
    assert denied.value.status == 403
