"""broker-client: the test bed's message broker client, the entry point of its image
(testbed.images.broker_client: the host's Python with pika and kafka-python from PyPI).

    client.py roundtrip --rabbitmq AMQP_URL --kafka BOOTSTRAP --name NAME [--timeout S]

takes the one message waiting on RabbitMQ queue NAME-in and the first record of Kafka
topic NAME-in, and answers each with `pod got: <body>` on queue / topic NAME-out. It
prints one line per step and exits 1 when a step fails or nothing arrives in time: a pod
on the bed's real node proves both brokers reachable there, both ways.

    client.py consume --url-env VAR --queue-env VAR --report QUEUE

consumes RabbitMQ queue $QUEUE-VAR forever (a queue consumer, as staging's and its
previews' are) and reports each message, as `<queue it came from> <body>`, on queue
REPORT (confirmed before the message is acknowledged: a message is reported at least
once, and a redelivery shows as a duplicate), so a test counts what every consumer got.

    client.py consume-kafka --bootstrap-env VAR --topic-env VAR --group G --report TOPIC

the same for Kafka: consumes topic $TOPIC-VAR in consumer group G (as staging's consumer
and its previews, which copy it, do) and reports each record as `<topic> <value>` on topic
REPORT; a batch's offsets are committed once its reports are acknowledged (acks=all).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import pika
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.structs import MemberState

# kafka-python 3.0.x loses a group join cut short by poll's timeout; the same fix as
# adapters/queues/kafka.complete_interrupted_joins and poll_ms (this image has no
# preview-env package).
_need_rejoin = ConsumerCoordinator.need_rejoin
ConsumerCoordinator.need_rejoin = lambda self: (  # type: ignore[method-assign]
    bool(_need_rejoin(self)) or self.state is MemberState.REBALANCING
)


def poll_ms(consumer: KafkaConsumer) -> int:
    return 200 if consumer.group_metadata().state is MemberState.STABLE else 5000


def rabbitmq(url: str, name: str, deadline: float) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in (f"{name}-in", f"{name}-out"):
            channel.queue_declare(queue=queue)
        while True:
            _method, _props, body = channel.basic_get(queue=f"{name}-in", auto_ack=True)
            if body is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no message on queue {name}-in")
            time.sleep(0.2)
        print(f"rabbitmq: got {body.decode()!r} from queue {name}-in", flush=True)
        channel.basic_publish(exchange="", routing_key=f"{name}-out", body=b"pod got: " + body)
        print(f"rabbitmq: answered on queue {name}-out", flush=True)
    finally:
        connection.close()


def kafka(bootstrap: str, name: str, deadline: float) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partition = TopicPartition(f"{name}-in", 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        value = None
        while value is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no record on topic {name}-in")
            for records in consumer.poll(timeout_ms=500).values():
                value = records[0].value
    finally:
        consumer.close()
    print(f"kafka: got {value.decode()!r} from topic {name}-in", flush=True)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        remaining = max(1.0, deadline - time.monotonic())
        producer.send(f"{name}-out", b"pod got: " + value).get(timeout=remaining)
    finally:
        producer.close()
    print(f"kafka: answered on topic {name}-out", flush=True)


def consume(url: str, queue: str, report: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue=report, durable=True)
    channel.basic_qos(prefetch_count=50)
    print(f"consuming {queue}, reporting on {report}", flush=True)

    def got(ch: object, method: object, props: object, body: bytes) -> None:
        channel.basic_publish("", report, f"{queue} ".encode() + body)
        channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

    def stop(_signum: int, _frame: object) -> None:
        # After the message in hand is reported and acknowledged: the unacknowledged
        # rest goes back to the queue unreported, for whoever consumes it next.
        connection.add_callback_threadsafe(channel.stop_consuming)

    signal.signal(signal.SIGTERM, stop)
    channel.basic_consume(queue, got)
    channel.start_consuming()
    connection.close()


def consume_kafka(bootstrap: str, topic: str, group: str, report: str) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="latest",  # the harsh case: the splitter commits beginnings
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    consumer.subscribe([topic])
    print(f"consuming {topic} in group {group}, reporting on {report}", flush=True)
    while not stopping:
        batch = consumer.poll(timeout_ms=poll_ms(consumer))
        futures = [
            producer.send(report, f"{topic} ".encode() + r.value)
            for records in batch.values()
            for r in records
        ]
        producer.flush()
        for future in futures:
            future.get(timeout=30)
        if batch:
            consumer.commit()  # after the reports: each record reported at least once
    consumer.close(autocommit=False)
    producer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="broker-client")
    commands = parser.add_subparsers(dest="command", required=True)
    roundtrip = commands.add_parser("roundtrip")
    roundtrip.add_argument("--rabbitmq", required=True, help="amqp:// URL")
    roundtrip.add_argument("--kafka", required=True, help="bootstrap host:port")
    roundtrip.add_argument("--name", required=True)
    roundtrip.add_argument("--timeout", type=float, default=60.0)
    consumer = commands.add_parser("consume")
    consumer.add_argument("--url-env", required=True, help="variable holding the amqp:// URL")
    consumer.add_argument("--queue-env", required=True, help="variable naming the queue")
    consumer.add_argument("--report", required=True, help="queue to report messages on")
    kafka_consumer = commands.add_parser("consume-kafka")
    kafka_consumer.add_argument("--bootstrap-env", required=True, help="variable: host:port")
    kafka_consumer.add_argument("--topic-env", required=True, help="variable naming the topic")
    kafka_consumer.add_argument("--group", required=True, help="the consumer group")
    kafka_consumer.add_argument("--report", required=True, help="topic to report records on")
    args = parser.parse_args(argv)
    if args.command == "consume-kafka":
        bootstrap = os.environ[args.bootstrap_env]
        consume_kafka(bootstrap, os.environ[args.topic_env], args.group, args.report)
        return 0
    if args.command == "consume":
        consume(os.environ[args.url_env], os.environ[args.queue_env], args.report)
        return 0
    deadline = time.monotonic() + args.timeout
    try:
        rabbitmq(args.rabbitmq, args.name, deadline)
        kafka(args.kafka, args.name, deadline)
    except Exception as exc:  # one line with the cause, exit 1
        print(f"broker-client: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
