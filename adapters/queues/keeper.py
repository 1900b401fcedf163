"""The queue keeper: one per prepared queue, in the cluster, next to the broker.

Each round (`queue_prep.POLL_SECONDS`) it reads the preparation record and the split
ConfigMaps, prepares the broker (once per process: idempotent), keeps each split key's
queue and removes the key queues whose split is gone (their messages back to staging),
and writes what it saw to its status ConfigMap. When the record says `unprepared`, it
moves every key queue back and reverses the preparation. The Kubernetes side comes in as
callables (`Io`), so this module reaches no Kubernetes client.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from adapters.queues.broker import Broker, BrokerError, broker_for
from preview_stack.errors import BadInput, PreviewError
from preview_stack.queue_prep import POLL_SECONDS, KeeperStatus, KeySplit, Preparation


@dataclass(frozen=True)
class Io:
    record: Callable[[], Preparation | None]
    splits: Callable[[], list[KeySplit]]
    status: Callable[[], KeeperStatus | None]
    write_status: Callable[[KeeperStatus], None]
    log: Callable[[str], None] = print


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


class Keeper:
    def __init__(
        self, io: Io, url: str, connect: Callable[[Preparation, str], Broker] = broker_for
    ) -> None:
        self.io, self.url, self.connect = io, url, connect
        self.broker: Broker | None = None
        self.prepared = False
        self.seen: Preparation | None = None  # the record last worked from, but its state

    def round(self) -> KeeperStatus:
        """One reconciliation; errors become a `failed` status (retried next round)."""
        previous = self.io.status() or KeeperStatus()
        prep = self.io.record()
        if prep is None:
            return previous.model_copy(update={"state": "failed", "error": "no record"})
        try:
            if self.seen is not None and self.seen != prep.model_copy(update={"state": "-"}):
                self._drop()  # a changed preparation: a new broker client, prepared anew
            self.seen = prep.model_copy(update={"state": "-"})
            if self.broker is None:
                self.broker = self.connect(prep, self.url)
            if prep.state == "unprepared":
                if previous.state == "unprepared":
                    return previous
                left = self.broker.reconcile([], previous.keys)
                if left:
                    raise BrokerError(f"{len(left)} key queue(s) not removed yet")
                self.broker.unprepare()
                self.prepared = False
                return KeeperStatus(state="unprepared", updated_at=_now())
            if not self.prepared:
                self.broker.prepare()
                self.prepared = True
            wanted = [s for s in self.io.splits() if s.queue_id == prep.id]
            keys = self.broker.reconcile(wanted, previous.keys)
            return KeeperStatus(state="prepared", updated_at=_now(), keys=keys)
        except BadInput as exc:
            return previous.model_copy(
                update={"state": "failed", "error": str(exc), "bad_input": True}
            )
        except BrokerError as exc:
            self._drop()
            return previous.model_copy(
                update={"state": "failed", "error": str(exc), "updated_at": _now()}
            )

    def _drop(self) -> None:
        if self.broker is not None:
            # Closing a broken connection may fail again: it is dropped either way.
            with contextlib.suppress(Exception):
                self.broker.close()
        self.broker, self.prepared = None, False

    def run(
        self, *, rounds: int | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        done = 0
        while rounds is None or done < rounds:
            try:
                status = self.round()
                self.io.write_status(status)
                if status.error:
                    self.io.log(f"queue keeper: {status.state}: {status.error}")
            except PreviewError as exc:  # the Kubernetes API, for a moment: next round
                self.io.log(f"queue keeper: {exc}")
            done += 1
            sleep(POLL_SECONDS)
