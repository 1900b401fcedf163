"""Benchmark: records per second through a split Kafka topic (preview-env's splitter)
against the same broker unsplit, in one run.

    python -m testbed up --brokers && source .testbed/env     (or any Kafka you own)
    .venv/bin/python bench/bench_kafka_split.py [--records 20000] [--runs 3] [--keys 10]

Topics are created fresh on $PREVIEW_ENV_KAFKA_BOOTSTRAP (or --bootstrap), 3 partitions:
- unsplit: the producer writes the topic, staging's consumer (a group) reads it;
- split: the producer writes the source topic, preview-env's Kafka plug-in
  (adapters.queues.kafka: its splitter thread in the consumer's group, acks=all, a batch
  committed after its records are acknowledged), in a process of its own as in the keeper
  pod, routes each record by header to one of
  `--keys` key topics or to the staging topic, and one consumer in the group reads staging
  and every key topic. One record in four carries one of the keys' header, one in eight a
  key with no split, the rest none.
The producer sends `--records` records of 64 bytes (acks=all, batched by the client) as
fast as it can; throughput is records consumed over the time from the first send to the
last record received. One unmeasured warm-up run of each, then runs alternate
unsplit/split; the medians and their ratio are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters.queues.kafka import KafkaBroker, poll_ms  # noqa: E402
from preview_stack import kafka_split, queue_prep  # noqa: E402
from preview_stack.queue_prep import Preparation  # noqa: E402

HEADER = "mirrord-session"
PARTITIONS = 3


def create(bootstrap: str, *topics: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {t: {"num_partitions": PARTITIONS, "replication_factor": 1} for t in topics},
            wait_for_metadata=True,
        )
    finally:
        admin.close()


def consume(bootstrap: str, topics: list[str], group: str, total: int, out: dict[str, float],
            ready: threading.Event) -> None:  # fmt: skip
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
    )
    consumer.subscribe(topics)
    got = 0
    deadline = time.monotonic() + 600
    while got < total and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=poll_ms(consumer))
        if consumer.assignment():
            ready.set()
        got += sum(len(r) for r in batch.values())
    out["last"] = time.monotonic()
    out["got"] = got
    consumer.close()


def produce(bootstrap: str, topic: str, total: int, keys: list[str]) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    body = b"x" * 64
    first = time.monotonic()
    for n in range(total):
        if n % 4 == 0:
            headers = [(HEADER, keys[(n // 4) % len(keys)].encode())]
        elif n % 8 == 1:
            headers = [(HEADER, b"no-such-key")]
        else:
            headers = []
        producer.send(topic, value=body, headers=headers)
    producer.flush()
    producer.close()
    return first


def unsplit(bootstrap: str, total: int, keys: list[str]) -> float:
    topic, group = f"bench-{uuid.uuid4().hex[:8]}", f"bench-app-{uuid.uuid4().hex[:8]}"
    create(bootstrap, topic)
    out: dict[str, float] = {}
    ready = threading.Event()
    reader = threading.Thread(target=consume, args=(bootstrap, [topic], group, total, out, ready))
    reader.start()
    ready.wait(60)
    first = produce(bootstrap, topic, total, keys)
    reader.join()
    assert out["got"] >= total, out
    return total / (out["last"] - first)


def splitter(bootstrap: str, source: str, group: str, keys: list[str], ready: Any,
             stop: Any) -> None:  # fmt: skip
    """The keeper's side, in a process of its own (as the keeper pod is)."""
    prep = Preparation(id="bench", namespace="-", type="kafka", source=source, group=group)
    broker = KafkaBroker(prep, bootstrap)
    try:
        broker.prepare()
        splits = [queue_prep.key_split(prep, k, {HEADER: f"^{k}$"}, "steal") for k in keys]
        broker.reconcile(splits, [])
        ready.set()
        stop.wait(600)
    finally:
        broker.close()


def split(bootstrap: str, total: int, keys: list[str]) -> float:
    source, group = f"bench-{uuid.uuid4().hex[:8]}", f"bench-app-{uuid.uuid4().hex[:8]}"
    create(bootstrap, source)
    context = multiprocessing.get_context("spawn")
    up, stop = context.Event(), context.Event()
    keeper = context.Process(target=splitter, args=(bootstrap, source, group, keys, up, stop))
    keeper.start()
    try:
        assert up.wait(120), "the splitter did not start"
        wanted = [
            kafka_split.staging_topic(source),
            *(kafka_split.key_topic(source, k) for k in keys),
        ]
        out: dict[str, float] = {}
        ready = threading.Event()
        reader = threading.Thread(
            target=consume, args=(bootstrap, wanted, group, total, out, ready)
        )
        reader.start()
        ready.wait(60)
        first = produce(bootstrap, source, total, keys)
        reader.join()
        assert out["got"] >= total, out
        return total / (out["last"] - first)
    finally:
        stop.set()
        keeper.join(60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default=os.environ.get("PREVIEW_ENV_KAFKA_BOOTSTRAP"))
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=10)
    args = parser.parse_args()
    if not args.bootstrap:
        parser.error("--bootstrap or $PREVIEW_ENV_KAFKA_BOOTSTRAP")
    keys = [f"k{i}" for i in range(args.keys)]
    unsplit(args.bootstrap, 2000, keys)  # warm-up
    split(args.bootstrap, 2000, keys)
    plain, through = [], []
    for _ in range(args.runs):
        plain.append(unsplit(args.bootstrap, args.records, keys))
        through.append(split(args.bootstrap, args.records, keys))
        print(f"unsplit {plain[-1]:.0f}/s, split {through[-1]:.0f}/s", file=sys.stderr)
    a, b = statistics.median(plain), statistics.median(through)
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, {args.records} records")
    print(f"| measurement | records/s (median of {args.runs}) |")
    print("| --- | --- |")
    print(f"| unsplit topic (producer -> topic -> consumer) | {a:.0f} |")
    print(f"| split topic (producer -> source -> splitter -> staging/{args.keys} key topics "
          f"-> consumer) | {b:.0f} |")  # fmt: skip
    print(f"| ratio split / unsplit | {b / a:.2f} |")
    print("runs: unsplit " + ", ".join(f"{x:.0f}" for x in plain)
          + "; split " + ", ".join(f"{x:.0f}" for x in through))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
