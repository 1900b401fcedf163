"""Benchmark: messages per second through a split RabbitMQ queue against the same broker
unsplit, in one run.

    python -m testbed up --brokers && source .testbed/env     (or any RabbitMQ you own)
    .venv/bin/python bench/bench_queues.py [--messages 20000] [--runs 3] [--keys 10]

Two topologies on the broker at $PREVIEW_ENV_RABBITMQ_URL (or --url), declared fresh:
- unsplit: a producer exchange (direct) bound to the queue, as staging has it;
- split: the same, prepared by preview-env's RabbitMQ plug-in (adapters.queues.rabbitmq:
  headers exchange, alternate exchange into the queue) with `--keys` key queues bound,
  each matching one key; one message in four carries one of the keys' header, the rest
  carry another key's (no binding) or none, so most fall through to staging's queue.
Each run publishes `--messages` messages, each confirmed by the broker before the next
(a careful producer's pace), while one consumer connection takes them from every queue
(prefetch 200); throughput is messages consumed over the time from the first publish to
the last delivery. One unmeasured warm-up run of each, then runs alternate unsplit/split;
the medians and their ratio are printed as a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import pika

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters.queues.rabbitmq import RabbitBroker  # noqa: E402
from preview_stack import queue_prep  # noqa: E402
from preview_stack.queue_prep import Preparation  # noqa: E402

HEADER = "mirrord-session"


def consume(url: str, queues: list[str], total: int, done: threading.Event, got: list[int]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=200)

    def on_message(ch: object, method: object, _props: object, _body: bytes) -> None:
        got[0] += 1
        channel.basic_ack(method.delivery_tag, multiple=False)  # type: ignore[attr-defined]
        if got[0] >= total:
            channel.stop_consuming()

    for queue in queues:
        channel.basic_consume(queue, on_message)
    done.set()
    channel.start_consuming()
    connection.close()


def one_run(url: str, messages: int, keys: int, split: bool) -> float:
    run = uuid.uuid4().hex[:6]
    exchange, queue = f"bench-x-{run}", f"bench-q-{run}"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(exchange, exchange_type="direct")
    channel.queue_declare(queue)
    channel.queue_bind(queue, exchange, routing_key="orders")
    queues = [queue]
    broker = None
    prep = Preparation(
        id=f"bench-{run}", namespace="bench", type="rmq", source=queue,
        exchange=exchange, routing_key="orders",
    )  # fmt: skip
    if split:
        broker = RabbitBroker(prep, url)
        broker.prepare()
        for k in range(keys):
            s = queue_prep.key_split(prep, f"key-{k}", {HEADER: f"key-{k}"}, "steal")
            broker.bind(s)
            queues.append(s.queue)
    got = [0]
    ready = threading.Event()
    thread = threading.Thread(target=consume, args=(url, queues, messages, ready, got))
    thread.start()
    ready.wait()
    channel.confirm_delivery()
    started = time.monotonic()
    for n in range(messages):
        pick = n % 8
        headers = {HEADER: f"key-{n % keys}"} if pick < 2 else {}
        if pick == 2:
            headers = {HEADER: "no-such-key"}
        channel.basic_publish(exchange, "orders", b"x" * 64, pika.BasicProperties(headers=headers))
    thread.join(timeout=600)
    elapsed = time.monotonic() - started
    assert got[0] == messages, f"{got[0]} of {messages} consumed"
    if broker is not None:
        broker.unprepare()
        for q in queues[1:]:
            channel.queue_delete(q)
        broker.close()
    channel.queue_delete(queue)
    channel.exchange_delete(exchange)
    connection.close()
    return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("PREVIEW_ENV_RABBITMQ_URL"))
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=10)
    args = parser.parse_args()
    if not args.url:
        sys.exit("no broker: pass --url or set PREVIEW_ENV_RABBITMQ_URL")
    plain: list[float] = []
    split: list[float] = []
    one_run(args.url, max(args.messages // 10, 100), args.keys, split=False)  # warm-up
    one_run(args.url, max(args.messages // 10, 100), args.keys, split=True)
    for _ in range(args.runs):
        plain.append(one_run(args.url, args.messages, args.keys, split=False))
        split.append(one_run(args.url, args.messages, args.keys, split=True))
        print(f"unsplit {plain[-1]:.0f}/s, split {split[-1]:.0f}/s", file=sys.stderr)
    p, s = statistics.median(plain), statistics.median(split)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"messages {args.messages}, runs {args.runs}, key queues {args.keys}\n")
    print("| measurement | messages/s (median) |")
    print("| --- | --- |")
    print(f"| unsplit queue (exchange -> queue) | {p:.0f} |")
    shape = f"exchange -> headers exchange -> AE -> queue, {args.keys} key queues"
    print(f"| split queue ({shape}) | {s:.0f} |")
    print(f"| ratio split / unsplit | {s / p:.2f} |")


if __name__ == "__main__":
    main()
