"""RabbitMQ, split by the broker itself (pika).

Prepared once per queue: a fanout exchange (the fallback) bound to the original queue, a
headers exchange whose `alternate-exchange` is the fallback, the producers' exchange bound
to the headers exchange with the queue's routing key, and only then the producers'
exchange unbound from the queue. While both paths exist, a message reaches the queue once:
RabbitMQ routes one publish to a set of queues. A key's queue is bound to the headers
exchange with `{x-match: all, header: value}`: a message it matches goes there alone
(steal); every other message falls through the alternate exchange to the original queue.
Nothing runs on the message path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pika
import pika.exceptions

from adapters.queues.broker import BROKERS, BrokerError
from preview_stack import queue_prep
from preview_stack.errors import BadInput
from preview_stack.queue_prep import KeyQueueStatus, KeySplit, Preparation

T = TypeVar("T")
NOT_FOUND = 404
DRAIN_BATCH = 1000  # messages moved back to staging per queue and round


def default_exchange_refusal(queue: str) -> str:
    return (
        f"queue {queue!r} is fed by the default exchange only, which RabbitMQ cannot "
        "reroute: publish through a named exchange bound to the queue and pass "
        "--exchange E --routing-key RK"
    )


class RabbitBroker:
    def __init__(self, prep: Preparation, url: str) -> None:
        self.prep = prep
        self.headers = queue_prep.headers_exchange(prep)
        self.fallback = queue_prep.fallback(prep)
        try:
            self.connection = pika.BlockingConnection(pika.URLParameters(url))
        except pika.exceptions.AMQPError as exc:
            raise BrokerError(f"RabbitMQ cannot be reached: {type(exc).__name__}") from None

    # ------------------------------------------------------------------ channel helpers
    def _run(self, op: Callable[[Any], T]) -> T:
        """`op(channel)` on a fresh channel (a refused operation closes its channel)."""
        channel = self.connection.channel()
        try:
            return op(channel)
        finally:
            if channel.is_open:
                channel.close()

    def _exists(self, declare: Callable[[Any], object]) -> bool:
        try:
            self._run(declare)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:
                return False
            raise
        return True

    def _exchange_exists(self, name: str) -> bool:
        return self._exists(lambda ch: ch.exchange_declare(name, passive=True))

    def _queue_exists(self, name: str) -> bool:
        return self._exists(lambda ch: ch.queue_declare(name, passive=True))

    # ------------------------------------------------------------------------ Broker
    def prepare(self) -> None:
        prep = self.prep
        if prep.exchange in ("", "amq.default"):
            raise BadInput(default_exchange_refusal(prep.source))
        if not self._exchange_exists(prep.exchange):
            raise BadInput(f"exchange {prep.exchange!r} does not exist on the broker")
        if not self._queue_exists(prep.source):
            raise BadInput(f"queue {prep.source!r} does not exist on the broker")

        def topology(ch: Any) -> None:
            ch.exchange_declare(self.fallback, exchange_type="fanout", durable=True)
            ch.queue_bind(prep.source, self.fallback, routing_key="")
            ch.exchange_declare(
                self.headers,
                exchange_type="headers",
                durable=True,
                arguments={"alternate-exchange": self.fallback},
            )
            # First the new path, then the old one goes: no message meanwhile without a
            # route, and none twice (one publish reaches a queue once).
            ch.exchange_bind(self.headers, prep.exchange, routing_key=prep.routing_key)
            ch.queue_unbind(prep.source, prep.exchange, routing_key=prep.routing_key)

        self._guarded(topology)

    def unprepare(self) -> None:
        prep = self.prep

        def restore(ch: Any) -> None:
            if prep.exchange:
                ch.queue_bind(prep.source, prep.exchange, routing_key=prep.routing_key)

        if self._exchange_exists(prep.exchange) and self._queue_exists(prep.source):
            self._guarded(restore)
        if self._exchange_exists(self.headers):
            self._guarded(
                lambda ch: ch.exchange_unbind(
                    self.headers, prep.exchange, routing_key=prep.routing_key
                )
            )
            self._guarded(lambda ch: ch.exchange_delete(self.headers))
        if self._exchange_exists(self.fallback):
            self._guarded(lambda ch: ch.exchange_delete(self.fallback))

    def bind(self, split: KeySplit) -> None:
        def declare(ch: Any) -> None:
            ch.queue_declare(split.queue, durable=True)
            ch.queue_bind(
                split.queue,
                self.headers,
                routing_key="",
                arguments=queue_prep.binding_arguments(split),
            )

        if not self._exchange_exists(self.headers):
            raise BrokerError(
                f"queue {self.prep.id!r} is not prepared yet (no exchange {self.headers!r})"
            )
        self._guarded(declare)

    def reconcile(
        self, desired: Sequence[KeySplit], known: Sequence[KeyQueueStatus]
    ) -> list[KeyQueueStatus]:
        rows: list[KeyQueueStatus] = []
        wanted = {s.queue for s in desired}
        for split in desired:
            self.bind(split)
            rows.append(
                KeyQueueStatus(
                    key=split.key,
                    queue=split.queue,
                    filter=split.filter,
                    waiting=self._depth(split.queue),
                )
            )
        for old in known:
            if old.queue in wanted:
                continue
            if not self._remove(old):
                rows.append(old.model_copy(update={"removing": True, "waiting": None}))
        return rows

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    # --------------------------------------------------------------------- internals
    def _guarded(self, op: Callable[[Any], T]) -> T:
        try:
            return self._run(op)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise BrokerError(f"RabbitMQ refused: {exc.reply_code} {exc.reply_text}") from None
        except pika.exceptions.AMQPError as exc:
            raise BrokerError(f"RabbitMQ: {type(exc).__name__}") from None

    def _depth(self, queue: str) -> int | None:
        try:
            declared = self._run(lambda ch: ch.queue_declare(queue, passive=True))
        except pika.exceptions.ChannelClosedByBroker:
            return None
        return int(declared.method.message_count)

    def _remove(self, old: KeyQueueStatus) -> bool:
        """Unmatch, move back, delete (each step idempotent); True when the queue is gone."""
        if not self._queue_exists(old.queue):
            return True
        split = KeySplit(queue_id=self.prep.id, key=old.key, queue=old.queue, filter=old.filter)
        if self._exchange_exists(self.headers) and old.filter:
            self._guarded(
                lambda ch: ch.queue_unbind(
                    old.queue,
                    self.headers,
                    routing_key="",
                    arguments=queue_prep.binding_arguments(split),
                )
            )
        self._guarded(lambda ch: self._drain(ch, old.queue))
        try:
            self._run(lambda ch: ch.queue_delete(old.queue, if_unused=True, if_empty=True))
        except pika.exceptions.ChannelClosedByBroker:
            return False  # a consumer is still attached, or messages came back: next round
        return True

    def _drain(self, ch: Any, queue: str) -> None:
        """Each waiting message, republished (confirmed) where unmatched messages go,
        then acknowledged: at least once to staging, never dropped."""
        target = self.headers if self._exchange_exists(self.headers) else ""
        ch.confirm_delivery()
        for _ in range(DRAIN_BATCH):
            method, properties, body = ch.basic_get(queue, auto_ack=False)
            if method is None:
                return
            routing_key = method.routing_key if target else self.prep.source
            ch.basic_publish(target, routing_key, body, properties)
            ch.basic_ack(method.delivery_tag)


BROKERS["rmq"] = RabbitBroker
