"""Split RabbitMQ queues for real: the bed's RabbitMQ, a staging consumer and two previews'
consumers on the real node, through `python -m cli queues prepare`, `start`, `status`,
`clean`, a reaper round and `queues unprepare`, with a producer publishing all along.

Every consumer reports each message it got (queue and sequence number) on a report queue,
so the test counts from what real consumers received: nothing lost, nothing twice, each
preview exactly its key's messages while it lives, staging exactly the rest."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest

from preview_stack import queue_prep
from testbed import Testbed, images
from testbed import node as real_node
from testbed.brokers import Brokers
from tests.support.brokers import Producer, Sent, bindings_from, drain, queue_exists
from tests.support.cli import Cli
from tests.support.kube import apply
from tests.support.polling import wait_until
from tests.support.workloads import deployment

pytestmark = pytest.mark.cluster

EXCHANGE, ROUTING_KEY = "shop", "orders"
# The keeper's round is POLL_SECONDS: a removed key's queue goes within two rounds, plus
# the time to see the split ConfigMap deleted. The README states this bound.
GC_BOUND_SECONDS = 2 * queue_prep.POLL_SECONDS + 10


@pytest.fixture(scope="module")
def built(testbed: Testbed) -> dict[str, str]:
    if not testbed.real_node:
        pytest.skip("needs the real node (PREVIEW_ENV_REAL_NODE=0)")
    made = {"tools": images.reaper(testbed.toolchain), "client": images.broker_client()}
    for image in made.values():
        real_node.import_image(testbed.state_dir, image)
    return {name: image.name for name, image in made.items()}


def consumer(namespace: str, image: str, queue: str, report: str) -> dict[str, Any]:
    """Staging's consumer of `queue` (QUEUE), the target every preview copies."""
    container = {
        "name": "app",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["consume", "--url-env", "AMQP_URL", "--queue-env", "QUEUE", "--report", report],
        "env": [
            {"name": "QUEUE", "value": queue},
            {"name": "AMQP_URL", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "url"}}},
        ],
    }
    pod = {**real_node.pod_placement(), "terminationGracePeriodSeconds": 5}
    return deployment("orders", namespace, [container], pod=pod)


def config(tmp: Path, namespace: str) -> str:
    path = tmp / "split.json"
    path.write_text(
        json.dumps(
            {
                "target": {"path": "deployment/orders", "namespace": namespace},
                "feature": {
                    "preview": {"creation_timeout_secs": 240},
                    "split_queues": {
                        "orders": {
                            "queue_type": "RMQ",
                            "message_filter": {"mirrord-session": "{{ key }}"},
                        }
                    },
                },
            }
        )
    )
    return str(path)


