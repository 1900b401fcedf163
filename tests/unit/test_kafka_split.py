"""Kafka splitting's pure core: names, routing per record, the target's patch, offsets."""

from __future__ import annotations

import pytest

from preview_stack import kafka_split as ks
from preview_stack.kafka_split import Destinations, Route

A = Route(key="a", topic="orders.preview-env.a", filter={"mirrord-session": "^a$"})
B = Route(key="b", topic="orders.preview-env.b", filter={"mirrord-session": "^b$"})
B_MIRROR = Route(key="b", topic=B.topic, filter=B.filter, mirror=True)


def h(**values: str) -> list[tuple[str, bytes | None]]:
    return [(k.replace("_", "-"), v.encode()) for k, v in values.items()]


# ---------------------------------------------------------------------------- names
def test_key_and_staging_topics_are_valid_and_distinct() -> None:
    assert ks.key_topic("orders", "pr-42") == "orders.preview-env.pr-42"
    assert ks.staging_topic("orders") == "orders.preview-env-staging"
    assert ks.key_topic("orders", "staging") != ks.staging_topic("orders")
    for name in (ks.key_topic("orders", "pr-42"), ks.staging_topic("orders")):
        assert ks.valid_topic(name)


def test_long_names_are_hashed_within_kafkas_limit() -> None:
    source = "t" * 240
    one, two = ks.key_topic(source, "key-one"), ks.key_topic(source, "key-two")
    assert len(one) == len(two) == ks.TOPIC_MAX
    assert one != two
    assert ks.valid_topic(one) and ks.valid_topic(ks.staging_topic(source))


@pytest.mark.parametrize(
    "topic",
    ["", ".", "..", "has space", "a/b", "x" * 250, "orders.preview-env.k", "o.preview-env-staging"],
)
def test_check_source_refuses(topic: str) -> None:
    with pytest.raises(ValueError):
        ks.check_source(topic)


def test_check_source_accepts_a_plain_topic() -> None:
    assert ks.check_source("shop.orders_v2-x") == "shop.orders_v2-x"


# -------------------------------------------------------------------------- routing
@pytest.mark.parametrize(
    ("filter_", "headers", "expected"),
    [
        ({"s": "^a$"}, [("s", b"a")], True),
        ({"s": "^a$"}, [("s", b"ab")], False),
        ({"s": "a"}, [("s", b"xay")], True),  # unanchored, as mirrord's regexes
        ({"s": "a"}, [], False),  # the header must be present
        ({"s": "a"}, [("s", None)], False),
        ({"s": "a"}, [("s", b"\xff")], False),  # not UTF-8: matches nothing
        ({"s": "a", "t": "^1"}, [("s", b"a")], False),  # all headers must match
        ({"s": "a", "t": "^1"}, [("s", b"a"), ("t", b"12")], True),
        ({"s": "^a$"}, [("s", b"x"), ("s", b"a")], True),  # a repeated header: any value
        ({"s": ".*"}, [("S", b"a")], False),  # header names are case-sensitive
    ],
)
def test_matches(filter_: dict[str, str], headers: ks.Headers, expected: bool) -> None:
    assert ks.matches(filter_, headers) is expected


@pytest.mark.parametrize(
    ("routes", "headers", "expected"),
    [
        ([A, B], h(mirrord_session="a"), Destinations(keys=(A.topic,), staging=False)),
        ([A, B], h(mirrord_session="b"), Destinations(keys=(B.topic,), staging=False)),
        ([A, B], h(mirrord_session="c"), Destinations(keys=(), staging=True)),
        ([A, B], [], Destinations(keys=(), staging=True)),
        ([A, B_MIRROR], h(mirrord_session="b"), Destinations(keys=(B.topic,), staging=True)),
        ([], h(mirrord_session="a"), Destinations(keys=(), staging=True)),
    ],
    ids=["key-a", "key-b", "other-key", "no-header", "mirror", "no-split"],
)
def test_route(routes: list[Route], headers: ks.Headers, expected: Destinations) -> None:
    assert ks.route(headers, routes) == expected


def test_route_overlapping_filters_go_to_every_matching_key() -> None:
    wide = Route(key="w", topic="orders.preview-env.w", filter={"mirrord-session": "."})
    assert ks.route(h(mirrord_session="a"), [A, wide]) == Destinations(
        keys=(A.topic, wide.topic), staging=False
    )


