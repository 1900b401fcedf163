"""The platform engineers' front door: `pulumi up` on the repository's Pulumi.yaml, with the
real language host, manages the same environments as the CLI."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.cli import Cli, pulumi
from tests.support.kube import Kube, objects_of
from tests.support.paths import EXAMPLES
from tests.support.polling import wait_until
from tests.support.stacks import stack_names

pytestmark = pytest.mark.cluster


def users_service(image: str) -> dict[str, Any]:
    return {
        "target": "deployment/users",
        "container": "app",
        "namespace": "staging",
        "image": image,
    }


def test_pulumi_up_environment_is_seen_extended_and_reaped_by_the_cli(
    cli: Cli, kube: Kube, staging: str, stack_config: Any
) -> None:
    key = "plat-up"
    assert pulumi("stack", "init", key).returncode == 0
    stack_config(key, {"ttl": "2h", "services": [users_service("ghcr.io/acme/users:plat")]})
    up = pulumi("up", "--yes", "--skip-preview", "-s", key)
    assert up.returncode == 0, up.stdout + up.stderr

    status = cli("status", "-k", key, "--output", "json")
    assert status.code == 0, status.stderr
    [env] = status.json()
    assert env["state"] == "ready" and env["pods"][0]["image"] == "ghcr.io/acme/users:plat"
    assert env["ttl"].startswith(("1h 59m", "2h 0m", "1h 58m"))

    extended = cli("extend", "-k", key, "--ttl", "2s")
    assert extended.code == 0, extended.stderr
    time.sleep(3)
    reaped = cli("reap", "--output", "json")
    assert {r["key"]: r["outcome"] for r in reaped.json()["results"]} == {key: "reaped"}
    assert key not in stack_names()
    assert wait_until(lambda: objects_of(kube, key) == [])


def test_cli_environment_is_a_pulumi_stack_with_no_pending_changes(
    cli: Cli, kube: Kube, staging: str, stack_config: Any
) -> None:
    key = "plat-cli"
    started = cli(
        "start", "-f", str(EXAMPLES / "mirrord.json"), "-i", "ghcr.io/acme/users:same", "-k", key
    )
    assert started.code == 0, started.stderr
    listed = pulumi("stack", "ls", "--json")
    assert key in {s["name"] for s in json.loads(listed.stdout)}

    # The same spec through stack config: `pulumi preview` finds nothing to change.
    stack_config(
        key,
        {
            "ttl": "60m",
            "services": [
                {
                    **users_service("ghcr.io/acme/users:same"),
                    "env": {
                        "exclude": ["FEATURE_FLAGS"],
                        "override": {"LOG_LEVEL": "debug", "PREVIEW_OF": f"users-{key}"},
                    },
                    "incoming": {
                        "mode": "steal",
                        "http_filter": {"header_filter": f"^baggage: .*mirrord-session={key}.*"},
                    },
                    "creation_timeout_secs": 90,
                }
            ],
        },
    )
    preview = pulumi("preview", "--expect-no-changes", "-s", key)
    assert preview.returncode == 0, preview.stdout + preview.stderr

    destroyed = pulumi("destroy", "--yes", "--skip-preview", "--remove", "-s", key)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert key not in stack_names()
    assert wait_until(lambda: objects_of(kube, key) == [])


def test_bad_stack_config_fails_before_anything_is_created(
    kube: Kube, staging: str, stack_config: Any
) -> None:
    key = "plat-bad"
    assert pulumi("stack", "init", key).returncode == 0
    try:
        stack_config(
            key,
            {"services": [{"target": "deployment/nope", "namespace": "staging", "image": "x:1"}]},
        )
        up = pulumi("up", "--yes", "--skip-preview", "-s", key)
        assert up.returncode != 0
        assert "target deployment/nope not found in namespace staging" in up.stdout + up.stderr
        assert objects_of(kube, key) == []
        stack_config(key, {"services": [{"namespace": "staging", "image": "x:1", "replicas": 0}]})
        bad_type = pulumi("preview", "-s", key)
        assert bad_type.returncode != 0
        assert "preview-env:services[0].replicas" in bad_type.stdout + bad_type.stderr
    finally:
        pulumi("stack", "rm", "--yes", "--force", "-s", key)


SERVER_SET = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
)


def live_objects(kube: Kube, key: str) -> dict[str, Any]:
    """The environment's Deployments, Services and record, without server-set fields."""
    selector = f"preview-env.dev/key={key}"
    api = kube.apps.api_client
    found: dict[str, Any] = {}
    for kind, items in (
        ("Deployment", kube.apps.list_deployment_for_all_namespaces(label_selector=selector)),
        ("Service", kube.core.list_service_for_all_namespaces(label_selector=selector)),
        ("ConfigMap", kube.core.list_config_map_for_all_namespaces(label_selector=selector)),
    ):
        for item in items.items:
            obj = api.sanitize_for_serialization(item)
            meta = obj["metadata"]
            for field in SERVER_SET:
                meta.pop(field, None)
            annotations = meta.get("annotations", {})
            annotations.pop("preview-env.dev/created-at", None)
            annotations.pop("deployment.kubernetes.io/revision", None)
            obj.pop("status", None)
            spec = obj.get("spec", {})
            for field in ("clusterIP", "clusterIPs"):
                spec.pop(field, None)
            if kind == "ConfigMap":
                data = json.loads(obj["data"]["spec.json"])
                data.pop("created_at")
                obj["data"] = data
            found[f"{kind}/{meta['namespace']}/{meta['name']}"] = obj
    return found


def test_same_spec_through_both_front_doors_gives_the_same_objects(
    cli: Cli, kube: Kube, staging: str, stack_config: Any
) -> None:
    key = "plat-same"
    started = cli(
        "start",
        "-i",
        "ghcr.io/acme/orders:same",
        "-k",
        key,
        "-t",
        "deployment/orders",
        "-n",
        staging,
        "--ttl",
        "3h",
        "--output",
        "json",
        env={"PREVIEW_ENV_OWNER": "platform-team"},
    )
    assert started.code == 0, started.stderr
    expires_at = started.json()["expiresAt"]
    through_cli = live_objects(kube, key)
    assert cli("clean", "-k", key).code == 0
    assert wait_until(lambda: objects_of(kube, key) == [])

    assert pulumi("stack", "init", key).returncode == 0
    stack_config(
        key,
        {
            "ttl": "3h",
            "expiresAt": expires_at,
            "owner": "platform-team",
            "services": [
                {
                    "target": "deployment/orders",
                    "namespace": "staging",
                    "image": "ghcr.io/acme/orders:same",
                }
            ],
        },
    )
    up = pulumi("up", "--yes", "--skip-preview", "-s", key)
    assert up.returncode == 0, up.stdout + up.stderr
    through_pulumi = live_objects(kube, key)
    assert sorted(through_pulumi) == sorted(through_cli)
    assert through_pulumi == through_cli

    cleaned = cli("clean", "-k", key)  # a `pulumi up` environment cleans like any other
    assert cleaned.code == 0, cleaned.stderr
    assert key not in stack_names()
    assert wait_until(lambda: objects_of(kube, key) == [])
