"""Real message brokers for the queue-splitting tests: RabbitMQ and Apache Kafka.

Started only when asked (`Testbed(brokers=True)`, `Testbed.start_brokers()`, `python -m
testbed up --brokers`, the pytest `brokers` fixture), as processes of the bed, on 127.0.0.1
only, with their data in `<bed state>/brokers` (thrown away with the bed):

- RabbitMQ: Debian's `rabbitmq-server` (3.10 on bookworm) with its management plugin, run
  by its own start script (`RUNNING_UNDER_SYSTEMD` makes it exec the Erlang VM, so the PID
  the bed records is the broker's). Erlang's port mapper (epmd) is a process of the bed
  too, on a port of its own (`ERL_EPMD_PORT`), so no daemon outlives the bed; the node's
  distribution port, AMQP and the management API listen on 127.0.0.1. One user,
  `testbed`/`testbed`, administrator of the vhost `/`.
- Kafka 4.x in KRaft mode (one process, broker and controller): the jars of
  `org.apache.kafka:kafka_2.13` resolved from Maven Central into the toolchain cache by
  `scripts/toolchain/build.sh kafka`, run by Debian's Java. Its storage is formatted here
  (`kafka.tools.StorageTool format`) with a fresh cluster id. Two client listeners:
  `HOST` (127.0.0.1:P, advertised as is) and, with a real node, `POD` (127.0.0.1:Q,
  advertised as `10.88.0.1:Q`): a Kafka client connects to the addresses the broker
  advertises, so pods need a listener that names the relay's end on the node's bridge.

Pods on the real node reach both through relays (`testbed.node.relay_to_pods`): the bridge
gateway 10.88.0.1 at the same port numbers. The variables (`environment()`):
PREVIEW_ENV_RABBITMQ_URL / _POD_URL (amqp://), PREVIEW_ENV_RABBITMQ_MANAGEMENT_URL
(http://, host only), PREVIEW_ENV_KAFKA_BOOTSTRAP / _POD_BOOTSTRAP (host:port).
"""

from __future__ import annotations

import base64
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from testbed import node

LOOPBACK = "127.0.0.1"
USER = PASSWORD = "testbed"
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # not the su wrapper
EPMD = "epmd"
# How long the bed waits for each broker's own shutdown before SIGKILL (data is throwaway;
# RabbitMQ's orderly stop takes about 7 s, Kafka's about 1 s).
STOP_GRACE = {"rabbitmq": 1.0, "rabbitmq-epmd": 1.0, "kafka": 5.0}
KAFKA_JVM = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:-UsePerfData",  # no /tmp/hsperfdata_<user>/<pid> left behind by a SIGKILL
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",  # listen on 127.0.0.1 itself, not ::ffff:127.0.0.1
)