# ---------------------------------------------------------------------- the target
def test_target_patch_points_the_variable_at_staging() -> None:
    patch = ks.target_patch("app", "TOPIC", ks.staging_topic("orders"))
    assert patch == {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "env": [{"name": "TOPIC", "value": "orders.preview-env-staging"}],
                        }
                    ]
                }
            }
        }
    }


# ------------------------------------------------------------------ offset arithmetic
@pytest.mark.parametrize(
    ("committed", "earliest", "expected"),
    [(None, 0, 0), (7, 0, 7), (3, 5, 5), (None, 4, 4)],
    ids=["no-commit", "where-the-group-stopped", "retention-removed-it", "no-commit-retained"],
)
def test_start_offset(committed: int | None, earliest: int, expected: int) -> None:
    assert ks.start_offset(committed, earliest) == expected


def test_reset_to_beginning_only_where_no_commit_or_a_stale_one() -> None:
    committed = {0: None, 1: 3, 2: 50}
    end = {0: 0, 1: 10, 2: 10}
    assert ks.reset_to_beginning(committed, {0: 0, 1: 0, 2: 0}, end) == {0: 0, 2: 0}


def test_drain_ranges_and_waiting() -> None:
    committed = {0: 4, 1: None, 2: 9}
    earliest = {0: 0, 1: 2, 2: 0}
    end = {0: 10, 1: 5, 2: 9}
    assert ks.drain_ranges(committed, earliest, end) == {0: (4, 10), 1: (2, 5)}
    assert ks.waiting(committed, earliest, end) == 9
    assert not ks.staging_consumed(committed, earliest, end)
    assert ks.staging_consumed({0: 10, 1: 5, 2: 9}, earliest, end)


def test_holders_of_a_topic_except_the_splitter() -> None:
    def member(mid: str, *topics: str) -> dict[str, object]:
        parts = [{"topic": t, "partitions": [0]} for t in topics]
        return {"member_id": mid, "member_assignment": {"assigned_partitions": parts}}

    group = {
        "members": [
            member("splitter", "orders", "orders.preview-env.a"),
            member("preview-a", "orders.preview-env.a"),
            member("staging", "orders.preview-env-staging"),
            {"member_id": "joining", "member_assignment": None},
            {  # subscribed, no partitions yet (a rebalance): still reading it
                "member_id": "preview-b",
                "member_metadata": {"topics": ["orders.preview-env.b"]},
                "member_assignment": {"assigned_partitions": []},
            },
        ]
    }
    assert ks.holders(group, "orders.preview-env.a", but="splitter") == ["preview-a"]
    assert ks.holders(group, "orders", but="splitter") == []
    assert ks.holders(group, "orders.preview-env.b") == ["preview-b"]
    assert ks.holders({}, "orders") == []


# ------------------------------------------------------- the preparation's phases
STAGING = "orders.preview-env-staging"


@pytest.mark.parametrize(
    ("state", "keeper", "current", "expected"),
    [
        ("prepared", None, "orders", None),  # first apply: the keeper only
        ("prepared", "starting", "orders", None),
        ("prepared", "prepared", "orders", STAGING),  # second apply: the patch
        ("prepared", "failed", STAGING, STAGING),  # once applied, kept
        ("unprepared", "prepared", STAGING, STAGING),  # the keeper drains first
        ("unprepared", "unprepared", STAGING, "orders"),  # then the target points back
        ("unprepared", "unprepared", "orders", "orders"),
        ("unprepared", "failed", "orders", None),  # never patched
    ],
)
def test_target_topic_phases(
    state: str, keeper: str | None, current: str, expected: str | None
) -> None:
    assert ks.target_topic("orders", state=state, keeper_state=keeper, current=current) == expected


def test_target_topic_back_once_the_keeper_has_handed_staging_back() -> None:
    waiting = "the target has not read all of orders.preview-env-staging yet (3 left)"
    handed = f"{ks.HANDED_BACK} (the target still reads orders.preview-env-staging)"
    for error, expected in ((waiting, STAGING), (handed, "orders")):
        got = ks.target_topic(
            "orders", state="unprepared", keeper_state="failed", current=STAGING,
            keeper_error=error,
        )  # fmt: skip
        assert got == expected


def test_source_from_a_patched_target_is_the_recorded_topic() -> None:
    assert ks.source_from("orders", None) == "orders"
    assert ks.source_from(STAGING, "orders") == "orders"
    with pytest.raises(ValueError, match="no preparation records"):
        ks.source_from(STAGING, None)
