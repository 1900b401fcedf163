"""Kafka, split by a splitter in the keeper (kafka-python); the decisions are pure
(preview_stack.kafka_split), this module does the I/O.

The splitter is a thread of the keeper process: a consumer of the source topic **in the
target's own consumer group** (so it starts where the target stopped and commits where
the target will resume) and a producer (acks=all, idempotent) to the key topics and to
the staging topic. A batch's offsets are committed only once each of its records was
acknowledged; a crash (or a commit refused by a rebalance) re-reads that batch: its
records may reach their topics twice, none is lost. Transactions would remove those
duplicates only for consumers reading `read_committed`, which staging's consumer need
not, so they are not used.

The keeper calls `reconcile` every round from its own thread; the splitter thread alone
touches its consumer (kafka-python's consumer is not thread-safe): the keeper hands it
the live routes and the key topics whose group offsets must start at the beginning, and
waits until it has applied them.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import kafka.errors
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.structs import MemberState, OffsetAndMetadata

from adapters.queues.broker import BROKERS, BrokerError
from preview_stack import kafka_split
from preview_stack.errors import BadInput
from preview_stack.kafka_split import Route
from preview_stack.queue_prep import KeyQueueStatus, KeySplit, Preparation

T = TypeVar("T")
# A commit refused because the group is moving partitions (the records are read again).
REBALANCED = (
    kafka.errors.CommitFailedError,
    kafka.errors.RebalanceInProgressError,
    kafka.errors.IllegalGenerationError,
    kafka.errors.UnknownMemberIdError,
)
POLL_MS = 200
BATCH = 500  # records per poll: at most this many are duplicated by a crash
APPLY_SECONDS = 3.0  # how long a keeper round waits for the splitter to apply new routes
CLIENT_ID = "preview-env-splitter"
# A deleted key topic must stay deleted: a client asking for metadata of a topic it still
# knows would otherwise have the broker create it again (auto.create.topics.enable).
PRODUCER: dict[str, Any] = {
    "client_id": CLIENT_ID,
    "acks": "all",
    "linger_ms": 5,
    "allow_auto_create_topics": False,
}
JOIN_SECONDS = 60.0  # how long prepare waits for the splitter to join the target's group
JOIN_POLL_MS = 5000  # a poll while (re)joining the group: a rebalance takes about 3 s


def complete_interrupted_joins() -> None:
    """Work around kafka-python 3.0.x losing a group join that `poll`'s timeout cut short.

    The join runs as a task of the client's IO thread; `poll(timeout_ms)` awaits it only
    for its own timeout. Two ways it is lost (both seen on the bed's Kafka):
    - a leader rejoining because of new topic metadata performs the assignment inside the
      join, after which `need_rejoin()` is False: no later poll awaits the join and the
      member stays REBALANCING for good (no heartbeats, dropped by the group, still
      fetching its old partitions). Fixed here: an unfinished join (the member is
      REBALANCING) counts as needing a rejoin, as kafka-python 2.x's
      `_rejoin_incomplete` did;
    - a join that completes while no poll awaits it is thrown away and sent again: with
      short polls, a rebalance every generation. Avoided by `poll_ms`: a member that is
      not stable polls long enough to await its join."""
    original = ConsumerCoordinator.need_rejoin
    if getattr(original, "completes_interrupted_joins", False):
        return

    def need_rejoin(self: ConsumerCoordinator) -> bool:
        return bool(original(self)) or self.state is MemberState.REBALANCING

    need_rejoin.completes_interrupted_joins = True  # type: ignore[attr-defined]
    ConsumerCoordinator.need_rejoin = need_rejoin


complete_interrupted_joins()


def poll_ms(consumer: KafkaConsumer, short_ms: int = 200) -> int:
    """How long to poll: `short_ms` while the member is stable, JOIN_POLL_MS while it
    (re)joins its group, so that the poll awaits the join to its end (see
    complete_interrupted_joins)."""
    stable = consumer.group_metadata().state is MemberState.STABLE
    return short_ms if stable else JOIN_POLL_MS


def bootstrap_of(url: str) -> list[str]:
    """`kafka://host:port,host:port` or `host:port,...` -> the bootstrap servers."""
    hosts = url.strip().split("://", 1)[-1].rstrip("/")
    servers = [h for h in hosts.split(",") if h]
    if not servers:
        raise BadInput("the broker URL names no Kafka bootstrap server (host:port)")
    return servers


def _guard(what: str, op: Callable[[], T]) -> T:
    try:
        return op()
    except kafka.errors.KafkaError as exc:
        raise BrokerError(f"Kafka: {what}: {type(exc).__name__}: {exc}") from None


def _plain(value: Any) -> Any:
    """kafka-python's protocol objects as plain dicts and lists (for the pure core)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _kafka_errors(method: Callable[..., T]) -> Callable[..., T]:
    """A Broker method whose Kafka errors become BrokerError (retried next round)."""

    @functools.wraps(method)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except kafka.errors.KafkaError as exc:
            raise BrokerError(f"Kafka: {type(exc).__name__}: {exc}") from None

    return wrapped


class Splitter(threading.Thread):
    """The record path: source -> key topics and staging, commits after acks."""

    def __init__(self, prep: Preparation, servers: list[str]) -> None:
        super().__init__(name=f"splitter-{prep.id}", daemon=True)
        self.prep, self.servers = prep, servers
        self.staging = kafka_split.staging_topic(prep.source)
        self.lock = threading.Lock()
        self.routes: tuple[Route, ...] = ()
        self.epoch = 0  # bumped by each change the keeper asks for
        self.applied = 0  # the last epoch whose routes every flushed record followed
        self.resets: set[str] = set()  # topics to start at the beginning for the group
        self.stopping = threading.Event()
        self.routed = threading.Event()  # the keeper gave the routes once
        self.error = ""
        self.forwarded = 0
        self.staging_reset = False
        self.commit_failures = 0
        self.pending: dict[TopicPartition, OffsetAndMetadata] = {}
        self.last_commit_error = ""
        self.state: tuple[Any, int, int] = (None, 0, 0)  # member state, generation, partitions
        self.doing: tuple[str, float] = ("starting", time.monotonic())  # for status()

    def _doing(self, what: str) -> None:
        self.doing = (what, time.monotonic())

    # ------------------------------------------------------------- the keeper's side
    def ask(self, routes: Sequence[Route], resets: Sequence[str] = ()) -> int:
        with self.lock:
            self.routes = tuple(routes)
            self.resets |= set(resets)
            self.epoch += 1
            self.routed.set()
            return self.epoch

    def wait_applied(self, epoch: int, timeout: float = APPLY_SECONDS) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.is_alive():
            with self.lock:
                if self.applied >= epoch and not self.resets:
                    return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)

    # -------------------------------------------------------------- the thread's side
    def run(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self.servers,
            client_id=CLIENT_ID,
            group_id=self.prep.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # no commit: lose nothing
            allow_auto_create_topics=False,
            max_poll_records=BATCH,
        )
        producer = KafkaProducer(**PRODUCER, bootstrap_servers=self.servers)
        try:
            consumer.subscribe([self.prep.source])
            while not self.stopping.is_set():
                self._round(consumer, producer)
            if self.pending:  # the last batch's offsets, where the target resumes
                self._commit(consumer)
        except Exception as exc:  # the keeper sees the thread dead and restarts it
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                producer.close(timeout=10)
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False)

    def _round(self, consumer: KafkaConsumer, producer: KafkaProducer) -> None:
        with self.lock:
            routes, epoch, resets = self.routes, self.epoch, set(self.resets)
        self._doing("poll")
        batch = consumer.poll(timeout_ms=poll_ms(consumer, POLL_MS), max_records=BATCH)
        self._doing("round")
        member = consumer.group_metadata()
        self.state = (member.state, member.generation_id, len(consumer.assignment()))
        joined = member.generation_id > 0
        stable = member.state == MemberState.STABLE
        owned = consumer.assignment()
        # Offsets of a partition the group gave to another member are its business now.
        self.pending = {tp: o for tp, o in self.pending.items() if tp in owned}
        if self.pending and stable:
            self._commit(consumer)
        if joined and not self.staging_reset:
            # Before the first record to staging; a rebalance meanwhile: next round.
            self.staging_reset = self._reset(consumer, self.staging)
        if joined and resets:
            done = {topic for topic in resets if self._reset(consumer, topic)}
            with self.lock:
                self.resets -= done
        if batch and not (stable and self.staging_reset and self.routed.is_set()):
            # Not a stable member (its commits would be refused: records sent twice), no
            # routes from the keeper yet, or staging not reset: read them again later.
            for tp, records in batch.items():
                if tp in consumer.assignment():
                    consumer.seek(tp, records[0].offset)
            with self.lock:  # nothing was sent: the routes asked for hold from now on
                self.applied = max(self.applied, epoch)
            return
        with self.lock:  # a key topic not yet at the beginning for the group gets nothing
            routes = tuple(r for r in routes if r.topic not in self.resets)
        futures, offsets = [], {}
        for tp, records in batch.items():
            for r in records:
                dest = kafka_split.route(r.headers, routes)
                topics = [*dest.keys, *([self.staging] if dest.staging else [])]
                for topic in topics:
                    futures.append(
                        producer.send(topic, value=r.value, key=r.key, headers=r.headers)
                    )
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        self._doing("flush")
        producer.flush()
        self._doing("round")
        failed = [f for f in futures if not f.succeeded()]
        if failed:  # not acknowledged: read the batch again (the acknowledged ones twice)
            for tp, records in batch.items():
                consumer.seek(tp, records[0].offset)
            raise BrokerError(f"{len(failed)} record(s) not acknowledged: {failed[0].exception}")
        if offsets:
            self.forwarded += sum(len(r) for r in batch.values())
            self.pending.update(offsets)
            self._commit(consumer)
        with self.lock:
            self.applied = max(self.applied, epoch)

    def _commit(self, consumer: KafkaConsumer) -> None:
        """Commit what was acknowledged; refused (a rebalance began): kept for the next
        round while the partitions stay the splitter's. Given to another member meanwhile,
        they are read again by it: duplicates, no loss."""
        self._doing("commit")
        try:
            consumer.commit(dict(self.pending))
        except REBALANCED as exc:
            self.commit_failures += 1
            self.last_commit_error = f"{type(exc).__name__}"
            return
        self.pending = {}

    def _reset(self, consumer: KafkaConsumer, topic: str) -> bool:
        """Commit the beginning of `topic` for the group where it has no (or a stale)
        commit: the target (staging) or the preview (a key topic) reads it all. False: not
        done (no metadata yet, a rebalance), to retry next round."""
        self._doing(f"reset {topic}")
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return False
        earliest = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        committed = {tp.partition: consumer.committed(tp) for tp in tps}
        plan = kafka_split.reset_to_beginning(
            committed,
            {tp.partition: o for tp, o in earliest.items()},
            {tp.partition: o for tp, o in end.items()},
        )
        if plan:
            try:
                consumer.commit(
                    {
                        TopicPartition(topic, p): OffsetAndMetadata(o, "", -1)
                        for p, o in plan.items()
                    }
                )
            except REBALANCED:
                return False
        return True