@dataclass(frozen=True)
class Brokers:
    """Where the brokers listen: from the host, and from pods on the real node (empty
    without one)."""

    rabbitmq_port: int
    management_port: int
    kafka_port: int
    kafka_pod_port: int  # 0 without a real node
    pod_host: str  # the relay's end for pods, "" without a real node
    # Seconds from the start of start() until each served (rabbitmq, kafka, relays).
    ready_after: tuple[tuple[str, float], ...] = field(default=(), compare=False)

    @property
    def rabbitmq_url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@{LOOPBACK}:{self.rabbitmq_port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://{LOOPBACK}:{self.management_port}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.kafka_port}"

    def environment(self) -> dict[str, str]:
        env = {
            "PREVIEW_ENV_RABBITMQ_URL": self.rabbitmq_url,
            "PREVIEW_ENV_RABBITMQ_MANAGEMENT_URL": self.management_url,
            "PREVIEW_ENV_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
        }
        if self.pod_host:
            env["PREVIEW_ENV_RABBITMQ_POD_URL"] = (
                f"amqp://{USER}:{PASSWORD}@{self.pod_host}:{self.rabbitmq_port}/%2F"
            )
            env["PREVIEW_ENV_KAFKA_POD_BOOTSTRAP"] = f"{self.pod_host}:{self.kafka_pod_port}"
        return env


def start(
    bed: node.Bed,
    kafka_libs: Path,
    deadline: float,
    *,
    real_node: bool,
    free_port: Callable[[], int],
) -> Brokers:
    """Start RabbitMQ and Kafka (and, with a real node, their relays to pods) through
    `bed`; return once both serve clients."""
    missing = [str(p) for p in (RABBITMQ_SERVER,) if not p.exists()]
    missing += [name for name in ("java", EPMD) if shutil.which(name) is None]
    if missing or not kafka_libs.is_dir():
        raise RuntimeError(
            f"brokers need {', '.join(missing) or kafka_libs}: run "
            "scripts/toolchain/system-packages.sh (rabbitmq-server, a JDK) and "
            "scripts/toolchain/build.sh kafka"
        )
    data = bed.state_dir / "brokers"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    ports = Brokers(
        rabbitmq_port=free_port(),
        management_port=free_port(),
        kafka_port=free_port(),
        kafka_pod_port=free_port() if real_node else 0,
        pod_host=node.GATEWAY if real_node else "",
    )
    started = time.monotonic()
    ready: dict[str, float] = {}

    def served(name: str, check: Callable[[], bool]) -> Callable[[], bool]:
        def probe() -> bool:
            if name not in ready and check():
                ready[name] = time.monotonic() - started
            return name in ready

        return probe

    kafka = served("kafka", lambda: _kafka_answers(ports.kafka_port))
    rabbitmq = served("rabbitmq", lambda: _rabbitmq_alive(ports.management_port))
    # Both start before either is waited for: their start-ups overlap (RabbitMQ's is the
    # longer one, so it goes first), and each is polled while waiting for the other.
    _spawn_rabbitmq(bed, data / "rabbitmq", ports, deadline, free_port(), free_port())
    _spawn_kafka(bed, data / "kafka", kafka_libs, ports, free_port())
    bed._wait("rabbitmq and kafka", deadline, lambda: all([kafka(), rabbitmq()]))
    if ports.kafka_pod_port:
        bed._wait("kafka (pod listener)", deadline, lambda: _kafka_answers(ports.kafka_pod_port))
    if real_node:
        node.relay_to_pods(bed, ports.rabbitmq_port, deadline)
        node.relay_to_pods(bed, ports.kafka_pod_port, deadline)
        ready["relays"] = time.monotonic() - started
    return replace(ports, ready_after=tuple(ready.items()))


# ------------------------------------------------------------------------------ RabbitMQ
def _spawn_rabbitmq(
    bed: node.Bed, data: Path, ports: Brokers, deadline: float, epmd: int, dist: int
) -> None:
    home, mnesia, logs = data / "home", data / "mnesia", data / "log"
    for d in (home, mnesia, logs):
        d.mkdir(parents=True)
    config = data / "rabbitmq.conf"
    config.write_text(
        f"listeners.tcp.1 = {LOOPBACK}:{ports.rabbitmq_port}\n"
        f"management.tcp.ip = {LOOPBACK}\n"
        f"management.tcp.port = {ports.management_port}\n"
        f"default_user = {USER}\n"
        f"default_pass = {PASSWORD}\n"
        "default_user_tags.administrator = true\n"
        # Pods arrive through the bed's relay, from 127.0.0.1 too; say it anyway.
        "loopback_users = none\n"
    )
    plugins = data / "enabled_plugins"
    plugins.write_text("[rabbitmq_management].\n")
    env_file = data / "rabbitmq-env.conf"  # instead of /etc/rabbitmq/rabbitmq-env.conf
    env_file.write_text("")
    epmd_env = {"ERL_EPMD_PORT": str(epmd), "ERL_EPMD_ADDRESS": LOOPBACK}
    bed._spawn("rabbitmq-epmd", [EPMD, "-address", LOOPBACK, "-port", str(epmd)], epmd_env)
    bed._wait("epmd", deadline, lambda: _tcp_accepts(epmd))
    env = {
        **epmd_env,
        "HOME": str(home),  # the Erlang cookie
        "RUNNING_UNDER_SYSTEMD": "true",  # exec the VM: no signal-forwarding shell between
        "RABBITMQ_CONF_ENV_FILE": str(env_file),
        "RABBITMQ_NODENAME": "rabbit-testbed@localhost",
        "RABBITMQ_CONFIG_FILE": str(config),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        "RABBITMQ_MNESIA_BASE": str(mnesia),
        "RABBITMQ_LOG_BASE": str(logs),
        "RABBITMQ_LOGS": "-",  # to the bed's log file
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
            "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
        ),
    }
    bed._spawn("rabbitmq", [str(RABBITMQ_SERVER)], env)


