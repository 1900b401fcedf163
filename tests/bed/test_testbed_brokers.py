"""The bed's real brokers (testbed.brokers): Debian's RabbitMQ with its management plugin
and Kafka 4 in KRaft mode, on 127.0.0.1, reached from the host and from a pod on the real
node, started only when asked, and gone with the bed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from testbed import Testbed, images
from testbed import brokers as bed_brokers
from testbed import node as real_node
from testbed.brokers import Brokers
from tests.support.bed import gone, testbed_cli
from tests.support.polling import wait_until

pytestmark = pytest.mark.cluster
BROKER_PROCESSES = ("rabbitmq", "rabbitmq-epmd", "kafka")


# ------------------------------------------------------------------------------ clients
def rabbitmq_publish(url: str, queue: str, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue=queue)
        channel.confirm_delivery()  # the broker has it when basic_publish returns
        channel.basic_publish(exchange="", routing_key=queue, body=body)
    finally:
        connection.close()


def rabbitmq_get(url: str, queue: str, timeout: float = 30.0) -> bytes | None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue=queue)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _method, _props, body = channel.basic_get(queue=queue, auto_ack=True)
            if body is not None:
                return bytes(body)
            time.sleep(0.2)
        return None
    finally:
        connection.close()


def kafka_produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        producer.send(topic, value).get(timeout=30)
    finally:
        producer.close()


def kafka_first(bootstrap: str, topic: str, timeout: float = 30.0) -> bytes | None:
    """The first record of partition 0 of `topic`, read from the beginning."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partition = TopicPartition(topic, 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if partition.partition in (consumer.partitions_for_topic(topic) or set()):
                break
            time.sleep(0.2)  # the topic is created by the first producer (auto-create)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                return bytes(records[0].value)
        return None
    finally:
        consumer.close()


def management(brokers: Brokers, path: str) -> Any:
    request = urllib.request.Request(f"{brokers.management_url}{path}")
    token = base64.b64encode(f"{bed_brokers.USER}:{bed_brokers.PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def listeners(pids: set[int]) -> list[str]:
    """Local addresses these processes listen on (TCP)."""
    if shutil.which("ss") is None:
        pytest.fail("ss (iproute2) is needed to check listeners")
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [
        line.split()[3] for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)
    ]


