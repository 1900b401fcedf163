"""The plug-in interface every broker type implements (`rmq`: adapters.queues.rabbitmq,
`kafka`: adapters.queues.kafka), and the registry the keeper and init containers use.

A plug-in is built from a preparation and the broker URL (read from the Secret by
reference inside the pod, never by the CLI). Every method is idempotent: the keeper calls
`prepare` at each start-up and `reconcile` every round; `unprepare` may be repeated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from preview_stack.errors import BadInput, PreviewError
from preview_stack.queue_prep import KeyQueueStatus, KeySplit, Preparation


class BrokerError(PreviewError):
    """The broker refused or could not be reached (retried by the keeper next round)."""


class Broker(Protocol):
    def prepare(self) -> None:
        """Make the broker split `prep.source` (once per queue; raises BadInput when the
        preparation cannot work, such as a missing producer exchange)."""

    def bind(self, split: KeySplit) -> None:
        """Declare the key's queue (or topic) and its match (the preview's init container)."""

    def reconcile(
        self, desired: Sequence[KeySplit], known: Sequence[KeyQueueStatus]
    ) -> list[KeyQueueStatus]:
        """Keep the key queues of `desired`; remove each queue of `known` (the last
        round's status) that no split wants any more: unmatch it first, so the key's new
        messages reach staging, then move its waiting messages to staging, then delete it.
        Returns the desired keys with the messages waiting for each, plus (`removing`)
        the removals that failed this round, which the next round retries."""

    def unprepare(self) -> None:
        """Reverse `prepare`: the producers' messages reach the original queue directly."""

    def close(self) -> None: ...


# type -> factory(preparation, url); each plug-in module registers itself on import.
BROKERS: dict[str, Callable[[Preparation, str], Broker]] = {}


def supported_types() -> list[str]:
    """The queue types this image has a plug-in for (`queues prepare --type`)."""
    from adapters.queues import plugins  # noqa: F401

    return sorted(BROKERS)


def broker_for(prep: Preparation, url: str) -> Broker:
    if prep.type not in BROKERS:
        # Plug-ins register on import; importing here keeps callers unaware of them.
        from adapters.queues import plugins  # noqa: F401

    factory = BROKERS.get(prep.type)
    if factory is None:
        raise BadInput(f"queue type {prep.type!r} has no broker plug-in in this image")
    return factory(prep, url)


__all__ = ["BROKERS", "Broker", "BrokerError", "broker_for", "supported_types"]
