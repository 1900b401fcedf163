"""A queue's preparation through `pulumi up -s queue.<ns>.<id>` on the repository's
Pulumi.yaml, and what `start` then declares and refuses (the objects in the Kubernetes
API; the broker side runs on the real node, tests/e2e/test_real_queues.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from preview_stack import naming, queue_prep
from testbed import Testbed
from tests.support.cli import Cli, pulumi
from tests.support.kube import apply
from tests.support.workloads import deployment

pytestmark = pytest.mark.cluster


def write_config(tmp: Path, namespace: str, queue_type: str = "RMQ") -> str:
    path = tmp / f"split-{queue_type}.json"
    split = {"queue_type": queue_type, "message_filter": {"mirrord-session": "{{ key }}"}}
    path.write_text(
        json.dumps(
            {
                "target": {"path": "deployment/orders", "namespace": namespace},
                "feature": {"split_queues": {"orders": split}},
            }
        )
    )
    return str(path)


def get(testbed: Testbed, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(testbed.kubectl("-n", namespace, "get", kind, name, "-o", "json")))


def test_prepare_by_pulumi_up_then_start_splits_and_refuses(
    cli: Cli,
    testbed: Testbed,
    namespace: str,
    stack_config: Callable[[str, dict[str, Any]], None],
    tmp_path: Path,
) -> None:
    container = {"name": "app", "image": "consumer:1", "env": [{"name": "QUEUE", "value": "q1"}]}
    apply(testbed, deployment("orders", namespace, [container]))
    stack = naming.platform_stack("queue", namespace, "orders")
    config = {"type": "rmq", "target": "deployment/orders", "env": "QUEUE",
              "urlFrom": "broker:url", "routingKey": "orders", "image": "keeper:1"}  # fmt: skip
    assert pulumi("stack", "init", stack).returncode == 0
    try:
        # The default exchange alone cannot be rerouted: refused, nothing declared.
        stack_config(stack, config)
        refused = pulumi("up", "--yes", "--skip-preview", "-s", stack)
        assert refused.returncode != 0
        assert "is fed by the default exchange only" in refused.stdout + refused.stderr
        assert cli("queues", "list", "-n", namespace, "-o", "json").json()[0]["type"] == ""

        stack_config(stack, {**config, "exchange": "shop"})
        up = pulumi("up", "--yes", "--skip-preview", "-s", stack)
        assert up.returncode == 0, up.stdout + up.stderr
        record = get(testbed, namespace, "configmap", queue_prep.record_name("orders"))
        prep = queue_prep.parse_record(record)
        assert prep is not None
        assert (prep.source, prep.exchange, prep.routing_key) == ("q1", "shop", "orders")
        keeper = get(testbed, namespace, "deployment", queue_prep.keeper_name("orders"))
        pod = keeper["spec"]["template"]["spec"]
        assert pod["containers"][0]["env"][0]["valueFrom"] == {
            "secretKeyRef": {"name": "broker", "key": "url"}
        }
        role = get(testbed, namespace, "role", queue_prep.keeper_name("orders"))
        assert {v for r in role["rules"] for v in r["verbs"]} == {
            "get", "list", "watch", "patch", "update"
        }  # fmt: skip
        (listed,) = cli("queues", "list", "-n", namespace, "-o", "json").json()
        assert (listed["id"], listed["source"], listed["exchange"]) == ("orders", "q1", "shop")

        # A queue prepared as rmq, asked for as Kafka: exit 2, nothing created.
        wrong = cli("start", "-f", write_config(tmp_path, namespace, "Kafka"),
                    "-i", "consumer:2", "-k", "qp-wrong")  # fmt: skip
        assert wrong.code == 2
        assert wrong.stderr.strip() == (
            "error: feature.split_queues: queue 'orders' is a Kafka queue in the config, but "
            f"it is prepared in {namespace} as rmq; fix queue_type"
        )
        assert "qp-wrong" not in testbed.kubectl("-n", namespace, "get", "all,configmaps")

        key = "qp-split"
        started = cli("start", "-f", write_config(tmp_path, namespace), "-i", "consumer:2",
                      "-k", key, "--routing", "none")  # fmt: skip
        assert started.code == 0, started.stderr
        preview = get(testbed, namespace, "deployment", naming.workload_name("orders", key))
        spec = preview["spec"]["template"]["spec"]
        assert spec["initContainers"][0]["args"] == [
            "queues", "bind", "orders", "--type", "rmq", "--queue", f"q1.preview-env.{key}",
            "--match", f"mirrord-session={key}",
        ]  # fmt: skip
        assert {"name": "QUEUE", "value": f"q1.preview-env.{key}"} in spec["containers"][0]["env"]
        split = get(testbed, namespace, "configmap", queue_prep.split_name("orders", key))
        assert split["metadata"]["labels"][naming.LABEL_KEY] == key
        target = get(testbed, namespace, "deployment", "orders")
        assert target["spec"]["template"]["spec"]["containers"][0]["env"] == container["env"]
        (shown,) = cli("status", "-k", key, "-o", "json").json()[0]["splits"]
        assert shown["key_queue"] == f"q1.preview-env.{key}" and shown["queue"] == "q1"

        busy = cli("queues", "unprepare", "orders", "-n", namespace)
        assert busy.code == 2
        assert busy.stderr.strip() == (
            f"error: queue orders is still split by environment {key}; clean it first "
            f"(preview-env clean -k {key})"
        )
        assert cli("clean", "-k", key).code == 0
        assert "preview-env-split" not in testbed.kubectl("-n", namespace, "get", "configmaps")
    finally:
        cli("clean", "-k", "qp-split")
        pulumi("destroy", "--yes", "--skip-preview", "--remove", "-s", stack)
    assert cli("queues", "list", "-n", namespace, "-o", "json").json() == []
