"""feature.split_queues: mirrord's shape read, and filters a mechanism cannot honour
exactly refused (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from preview_stack import config
from preview_stack.errors import BadInput
from preview_stack.queues import SplitQueue, exact_value, parse_split_queues


def test_object_and_list_shapes_read_alike() -> None:
    entry = {"queue_type": "RMQ", "message_filter": {"mirrord-session": "^pr-1$"}}
    by_id = parse_split_queues({"orders": entry})
    listed = parse_split_queues([{"id": "orders", **entry}])
    assert by_id == listed
    assert by_id["orders"].queue_mode == "steal"
    assert by_id["orders"].exact_values() == {"mirrord-session": "pr-1"}


def test_kafka_takes_any_regex_and_mirror() -> None:
    queue = SplitQueue.model_validate(
        {"queue_type": "Kafka", "message_filter": {"tenant": "^pr-[0-9]+$"}, "queue_mode": "mirror"}
    )
    assert queue.queue_mode == "mirror"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"queue_type": "SQS", "message_filter": {"k": "v"}}, "queue_type 'SQS' is not supported"),
        ({"queue_type": "RMQ", "message_filter": {"k": "pr-.*"}}, "is a regex"),
        ({"queue_type": "RMQ", "message_filter": {"x-key": "v"}}, "ignores headers named x-"),
        (
            {"queue_type": "RMQ", "message_filter": {"k": "v"}, "queue_mode": "mirror"},
            "'mirror' is not supported for RMQ",
        ),
        ({"queue_type": "Kafka", "message_filter": {"k": "("}}, "is no regex"),
        ({"queue_type": "Kafka", "message_filter": {}}, "at least 1 item"),
        ({"queue_type": "Kafka", "message_filter": {"k": "v"}, "jq_filter": "."}, "'jq_filter'"),
    ],
)
def test_refused_with_the_reason(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_split_queues({"orders": entry})
    assert message in str(caught.value)
    assert str(caught.value).startswith("orders: ")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"Orders": {}}, "queue id 'Orders' must be lowercase"),
        ([{"queue_type": "RMQ"}], "needs an id"),
        ([{"id": "a", "queue_type": "RMQ"}, {"id": "a", "queue_type": "RMQ"}], "listed twice"),
        ("orders", "must be an object keyed by queue id"),
    ],
)
def test_bad_shapes(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_split_queues(value)
    assert message in str(caught.value)


def test_exact_values() -> None:
    assert exact_value("pr-1") == "pr-1"
    assert exact_value("^pr-1$") == "pr-1"
    assert exact_value("^pr.1$") is None
    assert exact_value("") is None


def test_templated_filter_renders_the_key_and_is_no_longer_ignored(tmp_path: Path) -> None:
    path = tmp_path / "mirrord.yaml"
    path.write_text(
        "target: deployment/users\nfeature:\n  split_queues:\n    orders:\n"
        "      queue_type: RMQ\n      message_filter: {mirrord-session: '{{ key }}'}\n"
    )
    parsed = config.load(path, {"key": "pr-7"})
    assert parsed.feature.split_queues["orders"].exact_values() == {"mirrord-session": "pr-7"}
    assert "feature.split_queues" not in config.ignored_fields(parsed)


def test_config_error_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "mirrord.json"
    path.write_text('{"feature": {"split_queues": {"q": {"queue_type": "NATS"}}}}')
    with pytest.raises(BadInput, match=r"feature.split_queues: q: queue_type 'NATS'"):
        config.load(path, {"key": "k"})
