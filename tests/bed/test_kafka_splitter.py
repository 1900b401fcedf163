"""The Kafka splitter (adapters.queues.kafka) on the bed's real Kafka, under a steady
producer, counted by real consumers in the target's group: prepare hands the source over
from the target to the splitter, two keys (one steal, one mirror) get exactly their
records, a key's topic is drained to staging and deleted once its split is gone, and
unprepare hands the source back; nothing lost, nothing duplicated.

Records of a key are produced only in phases whose routing is settled (the keys of the
`Stream` change between phases); records without a key flow through every hand-off.
"""

from __future__ import annotations

import sys
import time
import traceback
import uuid

import pytest

from adapters.queues.broker import BrokerError
from adapters.queues.kafka import KafkaBroker
from preview_stack import kafka_split, queue_prep
from preview_stack.queue_prep import Preparation
from testbed.brokers import Brokers
from tests.support.kafka import Recorder, Stream, create_topic, duplicates, topics, wait_received
from tests.support.polling import wait_until

pytestmark = pytest.mark.cluster


def unprepared(broker: KafkaBroker) -> str:
    try:
        broker.unprepare()
    except BrokerError as exc:
        return "handed back" if kafka_split.HANDED_BACK in str(exc) else str(exc)
    return "done"


def where(broker: KafkaBroker) -> str:
    """The splitter thread's stack (a failure message's clue)."""
    thread = broker.splitter
    frame = sys._current_frames().get(thread.ident or 0) if thread else None
    found = "".join(traceback.format_stack(frame)[-12:]) if frame else "no splitter thread"
    print(broker.status(), found, sep="\n")  # shown with the failure
    return found


def settle(seconds: float = 2.0) -> None:
    time.sleep(seconds)  # a steady stream meanwhile


def test_split_two_keys_and_hand_offs_lose_and_duplicate_nothing(brokers: Brokers) -> None:
    bootstrap = brokers.kafka_bootstrap
    run = uuid.uuid4().hex[:8]
    source, group = f"orders-{run}", f"orders-app-{run}"
    create_topic(bootstrap, source, partitions=3)
    prep = Preparation(id="orders", namespace="-", type="kafka", source=source, group=group)
    staging = kafka_split.staging_topic(source)
    stream = Stream(bootstrap, source, keys=[None]).start()
    target = Recorder(bootstrap, source, group, reset="earliest").start()  # before prepare
    wait_received([target], {0, 1, 2})

    broker = KafkaBroker(prep, bootstrap)
    try:
        # prepare; then the patch: the target's pods read staging (reset latest: the
        # splitter committed its beginning for the group before producing to it).
        broker.prepare()
        assert staging in topics(bootstrap)
        on_staging = Recorder(bootstrap, staging, group).start()
        target.stop()
        settle()

        a = queue_prep.key_split(prep, "a", {"mirrord-session": "^a$"}, "steal")
        b = queue_prep.key_split(prep, "b", {"mirrord-session": "^b$"}, "mirror")
        rows = broker.reconcile([a, b], [])
        assert [(r.key, r.queue, r.mode) for r in rows] == [
            ("a", a.queue, "steal"),
            ("b", b.queue, "mirror"),
        ]
        assert {a.queue, b.queue} <= topics(bootstrap)
        assert wait_until(lambda: broker.status()["routes_applied"], timeout=30)
        preview_a = Recorder(bootstrap, a.queue, group).start()
        preview_b = Recorder(bootstrap, b.queue, group).start()
        preview_a.wait_assigned()
        preview_b.wait_assigned()

        stream.switch([None, "other", "a", "b"])  # W1: both splits live, previews reading
        settle(3)
        stream.switch([None, "other"])
        live_a, live_b = stream.ids("a"), stream.ids("b")
        assert wait_received([preview_a], live_a), (
            len(preview_a.received),
            broker.status(),
            where(broker),
        )
        assert wait_received([preview_b], live_b), (
            len(preview_b.received),
            broker.status(),
            where(broker),
        )
        status = rows

        def nothing_waiting() -> bool:
            nonlocal status
            status = broker.reconcile([a, b], status)  # the previews commit every 0.5 s
            return {r.key: r.waiting for r in status} == {"a": 0, "b": 0}

        assert wait_until(nothing_waiting, timeout=20), status

        # clean a: its preview goes first, then its split ConfigMap; a's records meanwhile
        # wait in a's topic (W2), which the keeper drains to staging before deleting it.
        preview_a.stop()
        stream.switch([None, "a"])
        settle()
        stream.switch([None])
        waiting_a = stream.ids("a") - live_a
        status = broker.reconcile([b], status)
        assert wait_until(lambda: broker.status()["routes_applied"], timeout=30)
        status = broker.reconcile([b], status)  # a's topic removed once the routes hold
        assert [r.key for r in status] == ["b"]
        assert wait_until(lambda: a.queue not in topics(bootstrap), timeout=10)
        stream.switch([None, "a", "b"])  # W3: a reaches staging again; b still mirrored
        settle()
        stream.switch([None])
        mirrored_b = stream.ids("b")
        assert wait_received([preview_b], mirrored_b), (broker.status(), where(broker))
        preview_b.stop()
        status = broker.reconcile([], status)  # a mirror's topic: deleted, not drained
        assert wait_until(lambda: broker.status()["routes_applied"], timeout=30)
        status = broker.reconcile([], status)
        assert status == []
        assert wait_until(lambda: b.queue not in topics(bootstrap), timeout=10)
        stream.switch([None, "a", "b"])  # nothing split: all to staging
        settle()

        # unprepare: the splitter stops; once the target has read all of staging, the
        # keeper says so, the patch points the target back (its group resumes where the
        # splitter stopped), and the staging topic goes once the target has left it.
        splitter = broker.status()  # what the splitter did, for the failure messages
        said: list[str] = []
        assert wait_until(lambda: said.append(unprepared(broker)) or said[-1] == "handed back",
                          timeout=60), (said[-3:], splitter)  # fmt: skip
        back = Recorder(bootstrap, source, group).start()
        on_staging.stop()
        assert wait_until(lambda: unprepared(broker) == "done", timeout=60)
        assert wait_until(lambda: staging not in topics(bootstrap), timeout=10)
        settle()
    finally:
        broker.close()
    sent = stream.stop()
    expected_staging = set(sent) - live_a
    wait_received([target, on_staging, back], expected_staging)
    back.stop()

    staging_got = target.received + on_staging.received + back.received
    assert duplicates(staging_got) == [], (
        [duplicates(r.received) for r in (target, on_staging, back)],
        splitter,
    )
    assert duplicates(preview_a.received) == duplicates(preview_b.received) == []
    assert set(preview_a.received) == live_a  # exactly a's records while it was live
    assert set(preview_b.received) == mirrored_b
    assert set(staging_got) == expected_staging  # everything else, a's W2 drained
    assert waiting_a and waiting_a <= set(staging_got)
    assert mirrored_b <= set(staging_got)  # mirror: staging got b's records too
