"""Split Kafka topics for real: the bed's Kafka, a staging consumer and two previews'
consumers on the real node, through `python -m cli queues prepare --type kafka`, `start`
(key a steals, key b mirrors), `status`, `clean`, a reaper round and `queues unprepare`,
with a producer sending all along.

Every consumer (broker-client's consume-kafka, in the target's consumer group) reports
each record it got (topic and sequence number) on a report topic, committing only after
the report is acknowledged, so the test counts what real consumers received."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from preview_stack import kafka_split, queue_prep
from testbed import Testbed, images
from testbed import node as real_node
from testbed.brokers import Brokers
from tests.support.cli import Cli
from tests.support.kafka import Stream, commit_beginning, create_topic, reports, topics
from tests.support.kube import apply
from tests.support.polling import wait_until
from tests.support.workloads import deployment

pytestmark = pytest.mark.cluster

# A removed key's topic goes within two keeper rounds once its preview has left the group
# (the drain to staging included): the preview pod's grace period (10 s here) and, for a
# consumer that does not leave the group on SIGTERM, the group's session timeout (10 s for
# kafka-python) come first, then a rebalance of the group.
GC_BOUND_SECONDS = 2 * queue_prep.POLL_SECONDS + 50


@pytest.fixture(scope="module")
def built(testbed: Testbed) -> dict[str, str]:
    if not testbed.real_node:
        pytest.skip("needs the real node (PREVIEW_ENV_REAL_NODE=0)")
    made = {"tools": images.reaper(testbed.toolchain), "client": images.broker_client()}
    for image in made.values():
        real_node.import_image(testbed.state_dir, image)
    return {name: image.name for name, image in made.items()}


def consumer(namespace: str, image: str, topic: str, group: str, report: str) -> dict[str, Any]:
    """Staging's consumer of `topic` (TOPIC) in `group`, the target every preview copies."""
    args = ["consume-kafka", "--bootstrap-env", "BOOTSTRAP", "--topic-env", "TOPIC"]
    container = {
        "name": "app",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": [*args, "--group", group, "--report", report],
        "env": [
            {"name": "TOPIC", "value": topic},
            {"name": "BOOTSTRAP", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "url"}}},
        ],
    }
    pod = {**real_node.pod_placement(), "terminationGracePeriodSeconds": 10}
    return deployment("orders", namespace, [container], pod=pod)


def config(tmp: Path, namespace: str, mode: str) -> str:
    path = tmp / f"split-{mode}.json"
    split = {"queue_type": "Kafka", "message_filter": {"mirrord-session": "^{{ key }}$"}}
    path.write_text(
        json.dumps(
            {
                "target": {"path": "deployment/orders", "namespace": namespace},
                "feature": {
                    "preview": {"creation_timeout_secs": 240},
                    "split_queues": {"orders": {**split, "queue_mode": mode}},
                },
            }
        )
    )
    return str(path)


def keeper_state(testbed: Testbed, namespace: str) -> str:
    """The keeper's status and last log lines (for failure messages)."""
    status = testbed.kubectl(
        "-n", namespace, "get", "configmap", queue_prep.status_name("orders"), "-o",
        "jsonpath={.data.status\\.json}",
    )  # fmt: skip
    logs = testbed.kubectl(
        "-n", namespace, "logs", f"deploy/{queue_prep.keeper_name('orders')}", "--tail=20"
    )
    return f"status: {status}\nlogs:\n{logs}"


def target_topic(testbed: Testbed, namespace: str) -> str:
    out = testbed.kubectl(
        "-n", namespace, "get", "deploy/orders", "-o",
        "jsonpath={.spec.template.spec.containers[0].env[?(@.name=='TOPIC')].value}",
    )  # fmt: skip
    return out.strip()