def descendants(pids: set[int]) -> set[int]:
    """These processes and every process below them (erl_child_setup, inet_gethost...)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found = set(pids)
    grew = True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return found


# ------------------------------------------------------------------------------- tests
def test_brokers_serve_the_host_on_loopback_only(testbed: Testbed, brokers: Brokers) -> None:
    assert os.environ["PREVIEW_ENV_RABBITMQ_URL"] == brokers.rabbitmq_url
    assert os.environ["PREVIEW_ENV_KAFKA_BOOTSTRAP"] == f"127.0.0.1:{brokers.kafka_port}"
    name = f"host-{uuid.uuid4().hex[:6]}"

    rabbitmq_publish(brokers.rabbitmq_url, name, b"hello rabbit")
    queue = management(brokers, f"/api/queues/%2F/{name}")  # the management plugin serves
    assert queue["name"] == name and queue["vhost"] == "/"
    assert rabbitmq_get(brokers.rabbitmq_url, name) == b"hello rabbit"
    overview = management(brokers, "/api/overview")
    assert overview["rabbitmq_version"].startswith("3.")
    assert overview["node"] == "rabbit-testbed@localhost"

    kafka_produce(brokers.kafka_bootstrap, name, b"hello kafka")
    assert kafka_first(brokers.kafka_bootstrap, name) == b"hello kafka"

    pids = {p.pid for p in testbed.processes if p.name in BROKER_PROCESSES}
    assert len(pids) == 3
    addresses = listeners(pids)
    ports = {brokers.rabbitmq_port, brokers.management_port, brokers.kafka_port}
    assert ports <= {int(a.rsplit(":", 1)[1]) for a in addresses}
    # epmd also listens on IPv6's loopback; nothing listens on any other address.
    assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in addresses), addresses


@pytest.fixture
def namespace(testbed: Testbed) -> Iterator[str]:
    assert testbed.real_node, "the pod runs on the real node (PREVIEW_ENV_REAL_NODE=0)"
    name = f"brokers-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        testbed.kubectl("delete", "namespace", name, "--wait=false")


def test_a_pod_on_the_real_node_consumes_and_produces_on_both(
    testbed: Testbed, brokers: Brokers, namespace: str
) -> None:
    image = images.broker_client()
    real_node.import_image(testbed.state_dir, image)
    name = f"pod-{uuid.uuid4().hex[:6]}"
    rabbitmq_publish(brokers.rabbitmq_url, f"{name}-in", b"from the host")
    kafka_produce(brokers.kafka_bootstrap, f"{name}-in", b"from the host")
    pod_url = os.environ["PREVIEW_ENV_RABBITMQ_POD_URL"]
    pod_bootstrap = os.environ["PREVIEW_ENV_KAFKA_POD_BOOTSTRAP"]
    assert pod_url == f"amqp://testbed:testbed@10.88.0.1:{brokers.rabbitmq_port}/%2F"
    assert pod_bootstrap == f"10.88.0.1:{brokers.kafka_pod_port}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "broker-client", "namespace": namespace},
        "spec": {
            **real_node.pod_placement(),
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "client",
                    "image": image.name,
                    "imagePullPolicy": "Never",
                    "args": [
                        "roundtrip",
                        f"--rabbitmq={pod_url}",
                        f"--kafka={pod_bootstrap}",
                        f"--name={name}",
                        "--timeout=60",
                    ],
                }
            ],
        },
    }
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(pod))

    def phase() -> str:
        return testbed.kubectl(
            "get", "pod", "broker-client", "-n", namespace, "-o", "jsonpath={.status.phase}"
        )

    assert wait_until(lambda: phase() in ("Succeeded", "Failed"), timeout=90), phase()
    logs = testbed.kubectl("logs", "broker-client", "-n", namespace)
    assert phase() == "Succeeded", logs
    assert f"rabbitmq: got 'from the host' from queue {name}-in" in logs
    assert f"kafka: got 'from the host' from topic {name}-in" in logs
    assert rabbitmq_get(brokers.rabbitmq_url, f"{name}-out") == b"pod got: from the host"
    assert kafka_first(brokers.kafka_bootstrap, f"{name}-out") == b"pod got: from the host"


def test_up_with_brokers_env_file_and_down_leave_nothing(tmp_path: Path, testbed: Testbed) -> None:
    assert testbed.real_node, "the pod variables need the real node (PREVIEW_ENV_REAL_NODE=0)"
    state = tmp_path / "bed"
    up = testbed_cli("up", "--brokers", "--state", str(state), timeout=300)
    pids: set[int] = set()
    try:
        assert up.returncode == 0, up.stderr
        processes = json.loads((state / "pids.json").read_text())
        pids = {p["pid"] for p in processes}
        names = {p["name"] for p in processes}
        assert set(BROKER_PROCESSES) <= names
        broker_pids = {p["pid"] for p in processes if p["name"] in BROKER_PROCESSES}
        pids |= descendants(broker_pids)  # the Erlang VM's helpers too
        variables = (
            "PREVIEW_ENV_RABBITMQ_URL",
            "PREVIEW_ENV_RABBITMQ_POD_URL",
            "PREVIEW_ENV_KAFKA_BOOTSTRAP",
            "PREVIEW_ENV_KAFKA_POD_BOOTSTRAP",
        )
        shell = f"source {state}/env && " + " && ".join(f"echo ${v}" for v in variables)
        out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True)
        url, pod_url, bootstrap, pod_bootstrap = out.stdout.split()
        assert url.startswith("amqp://testbed:testbed@127.0.0.1:")
        assert pod_url.startswith("amqp://testbed:testbed@10.88.0.1:")
        assert bootstrap.startswith("127.0.0.1:") and pod_bootstrap.startswith("10.88.0.1:")
        rabbitmq_publish(url, "up", b"one")
        assert rabbitmq_get(url, "up") == b"one"
        kafka_produce(bootstrap, "up", b"two")
        assert kafka_first(bootstrap, "up") == b"two"
        addresses = listeners(broker_pids)
        assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in addresses), addresses
    finally:
        down = testbed_cli("down", "--state", str(state), timeout=120)
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    left = sorted(pid for pid in pids if not gone(pid))
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
    assert not real_node.Paths.of(state).netns.exists()
