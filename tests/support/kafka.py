"""Kafka from the host, for tests of split topics: a steady producer whose key mix the test
changes between phases, consumers in a group that record what they received, and the
topics the admin client sees."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from adapters.queues.kafka import complete_interrupted_joins, poll_ms

complete_interrupted_joins()  # the tests' consumers join the target's group too

HEADER = "mirrord-session"


def topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": 1}},
            wait_for_metadata=True,
        )
    finally:
        admin.close()


def commit_beginning(bootstrap: str, topic: str, group: str) -> None:
    """Commit offset 0 of every partition of `topic` for `group` (still empty), so its first
    consumer reads from the beginning whatever its `auto.offset.reset`."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(0, "", -1) for p in parts})
    finally:
        consumer.close(autocommit=False)


@dataclass
class Stream:
    """Produces to `topic` at `rate` records a second, each value its sequence number and
    its `HEADER` the next of `keys` (None: no header); acks=all, each send awaited. Set
    `keys` between phases; `sent` maps each number to its key."""

    bootstrap: str
    topic: str
    keys: list[str | None]
    rate: float = 100.0
    sent: dict[int, str | None] = field(default_factory=dict)
    times: dict[int, tuple[float, float]] = field(default_factory=dict)  # before, acked
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Stream:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        try:
            n = 0
            while not self._stop.is_set():
                keys = list(self.keys)
                key = keys[n % len(keys)] if keys else None
                headers = [(HEADER, key.encode())] if key else []
                before = time.monotonic()
                producer.send(self.topic, value=str(n).encode(), headers=headers).get(30)
                self.times[n] = (before, time.monotonic())
                self.sent[n] = key
                n += 1
                time.sleep(1 / self.rate)
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            producer.close()

    def switch(self, keys: list[str | None], timeout: float = 30.0) -> None:
        """Produce `keys` from now on: returns once a record of the new mix was acknowledged
        (so no record of the old mix is still in flight)."""
        self.keys = keys
        target = len(self.sent) + 2
        deadline = time.monotonic() + timeout
        while len(self.sent) < target and time.monotonic() < deadline and self.error is None:
            time.sleep(0.01)

    def ids(self, key: str | None) -> set[int]:
        return {n for n, k in list(self.sent.items()) if k == key}

    def stop(self) -> dict[int, str | None]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)
        if self.error is not None:
            raise self.error
        return dict(self.sent)


@dataclass
class Recorder:
    """A real consumer of `topic` in `group` (auto-commit, `auto.offset.reset` as given:
    `latest` is the harsh case for a hand-off), recording each value it received."""

    bootstrap: str
    topic: str
    group: str
    reset: str = "latest"
    received: list[int] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _assigned: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Recorder:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            auto_offset_reset=self.reset,
            enable_auto_commit=True,
            auto_commit_interval_ms=500,
        )
        try:
            consumer.subscribe([self.topic])
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=poll_ms(consumer)).values():
                    self.received.extend(int(r.value) for r in records)
                if consumer.assignment():
                    self._assigned.set()
        except BaseException as exc:
            self.error = exc
        finally:
            consumer.close(autocommit=True)  # commits what it received

    def wait_assigned(self, timeout: float = 60.0) -> None:
        assert self._assigned.wait(timeout), f"no partition of {self.topic} within {timeout}s"

    def stop(self) -> list[int]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)
        if self.error is not None:
            raise self.error
        return list(self.received)


def reports(bootstrap: str, topic: str, timeout: float = 10.0) -> list[tuple[str, int]]:
    """Every report on `topic` (`<topic> <value>`, as broker-client's consume-kafka
    writes them), read from the beginning until `timeout` passes without a new one."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(timeout * 1000),
    )
    try:
        found = []
        for record in consumer:
            where, value = record.value.decode().split()
            found.append((where, int(value)))
        return found
    finally:
        consumer.close()


def duplicates(values: list[int]) -> list[int]:
    return sorted(v for v, n in Counter(values).items() if n > 1)


def wait_received(recorders: list[Recorder], expected: set[int], timeout: float = 60.0) -> bool:
    """Until the recorders together hold every value of `expected` (False: the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if expected <= {v for r in recorders for v in r.received}:
            return True
        time.sleep(0.2)
    return False
