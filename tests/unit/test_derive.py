"""Deriving preview manifests from a target workload (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from preview_stack import naming
from preview_stack.config import IncomingFeature, TargetPath
from preview_stack.derive import derive_service, pod_template_of, record_manifest
from preview_stack.errors import BadInput, NotFound
from preview_stack.spec import EnvironmentSpec, EnvRules, LabelRules, ServiceSpec
from tests.support.specs import TARGET, env_with, service

SERVICES = [
    {
        "metadata": {"name": "users"},
        "spec": {
            "selector": {"app": "users"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
        },
    },
    {"metadata": {"name": "other"}, "spec": {"selector": {"app": "other"}, "ports": []}},
]


def derive(spec: ServiceSpec) -> list[dict[str, Any]]:
    target = replace(pod_template_of(TARGET), env_sources={"configmap/users-config": ["DB_HOST"]})
    return derive_service(env_with(spec), spec, target, SERVICES)


def test_image_replaced_only_in_the_chosen_container() -> None:
    deployment = derive(service())[0]
    pod = deployment["spec"]["template"]["spec"]
    app, proxy = pod["containers"]
    assert app["image"] == "users:pr-42"
    assert proxy == TARGET["spec"]["template"]["spec"]["containers"][1]  # sidecar untouched
    assert pod["initContainers"] == [{"name": "migrate", "image": "users:1"}]
    assert pod["serviceAccountName"] == "users"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["volumes"] == TARGET["spec"]["template"]["spec"]["volumes"]
    assert app["envFrom"] == [{"configMapRef": {"name": "users-config"}}]
    assert app["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {"name": naming.ENV_KEY_VAR, "value": "pr-42"} in app["env"]


def test_container_from_the_target_path() -> None:
    pod = derive(service(target=TargetPath.parse("deployment/users/container/proxy")))[0]
    containers = pod["spec"]["template"]["spec"]["containers"]
    assert containers[0]["image"] == "users:1"
    assert containers[1]["image"] == "users:pr-42"


def test_unknown_container_lists_the_existing_ones() -> None:
    with pytest.raises(NotFound, match=r"container 'web' not found .*containers: app, proxy"):
        derive(service(target=TargetPath.parse("deployment/users/container/web")))


def test_env_include_exclude_override() -> None:
    spec = service(
        env=EnvRules(
            include=["DB_*", "SECRET_*", "MODE"], exclude=["SECRET_*"], override={"MODE": "preview"}
        )
    )
    env = derive(spec)[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [
        {
            "name": "DB_HOST",
            "valueFrom": {"configMapKeyRef": {"name": "users-config", "key": "DB_HOST"}},
        },
        {"name": "DB_URL", "value": "pg"},
        {"name": "MODE", "value": "preview"},
        {"name": naming.ENV_KEY_VAR, "value": "pr-42"},
    ]


def test_isolation_labels_and_preview_service() -> None:
    deployment, preview_service = derive(service())
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "app" not in labels and "tier" not in labels
    assert labels[naming.LABEL_KEY] == "pr-42"
    assert deployment["metadata"]["name"] == "users-pr-42"
    assert deployment["spec"]["selector"]["matchLabels"] == {
        naming.LABEL_KEY: "pr-42",
        naming.LABEL_TARGET: "deployment-users",
    }
    assert (
        deployment["metadata"]["annotations"][naming.ANNOTATION_EXPIRES_AT]
        == "2026-01-01T01:00:00Z"
    )
    assert preview_service["metadata"]["name"] == "users-pr-42"
    assert preview_service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert preview_service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080}]


def test_kept_labels_are_copied_but_may_not_match_a_service() -> None:
    kept = derive(service(labels=LabelRules(include=["t*"], exclude=["team"])))[0]
    labels = kept["spec"]["template"]["metadata"]["labels"]
    assert labels["tier"] == "backend" and "team" not in labels
    with pytest.raises(BadInput, match="Service staging/users"):
        derive(service(labels=LabelRules(include=["app"])))


def test_targetless_runs_the_image_alone_with_ports() -> None:
    spec = service(
        target=None,
        image="ghcr.io/acme/search:1",
        incoming=IncomingFeature(mode="off", ports=[9000]),
    )
    deployment, svc = derive_service(env_with(spec), spec, None, SERVICES)
    assert deployment["metadata"]["name"] == "search-pr-42"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/acme/search:1"
    assert container["ports"] == [{"containerPort": 9000}]
    assert svc["spec"]["ports"][0]["port"] == 9000


def test_bare_pod_target_drops_runtime_fields() -> None:
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "staging", "labels": {"app": "users"}},
        "spec": {
            "nodeName": "n1",
            "priority": 0,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "c",
                    "image": "i:1",
                    "volumeMounts": [
                        {"name": "kube-api-access-abc", "mountPath": "/var/run/secrets"}
                    ],
                }
            ],
            "volumes": [{"name": "kube-api-access-abc", "projected": {}}],
        },
    }
    spec = service(target=TargetPath.parse("pod/p"))
    derived = derive_service(env_with(spec), spec, pod_template_of(pod), [])[0]
    pod_spec = derived["spec"]["template"]["spec"]
    assert "nodeName" not in pod_spec and "priority" not in pod_spec
    assert pod_spec["restartPolicy"] == "Always"
    assert pod_spec["volumes"] == [] and pod_spec["containers"][0]["volumeMounts"] == []


def test_derivation_does_not_mutate_the_target() -> None:
    import copy

    before = copy.deepcopy(TARGET)
    derive(service(env=EnvRules(override={"A": "b"})))
    assert before == TARGET


def test_record_holds_the_spec() -> None:
    env = env_with(service())
    record = record_manifest(env)
    assert EnvironmentSpec.model_validate_json(record["data"]["spec.json"]) == env


def test_merge_adds_and_replaces_by_target() -> None:
    env = env_with(service())
    added = env.with_service(service(target=TargetPath.parse("statefulset/db"), image="db:2"))
    assert [s.display_target for s in added.services] == ["deployment/users", "statefulset/db"]
    replaced = added.with_service(service(image="users:pr-43"))
    assert [s.image for s in replaced.services] == ["users:pr-43", "db:2"]
    rest, removed = replaced.without("deployment/users")
    assert [s.display_target for s in removed] == ["deployment/users"]
    assert [s.display_target for s in rest.services] == ["statefulset/db"]