def broker_setup(url: str, queue: str, report: str) -> None:
    """Staging's topology: producers publish to exchange shop, bound to the queue."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, exchange_type="direct", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, EXCHANGE, routing_key=ROUTING_KEY)
    channel.queue_declare(report, durable=True)
    connection.close()


def test_split_queue_end_to_end(
    cli: Cli,
    testbed: Testbed,
    brokers: Brokers,
    namespace: str,
    built: dict[str, str],
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:6]
    queue, report = f"orders-{run}", f"report-{run}"
    key_a, key_b = f"qa-{run}", f"qb-{run}"
    url = brokers.rabbitmq_url
    broker_setup(url, queue, report)
    apply(
        testbed,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "broker", "namespace": namespace},
            "stringData": {"url": os.environ["PREVIEW_ENV_RABBITMQ_POD_URL"]},
        },
        consumer(namespace, built["client"], queue, report),
    )
    testbed.kubectl("-n", namespace, "rollout", "status", "deploy/orders", "--timeout=180s")
    env = {"PREVIEW_ENV_QUEUE_IMAGE": built["tools"]}
    prepare = (
        "queues", "prepare", "orders", "-t", "deployment/orders", "-n", namespace,
        "--type", "rmq", "--env", "QUEUE", "--url-from", "broker:url",
    )  # fmt: skip

    # A queue fed by the default exchange only: refused in one line, nothing created.
    refused = cli(*prepare, env=env)
    assert refused.code == 2, refused.stderr
    assert refused.stderr.strip() == (
        f"error: queue '{queue}' is fed by the default exchange only, which RabbitMQ cannot "
        "reroute: publish through a named exchange bound to the queue and pass "
        "--exchange E --routing-key RK"
    )
    assert cli("queues", "list", "-n", namespace, "-o", "json").json() == []

    producer = Producer(url, EXCHANGE, ROUTING_KEY, [key_a, key_b, None, None]).start()
    marks: dict[str, float] = {}
    try:
        time.sleep(2)
        for _ in range(2):  # idempotent
            done = cli(*prepare, "--exchange", EXCHANGE, "--routing-key", ROUTING_KEY,
                       env=env, timeout=300)  # fmt: skip
            assert done.code == 0, done.stderr + done.stdout
        assert bindings_from(brokers, EXCHANGE) == [
            ("exchange", "preview-env.split.orders", ROUTING_KEY)
        ]
        assert ("queue", queue, "") in bindings_from(brokers, "preview-env.split.orders.staging")
        (listed,) = cli("queues", "list", "-n", namespace, "-o", "json").json()
        assert (listed["state"], listed["source"], listed["type"]) == ("prepared", queue, "rmq")
        assert "amqp" not in json.dumps(listed) and "testbed:testbed" not in done.stdout

        started = cli("start", "-f", config(tmp_path, namespace), "-i", built["client"],
                      "-k", key_a, "--routing", "none", env=env, timeout=600)  # fmt: skip
        assert started.code == 0, started.stderr + started.stdout
        marks["a_ready"] = time.monotonic()
        started = cli("start", "-f", config(tmp_path, namespace), "-i", built["client"],
                      "-k", key_b, "--routing", "none", "--ttl", "90s",
                      env=env, timeout=600)  # fmt: skip
        assert started.code == 0, started.stderr + started.stdout
        marks["b_ready"] = time.monotonic()
        time.sleep(8)

        status = cli("status", "-k", key_a, "-o", "json")
        (split,) = status.json()[0]["splits"]
        assert split["key_queue"] == f"{queue}.preview-env.{key_a}"
        assert split["filter"] == {"mirrord-session": key_a}
        assert split["state"] == "split" and isinstance(split["waiting"], int), split
        text = cli("status", "-k", key_a).stdout
        assert f"split queue orders of {key_a}: {queue} -> {queue}.preview-env.{key_a}" in text

        busy = cli("queues", "unprepare", "orders", "-n", namespace)
        assert busy.code == 2 and key_a in busy.stderr and key_b in busy.stderr, busy.stderr

        marks["a_clean"] = time.monotonic()
        cleaned = cli("clean", "-k", key_a)
        assert cleaned.code == 0, cleaned.stderr
        marks["a_cleaned"] = time.monotonic()
        assert wait_until(
            lambda: not queue_exists(brokers, f"{queue}.preview-env.{key_a}"),
            timeout=GC_BOUND_SECONDS,
        ), f"key queue of {key_a} still there {GC_BOUND_SECONDS}s after clean"
        marks["a_gone"] = time.monotonic()

        def reap(*args: str) -> dict[str, str]:
            result = cli("reap", "--output", "json", *args)
            return {r["key"]: r["outcome"] for r in json.loads(result.stdout)["results"]}

        # B's TTL runs out while it keeps consuming; then one reaper round removes it.
        assert wait_until(lambda: reap("--dry-run").get(key_b) == "would-reap", timeout=240)
        marks["b_reap"] = time.monotonic()
        assert reap().get(key_b) == "reaped"
        marks["b_reaped"] = time.monotonic()
        assert wait_until(
            lambda: not queue_exists(brokers, f"{queue}.preview-env.{key_b}"),
            timeout=GC_BOUND_SECONDS,
        ), f"key queue of {key_b} still there {GC_BOUND_SECONDS}s after the reaper round"
        marks["b_gone"] = time.monotonic()
        time.sleep(3)

        undone = cli("queues", "unprepare", "orders", "-n", namespace, timeout=300)
        assert undone.code == 0, undone.stderr + undone.stdout
        time.sleep(3)
    finally:
        sent = producer.stop()
        cli("clean", "-k", key_a)
        cli("clean", "-k", key_b)
        cli("queues", "unprepare", "orders", "-n", namespace, timeout=300)

    assert bindings_from(brokers, EXCHANGE) == [("queue", queue, ROUTING_KEY)]
    assert not queue_exists(brokers, f"{queue}.preview-env.{key_a}")
    assert cli("queues", "list", "-n", namespace, "-o", "json").json() == []
    got: list[str] = []

    def all_reported() -> bool:
        got.extend(drain(url, report))
        return len(got) >= len(sent)

    assert wait_until(all_reported, timeout=120), f"{len(got)} of {len(sent)} reported"
    time.sleep(3)
    got.extend(drain(url, report))
    check_counts(sent, got, queue, key_a, key_b, marks)


def check_counts(
    sent: list[Sent], got: list[str], queue: str, key_a: str, key_b: str, marks: dict[str, float]
) -> None:
    by_id = {s.id: s for s in sent}
    counts = Counter(int(line.split()[1]) for line in got)
    assert not [i for i, n in counts.items() if n > 1], "duplicated"
    assert set(counts) == set(by_id), f"lost: {sorted(set(by_id) - set(counts))[:20]}"
    where = {int(line.split()[1]): line.split()[0] for line in got}
    windows = {key_a: ("a_ready", "a_clean", "a_gone"), key_b: ("b_ready", "b_reap", "b_gone")}
    seen: Counter[str] = Counter()
    for s in sent:
        came_from = where[s.id]
        if s.key is None:
            assert came_from == queue, (s, came_from)
            continue
        own = f"{queue}.preview-env.{s.key}"
        ready, leaving, gone = (marks[m] for m in windows[s.key])
        assert came_from in (queue, own), (s, came_from)  # never another key's queue
        if s.before >= ready and s.after < leaving:
            assert came_from == own, (s, came_from)
            seen[s.key] += 1
        if s.before >= gone:
            assert came_from == queue, (s, came_from)
    assert seen[key_a] > 0 and seen[key_b] > 0, seen
    print(
        f"split queue e2e: {len(sent)} sent, received by queue {dict(Counter(where.values()))}, "
        f"in the keys' live windows {dict(seen)}, key queue gone "
        f"{marks['a_gone'] - marks['a_cleaned']:.1f}s after clean returned, "
        f"{marks['b_gone'] - marks['b_reaped']:.1f}s after the reaper round returned"
    )