def test_split_topic_end_to_end(
    cli: Cli,
    testbed: Testbed,
    brokers: Brokers,
    namespace: str,
    built: dict[str, str],
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:6]
    topic, group, report = f"orders-{run}", f"orders-app-{run}", f"report-{run}"
    key_a, key_b = f"ka-{run}", f"kb-{run}"
    bootstrap = brokers.kafka_bootstrap
    staging = kafka_split.staging_topic(topic)
    create_topic(bootstrap, topic, partitions=3)
    create_topic(bootstrap, report, partitions=1)
    # Staging's consumer reads from the beginning (auto.offset.reset=latest would skip the
    # records sent before its group's first assignment, before any preparation).
    commit_beginning(bootstrap, topic, group)
    apply(
        testbed,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "broker", "namespace": namespace},
            "stringData": {"url": os.environ["PREVIEW_ENV_KAFKA_POD_BOOTSTRAP"]},
        },
        consumer(namespace, built["client"], topic, group, report),
    )
    testbed.kubectl("-n", namespace, "rollout", "status", "deploy/orders", "--timeout=180s")
    env = {"PREVIEW_ENV_QUEUE_IMAGE": built["tools"]}
    prepare = (
        "queues", "prepare", "orders", "-t", "deployment/orders", "-n", namespace,
        "--type", "kafka", "--env", "TOPIC", "--url-from", "broker:url", "--group", group,
    )  # fmt: skip
    stream = Stream(bootstrap, topic, keys=[key_a, key_b, None, None], rate=40).start()
    marks: dict[str, float] = {}
    try:
        time.sleep(3)
        marks["prepare"] = time.monotonic()
        for _ in range(2):  # idempotent
            done = cli(*prepare, env=env, timeout=300)
            assert done.code == 0, done.stderr + done.stdout
        assert staging in topics(bootstrap)
        assert wait_until(lambda: target_topic(testbed, namespace) == staging, timeout=30)
        marks["prepared"] = time.monotonic()
        testbed.kubectl("-n", namespace, "rollout", "status", "deploy/orders", "--timeout=180s")
        (listed,) = cli("queues", "list", "-n", namespace, "-o", "json").json()
        assert (listed["state"], listed["source"], listed["type"]) == ("prepared", topic, "kafka")

        for key, mode, ttl in ((key_a, "steal", "1h"), (key_b, "mirror", "90s")):
            started = cli("start", "-f", config(tmp_path, namespace, mode), "-i",
                          built["client"], "-k", key, "--routing", "none", "--ttl", ttl,
                          env=env, timeout=600)  # fmt: skip
            assert started.code == 0, started.stderr + started.stdout
            marks[f"{key}_ready"] = time.monotonic()
        time.sleep(10)

        (split,) = cli("status", "-k", key_a, "-o", "json").json()[0]["splits"]
        assert split["key_queue"] == kafka_split.key_topic(topic, key_a)
        assert split["state"] == "split" and isinstance(split["waiting"], int), split

        marks[f"{key_a}_leaving"] = time.monotonic()
        assert cli("clean", "-k", key_a).code == 0
        key_a_topic = kafka_split.key_topic(topic, key_a)
        assert wait_until(lambda: key_a_topic not in topics(bootstrap), timeout=GC_BOUND_SECONDS), (
            keeper_state(testbed, namespace)
        )
        marks[f"{key_a}_gone"] = time.monotonic()

        def reaped() -> bool:
            result = cli("reap", "--output", "json")
            return any(
                r["key"] == key_b and r["outcome"] == "reaped"
                for r in json.loads(result.stdout)["results"]
            )

        marks[f"{key_b}_leaving"] = time.monotonic()
        assert wait_until(reaped, timeout=240)
        key_b_topic = kafka_split.key_topic(topic, key_b)
        assert wait_until(lambda: key_b_topic not in topics(bootstrap), timeout=GC_BOUND_SECONDS), (
            keeper_state(testbed, namespace)
        )
        marks[f"{key_b}_gone"] = time.monotonic()
        time.sleep(3)

        marks["unprepare"] = time.monotonic()
        undone = cli("queues", "unprepare", "orders", "-n", namespace, timeout=300)
        assert undone.code == 0, undone.stderr + undone.stdout
        assert target_topic(testbed, namespace) == topic
        marks["unprepared"] = time.monotonic()
        testbed.kubectl("-n", namespace, "rollout", "status", "deploy/orders", "--timeout=180s")
        time.sleep(5)
    finally:
        sent = stream.stop()
        cli("clean", "-k", key_a)
        cli("clean", "-k", key_b)
        cli("queues", "unprepare", "orders", "-n", namespace, timeout=300)

    assert staging not in topics(bootstrap)
    assert cli("queues", "list", "-n", namespace, "-o", "json").json() == []
    got: list[tuple[str, int]] = []

    def all_reported() -> bool:
        got[:] = reports(bootstrap, report, timeout=3)
        return {n for _, n in got} >= set(sent)

    wait_until(all_reported, timeout=120)
    missing = sorted(set(sent) - {n for _, n in got})
    start = stream.times[0][0]
    assert not missing, (
        f"{len(missing)} of {len(sent)} never reported; marks "
        + str({m: round(t - start, 1) for m, t in marks.items()})
        + "; first: "
        + str([(n, sent[n], round(stream.times[n][0] - start, 2)) for n in missing[:40]])
    )
    check_counts(stream, got, topic, {key_a: "steal", key_b: "mirror"}, marks)


def check_counts(
    stream: Stream,
    got: list[tuple[str, int]],
    topic: str,
    modes: dict[str, str],
    marks: dict[str, float],
) -> None:
    staging_topics = {topic, kafka_split.staging_topic(topic)}
    to_staging = Counter(n for where, n in got if where in staging_topics)
    to_keys = Counter(n for where, n in got if where not in staging_topics)
    where_key = {n: where for where, n in got if where not in staging_topics}
    seen: Counter[str] = Counter()
    for n, key in stream.sent.items():
        before, acked = stream.times[n]
        own = kafka_split.key_topic(topic, key) if key else ""
        if key is None:
            assert (to_staging[n], to_keys[n]) == (1, 0), (n, key)
            continue
        assert to_keys[n] <= 1 and to_staging[n] <= 1, (n, key, to_keys[n], to_staging[n])
        assert where_key.get(n, own) == own, (n, key, where_key.get(n))  # never another key's
        ready, leaving, gone = (marks[f"{key}_{m}"] for m in ("ready", "leaving", "gone"))
        live = before >= ready and acked < leaving
        if modes[key] == "steal":
            assert to_staging[n] + to_keys[n] == 1, (n, key)  # exactly once, somewhere
            if live:
                assert to_keys[n] == 1, (n, key)
                seen[key] += 1
        else:
            assert to_staging[n] == 1, (n, key)  # mirror: staging gets every record
            if live:
                assert to_keys[n] == 1, (n, key)
                seen[key] += 1
        if before >= gone:
            assert to_keys[n] == 0, (n, key)
    assert all(seen[k] > 0 for k in modes), seen
