"""Kafka topics split by key (pure): topic names, the routing decision per record, the
target's patch and the offset arithmetic of the hand-offs.

Kafka cannot route by header, so a prepared topic gets a splitter (in the keeper, see
adapters.queues.kafka) that consumes the original topic and produces each record to the
topics its headers choose:

- the key's topic (`<topic>.preview-env.<key>`, owned by the key) for each live split
  whose filter matches: every filter header present with a value matching its regex
  (`re.search`, as mirrord's regexes are unanchored; a repeated header matches when any of
  its values does; a value that is not UTF-8 matches nothing);
- the staging topic (`<topic>.preview-env-staging`), which the target reads once the
  preparation patched its topic variable, when no `steal` split matched (a `mirror` split
  gets a copy and staging keeps the record).

Hand-offs without loss or duplicates rest on one choice: the splitter consumes the original
topic **as a member of the target's own consumer group**. Kafka then hands each partition
to one member at a time and keeps one committed offset per partition for the group:

- prepare: the patched target's pods subscribe the staging topic and leave the original;
  the group hands the original's partitions to the splitter, which starts exactly at the
  offsets the target committed (`start_offset`). Before it produces anything the splitter
  commits offset 0 of the staging topic for the group (`reset_to_beginning`), so the target
  reads staging from its beginning whatever its `auto.offset.reset`.
- steady state: the splitter commits a batch's offsets only after every record of it was
  acknowledged (acks=all, flush): a crash re-reads at most the batch in flight (duplicates
  to its destinations), never loses one.
- a key's topic is created, and its group offsets set to 0, before a record is routed to
  it; once its split is gone the key's records go to staging again, and when no member of
  the group holds the key's topic any more (the preview pod left), what the preview did not
  consume (`drain_ranges`) is copied to staging, then the topic is deleted.
- unprepare: the splitter stops and commits where it stopped (the group's offsets on the
  original topic, which the target resumes from once pointed back); the keeper reports
  unprepared only when the target has consumed all of staging (`staging_consumed`), so the
  patch is reverted with nothing left behind.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TOPIC_MAX = 249  # Kafka's limit on a topic name
_TOPIC = re.compile(r"^[a-zA-Z0-9._-]+$")
KEY_INFIX = ".preview-env."
STAGING_SUFFIX = ".preview-env-staging"

Headers = Sequence[tuple[str, bytes | None]]


# ---------------------------------------------------------------------------- names
def valid_topic(name: str) -> bool:
    return 0 < len(name) <= TOPIC_MAX and name not in (".", "..") and bool(_TOPIC.match(name))


def _fit(name: str) -> str:
    """`name` within Kafka's limit, kept unique by a hash of the whole name."""
    if len(name) <= TOPIC_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: TOPIC_MAX - len(digest) - 1]}-{digest}"


def check_source(topic: str) -> str:
    if not valid_topic(topic):
        raise ValueError(
            f"topic {topic!r} is not a Kafka topic name (letters, digits, '.', '_', '-', "
            f"at most {TOPIC_MAX})"
        )
    if KEY_INFIX in topic or topic.endswith(STAGING_SUFFIX):
        raise ValueError(f"topic {topic!r} is already a split topic of preview-env")
    return topic


def key_topic(source: str, key: str) -> str:
    """The key's topic: `<source>.preview-env.<key>` (hashed to fit 249 characters)."""
    return _fit(f"{source}{KEY_INFIX}{key}")


def staging_topic(source: str) -> str:
    """The topic staging's consumer (the target) reads while the source is split."""
    return _fit(f"{source}{STAGING_SUFFIX}")


# -------------------------------------------------------------------------- routing
@dataclass(frozen=True)
class Route:
    """One live split as the splitter applies it."""

    key: str
    topic: str
    filter: Mapping[str, str]
    mirror: bool = False


@dataclass(frozen=True)
class Destinations:
    keys: tuple[str, ...]  # the key topics the record goes to
    staging: bool  # and whether staging gets it


STAGING_ONLY = Destinations(keys=(), staging=True)


def _values(headers: Headers) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for name, raw in headers:
        if raw is None:
            continue
        try:
            values.setdefault(name, []).append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return values


def _matches(filter_: Mapping[str, str], values: Mapping[str, list[str]]) -> bool:
    return all(
        any(re.search(pattern, v) for v in values.get(header, ()))
        for header, pattern in filter_.items()
    )


def matches(filter_: Mapping[str, str], headers: Headers) -> bool:
    """mirrord's semantics: every filter header present, its value matching the regex."""
    return _matches(filter_, _values(headers))