class KafkaBroker:
    def __init__(self, prep: Preparation, url: str) -> None:
        self.prep = prep
        self.servers = bootstrap_of(url)
        self.staging = kafka_split.staging_topic(prep.source) if prep.source != "-" else ""
        self.splitter: Splitter | None = None
        self.admin = _guard(
            "connecting",
            lambda: KafkaAdminClient(bootstrap_servers=self.servers, client_id=CLIENT_ID),
        )
        self.probe = _guard(
            "connecting",
            lambda: KafkaConsumer(
                bootstrap_servers=self.servers, client_id=CLIENT_ID, allow_auto_create_topics=False
            ),
        )

    # ------------------------------------------------------------------ helpers
    def _topics(self) -> set[str]:
        return _guard("listing topics", lambda: set(self.probe.topics()))

    def _partitions(self, topic: str) -> list[TopicPartition]:
        self.probe.topics()  # refresh metadata
        parts = self.probe.partitions_for_topic(topic) or set()
        return [TopicPartition(topic, p) for p in sorted(parts)]

    def _create(self, topic: str, partitions: int) -> None:
        if topic in self._topics():
            return
        with contextlib.suppress(kafka.errors.TopicAlreadyExistsError):
            _guard(
                f"creating topic {topic}",
                lambda: self.admin.create_topics(
                    {topic: {"num_partitions": partitions, "replication_factor": -1}},
                    wait_for_metadata=True,
                ),
            )

    def _offsets(self, topic: str) -> tuple[dict[int, int | None], dict[int, int], dict[int, int]]:
        """(the group's commits, earliest, end) per partition of `topic`."""
        tps = self._partitions(topic)

        def read() -> tuple[dict[int, int | None], dict[int, int], dict[int, int]]:
            listed = self.admin.list_group_offsets({self.prep.group: tps}).get(self.prep.group, {})
            committed: dict[int, int | None] = {
                tp.partition: (m.offset if m is not None and m.offset >= 0 else None)
                for tp, m in ((tp, listed.get(tp)) for tp in tps)
            }
            earliest = {tp.partition: o for tp, o in self.probe.beginning_offsets(tps).items()}
            end = {tp.partition: o for tp, o in self.probe.end_offsets(tps).items()}
            return committed, earliest, end

        return _guard(f"reading offsets of {topic}", read)

    def _holders(self, topic: str) -> list[str]:
        described = _guard(
            "describing the group", lambda: self.admin.describe_groups([self.prep.group])
        )
        group = described.get(self.prep.group) if isinstance(described, dict) else None
        if group is None and isinstance(described, list) and described:
            group = described[0]
        return kafka_split.holders(_plain(group or {}), topic)

    def _routes(self, splits: Sequence[KeySplit]) -> list[Route]:
        return [
            Route(key=s.key, topic=s.queue, filter=dict(s.filter), mirror=s.mode == "mirror")
            for s in splits
        ]

    def _running(self) -> Splitter:
        if self.splitter is None or not self.splitter.is_alive():
            why = self.splitter.error if self.splitter is not None else "not started"
            self.splitter = None
            raise BrokerError(f"the splitter of {self.prep.source} stopped ({why})")
        return self.splitter

    # ------------------------------------------------------------------------ Broker
    @_kafka_errors
    def prepare(self) -> None:
        prep = self.prep
        if not prep.group:
            raise BadInput("a Kafka preparation needs the target's consumer group (--group)")
        try:
            kafka_split.check_source(prep.source)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        source = _guard("reading metadata", lambda: self._partitions(prep.source))
        if not source:
            raise BadInput(f"topic {prep.source!r} does not exist on the broker")
        self._create(self.staging, len(source))
        if self.splitter is None or not self.splitter.is_alive():
            self.splitter = Splitter(prep, self.servers)
            self.splitter.start()
        # Prepared (and only then is the target patched) once the splitter is a member of
        # the target's group and has committed the beginning of staging for it.
        deadline = time.monotonic() + JOIN_SECONDS
        while not self.splitter.staging_reset:
            if not self.splitter.is_alive() or time.monotonic() > deadline:
                why = self.splitter.error or f"not within {JOIN_SECONDS}s"
                raise BrokerError(f"the splitter did not join group {prep.group!r} ({why})")
            time.sleep(0.1)

    @_kafka_errors
    def bind(self, split: KeySplit) -> None:
        """The preview pod's init container: wait for the keeper to create the key's topic."""
        if split.queue not in self._topics():
            raise BrokerError(f"topic {split.queue} is not created yet by the queue's keeper")

    @_kafka_errors
    def reconcile(
        self, desired: Sequence[KeySplit], known: Sequence[KeyQueueStatus]
    ) -> list[KeyQueueStatus]:
        splitter = self._running() if desired or self.splitter is not None else None
        partitions = len(self._partitions(self.prep.source)) or 1
        live = {r.topic for r in (splitter.routes if splitter else ())}
        new = [s.queue for s in desired if s.queue not in live]
        for topic in new:
            self._create(topic, partitions)
        applied = True
        if splitter is not None:
            # Not applied in time (a rebalance of the group holds the splitter): the routes
            # apply when it resumes; removals wait for the next round.
            applied = splitter.wait_applied(splitter.ask(self._routes(desired), new))
        rows = [
            KeyQueueStatus(
                key=s.key,
                queue=s.queue,
                filter=dict(s.filter),
                mode=s.mode,
                waiting=self._waiting(s.queue),
            )
            for s in desired
        ]
        wanted = {s.queue for s in desired}
        gone = [k for k in known if k.queue not in wanted]
        # Key topics nobody knows any more: a client that still had one in its metadata had
        # the broker create it again after its removal (auto.create.topics.enable).
        prefix = f"{self.prep.source}{kafka_split.KEY_INFIX}"
        seen = wanted | {k.queue for k in gone}
        for topic in sorted(t for t in self._topics() if t.startswith(prefix) and t not in seen):
            gone.append(KeyQueueStatus(key=topic.removeprefix(prefix), queue=topic))
        for old in gone:
            if not applied or not self._remove(old.queue, drain=old.mode == "steal"):
                rows.append(old.model_copy(update={"removing": True, "waiting": None}))
        return rows

    def _waiting(self, topic: str) -> int | None:
        try:
            return kafka_split.waiting(*self._offsets(topic))
        except BrokerError:
            return None

    def _remove(self, topic: str, *, drain: bool) -> bool:
        """Routes no longer lead to `topic` (reconcile applied them); once no member of the
        group holds it, copy what the preview did not consume to staging (`drain`: a
        mirror's records reached staging already), then delete it."""
        if topic not in self._topics():
            return True
        if self._holders(topic):
            return False  # the preview is still reading it: next round
        ranges = kafka_split.drain_ranges(*self._offsets(topic))
        if ranges and drain:
            self._copy(topic, ranges)
        with contextlib.suppress(kafka.errors.KafkaError):
            self.admin.delete_group_offsets(self.prep.group, self._partitions(topic))
        with contextlib.suppress(kafka.errors.UnknownTopicOrPartitionError):
            _guard(f"deleting topic {topic}", lambda: self.admin.delete_topics([topic]))
        return True

    def _copy(self, topic: str, ranges: dict[int, tuple[int, int]]) -> None:
        """Each record of `ranges` to staging, acknowledged (acks=all) before the topic goes;
        a crash meanwhile copies them again (duplicates, no loss)."""
        reader = KafkaConsumer(
            bootstrap_servers=self.servers, client_id=CLIENT_ID, allow_auto_create_topics=False
        )
        producer = KafkaProducer(**PRODUCER, bootstrap_servers=self.servers)
        try:
            tps = {p: TopicPartition(topic, p) for p in ranges}
            reader.assign(list(tps.values()))
            for p, (start, _) in ranges.items():
                reader.seek(tps[p], start)
            left = {tps[p]: stop for p, (_, stop) in ranges.items()}
            futures = []
            deadline = time.monotonic() + 60
            while left and time.monotonic() < deadline:
                for tp, records in reader.poll(timeout_ms=POLL_MS, max_records=BATCH).items():
                    for r in records:
                        if tp in left and r.offset < left[tp]:
                            futures.append(
                                producer.send(self.staging, value=r.value, key=r.key,
                                              headers=r.headers)
                            )  # fmt: skip
                    if tp in left and reader.position(tp) >= left[tp]:
                        del left[tp]
            producer.flush()
            if left or not all(f.succeeded() for f in futures):
                raise BrokerError(f"topic {topic}: not all records reached staging yet")
        finally:
            reader.close(autocommit=False)
            producer.close(timeout=10)

    @_kafka_errors
    def unprepare(self) -> None:
        """Stop the splitter (its last batch committed: the group resumes there once the
        target reads the source again). Until the target has read all of staging: not
        done. Then, while the target still reads staging: not done either, but the error
        says `HANDED_BACK`, on which the preparation points the target back; once it has
        left staging, the staging topic is deleted (a consumer still subscribed to it
        would have the broker create it again)."""
        if self.splitter is not None:
            self.splitter.stop()
            self.splitter = None
        if not self.staging or self.staging not in self._topics():
            return
        left = kafka_split.waiting(*self._offsets(self.staging))
        if left:
            raise BrokerError(f"the target has not read all of {self.staging} yet ({left} left)")
        if self._holders(self.staging):
            raise BrokerError(
                f"{kafka_split.HANDED_BACK} at {self.prep.source} "
                f"(the target still reads {self.staging})"
            )
        with contextlib.suppress(kafka.errors.KafkaError):
            self.admin.delete_group_offsets(self.prep.group, self._partitions(self.staging))
        with contextlib.suppress(kafka.errors.UnknownTopicOrPartitionError):
            _guard("deleting the staging topic", lambda: self.admin.delete_topics([self.staging]))

    def status(self) -> dict[str, Any]:
        """What the splitter did (for the keeper's log and the tests)."""
        s = self.splitter
        return {
            "alive": bool(s and s.is_alive()),
            "forwarded": s.forwarded if s else 0,
            "commit_failures": s.commit_failures if s else 0,
            "routes_applied": bool(s and s.applied >= s.epoch and not s.resets),
            "last_commit_error": s.last_commit_error if s else "",
            "doing": f"{s.doing[0]} for {time.monotonic() - s.doing[1]:.1f}s" if s else "",
            "state": str(s.state) if s else "",
        }

    def close(self) -> None:
        if self.splitter is not None:
            self.splitter.stop()
            self.splitter = None
        with contextlib.suppress(Exception):
            self.probe.close()
        with contextlib.suppress(Exception):
            self.admin.close()


BROKERS["kafka"] = KafkaBroker