def _rabbitmq_alive(port: int) -> bool:
    """The management API's aliveness test: a declare, publish and get on vhost `/`."""
    request = urllib.request.Request(f"http://{LOOPBACK}:{port}/api/aliveness-test/%2F")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=3) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------------- Kafka
def _spawn_kafka(bed: node.Bed, data: Path, libs: Path, ports: Brokers, controller: int) -> None:
    logs, tmp = data / "data", data / "tmp"
    for d in (logs, tmp):
        d.mkdir(parents=True)
    listeners = [f"HOST://{LOOPBACK}:{ports.kafka_port}"]
    advertised = [f"HOST://{LOOPBACK}:{ports.kafka_port}"]
    if ports.kafka_pod_port:
        listeners.append(f"POD://{LOOPBACK}:{ports.kafka_pod_port}")
        advertised.append(f"POD://{ports.pod_host}:{ports.kafka_pod_port}")
    listeners.append(f"CONTROLLER://{LOOPBACK}:{controller}")
    properties = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller}",
        "controller.listener.names": "CONTROLLER",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "listener.security.protocol.map": "HOST:PLAINTEXT,POD:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "HOST",
        "log.dirs": str(logs),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
    }
    config = data / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    java = [
        "java",
        *KAFKA_JVM,
        f"-Djava.io.tmpdir={tmp}",  # zstd-jni and snappy unpack their native libraries
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-cp",
        f"{libs}/*",
    ]
    # A fresh cluster id, formatted in the foreground (about 1 s of JVM; C1 alone: a
    # short-lived JVM gains nothing from C2 but its compile threads' CPU).
    cluster_id = _kafka_uuid()
    tool = [*java[:1], "-XX:TieredStopAtLevel=1", *java[1:], "kafka.tools.StorageTool"]
    formatted = subprocess.run(
        [*tool, "format", "-t", cluster_id, "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if formatted.returncode != 0:
        raise RuntimeError(f"kafka storage format failed: {formatted.stderr.strip()[-1000:]}")
    bed._spawn("kafka", [*java, "kafka.Kafka", str(config)])


def _kafka_uuid() -> str:
    """A Kafka Uuid as its tools print one: 16 random bytes, URL-safe base64, unpadded
    (Kafka avoids ids starting with '-', which look like options)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _kafka_answers(port: int) -> bool:
    """The broker processes requests: an ApiVersions (v0) round trip with no error. Its
    listeners accept connections only once start-up is done."""
    client = b"testbed"
    body = struct.pack(">hhih", 18, 0, 1, len(client)) + client
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            head = _read(sock, 4)
            size = struct.unpack(">i", head)[0]
            reply = _read(sock, size)
    except OSError:
        return False
    correlation, error = struct.unpack(">ih", reply[:6])
    return bool(correlation == 1 and error == 0)


def _read(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks += chunk
    return chunks


def _tcp_accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0