def route(headers: Headers, routes: Iterable[Route]) -> Destinations:
    """Where one record goes: each matching key's topic; staging unless a `steal` matched."""
    routes = tuple(routes)
    if not routes:
        return STAGING_ONLY
    values = _values(headers)
    chosen = [r for r in routes if _matches(r.filter, values)]
    return Destinations(keys=tuple(r.topic for r in chosen), staging=all(r.mirror for r in chosen))


# ---------------------------------------------------------------------- the target
def target_patch(container: str, env: str, topic: str) -> dict[str, Any]:
    """The pod template change the preparation owns: the target's topic variable names
    `topic`, the staging topic (or the source again, at unprepare); containers and env
    merge by name."""
    return {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": container, "env": [{"name": env, "value": topic}]}]
                }
            }
        }
    }


# ------------------------------------------------------------------ offset arithmetic
def start_offset(committed: int | None, earliest: int) -> int:
    """Where the splitter starts a partition of the source: where the group stopped; with
    no commit (or one the retention removed), the earliest record (lose nothing)."""
    return earliest if committed is None or committed < earliest else committed


def reset_to_beginning(
    committed: Mapping[int, int | None], earliest: Mapping[int, int], end: Mapping[int, int]
) -> dict[int, int]:
    """Offsets to commit for the group on a topic it must read from the beginning (staging,
    a key's new topic): each partition without a commit, or with one left from an earlier
    topic of that name (beyond the end), goes to its earliest offset."""
    return {
        p: earliest.get(p, 0)
        for p in end
        if committed.get(p) is None or (committed[p] or 0) > end[p]
    }


def drain_ranges(
    committed: Mapping[int, int | None], earliest: Mapping[int, int], end: Mapping[int, int]
) -> dict[int, tuple[int, int]]:
    """What a key's topic still holds for nobody: per partition [from, to) between the
    group's commit (the preview consumed up to it) and the end, to be copied to staging."""
    ranges = {}
    for p, stop in end.items():
        start = start_offset(committed.get(p), earliest.get(p, 0))
        if start < stop:
            ranges[p] = (start, stop)
    return ranges


def waiting(committed: Mapping[int, int | None], earliest: Mapping[int, int],
            end: Mapping[int, int]) -> int:  # fmt: skip
    """Records waiting in a topic for the group (its lag)."""
    return sum(b - a for a, b in drain_ranges(committed, earliest, end).values())


def staging_consumed(
    committed: Mapping[int, int | None], earliest: Mapping[int, int], end: Mapping[int, int]
) -> bool:
    """Unprepare may point the target back: it has read all of staging."""
    return waiting(committed, earliest, end) == 0


def holders(description: Mapping[str, Any], topic: str, *, but: str = "") -> list[str]:
    """Members of a described group (kafka-python's `describe_groups` shape) subscribed to
    `topic` or assigned a partition of it, except member `but`. A subscribed member without
    partitions (mid-rebalance) counts: its client would have the broker create the topic
    again if it were deleted now."""
    found = []
    for member in description.get("members") or []:
        if member.get("member_id") == but:
            continue
        assignment = member.get("member_assignment") or {}
        topics = {t.get("topic") for t in assignment.get("assigned_partitions") or []}
        topics |= set((member.get("member_metadata") or {}).get("topics") or [])
        if topic in topics:
            found.append(str(member.get("member_id")))
    return found


# ------------------------------------------------------- the preparation's phases
# The keeper's word (its status error, while it waits) that the target may be pointed back.
HANDED_BACK = "staging is read and the splitter stopped: point the target back"


def source_from(value: str, recorded: str | None) -> str:
    """The original topic, from the target's variable: once patched it names the staging
    topic, and the record of the preparation keeps the original."""
    if recorded and value == staging_topic(recorded):
        return recorded
    if value.endswith(STAGING_SUFFIX):
        raise ValueError(
            f"the target reads {value!r}, a staging topic of preview-env, and no preparation "
            "records its original topic"
        )
    return value


def target_topic(
    source: str, *, state: str, keeper_state: str | None, current: str, keeper_error: str = ""
) -> str | None:
    """What the preparation's patch sets the target's variable to (None: no patch yet).

    Prepare runs twice: first the keeper (its splitter joins the target's group and
    commits the beginning of staging), then, once it reports `prepared`, the patch. Unprepare
    too: first the keeper stops the splitter and waits until staging is read, then, once it
    reports that (`HANDED_BACK`, or `unprepared`), the patch points the target back (kept
    on delete), and the keeper deletes the staging topic once the target has left it (a
    consumer still subscribed would have the broker create it again). A patch once
    applied stays declared whatever the keeper says meanwhile: dropping it would remove
    the variable."""
    staging = staging_topic(source)
    if state == "unprepared":
        if keeper_state == "unprepared" or keeper_error.startswith(HANDED_BACK):
            return source
        return staging if current == staging else None
    if keeper_state == "prepared" or current == staging:
        return staging
    return None
