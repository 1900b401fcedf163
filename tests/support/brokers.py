"""RabbitMQ from the host, for tests of split queues: the management API (what the broker
has: queues, bindings, exchanges) and a steady producer that remembers what it sent."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pika

from testbed import brokers as bed_brokers
from testbed.brokers import Brokers


def management(brokers: Brokers, path: str) -> Any:
    """GET the management API's `path` (None for 404)."""
    request = urllib.request.Request(f"{brokers.management_url}{path}")
    token = base64.b64encode(f"{bed_brokers.USER}:{bed_brokers.PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def queue_exists(brokers: Brokers, queue: str) -> bool:
    return management(brokers, f"/api/queues/%2F/{urllib.parse.quote(queue, safe='')}") is not None


def bindings_from(brokers: Brokers, exchange: str) -> list[tuple[str, str, str]]:
    """(destination type, destination, routing key) of each binding out of `exchange`."""
    path = f"/api/exchanges/%2F/{urllib.parse.quote(exchange, safe='')}/bindings/source"
    found = management(brokers, path) or []
    return sorted((b["destination_type"], b["destination"], b["routing_key"]) for b in found)


@dataclass
class Sent:
    id: int
    key: str | None
    before: float  # time.monotonic() just before the publish
    after: float  # ... and once the broker confirmed it


@dataclass
class Producer:
    """Publishes to `exchange` with `routing_key`, `rate` messages a second, cycling the
    `keys` as the `header` (None: no header), each body a sequence number; confirmed."""

    url: str
    exchange: str
    routing_key: str
    keys: list[str | None]
    header: str = "mirrord-session"
    rate: float = 40.0
    sent: list[Sent] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Producer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = connection.channel()
            channel.confirm_delivery()
            n = 0
            while not self._stop.is_set():
                key = self.keys[n % len(self.keys)]
                headers = {self.header: key} if key else {}
                before = time.monotonic()
                channel.basic_publish(
                    self.exchange,
                    self.routing_key,
                    str(n).encode(),
                    pika.BasicProperties(headers=headers, delivery_mode=2),
                )
                self.sent.append(Sent(n, key, before, time.monotonic()))
                n += 1
                time.sleep(1 / self.rate)
            connection.close()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> list[Sent]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)
        if self.error is not None:
            raise self.error
        return list(self.sent)


def drain(url: str, queue: str) -> list[str]:
    """Every message waiting on `queue` (the consumers' reports), taken."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue=queue, durable=True)
        bodies = []
        while True:
            method, _props, body = channel.basic_get(queue=queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body.decode())
    finally:
        connection.close()
