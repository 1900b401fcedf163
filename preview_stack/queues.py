"""mirrord's `feature.split_queues`, read and checked (pure).

A split queue sends a key's messages to the key's preview and every other message to
staging. How it is split depends on the broker, and each mechanism honours only some
filters exactly, so a filter it cannot honour is refused here, before anything is created:

- RabbitMQ (`RMQ`): a headers exchange with an alternate exchange, prepared once per queue.
  A binding matches a header by exact value only, and the broker ignores binding arguments
  whose names start with `x-` (such a filter would match every message). So: exact values
  (`value` or `^value$` with nothing special inside), no `x-` header, `steal` only (a
  message matched by a preview's binding does not reach the alternate exchange).
- Kafka (`Kafka`): a splitter consuming the original topic; any regex, `steal` or `mirror`.

mirrord accepts the queues as an object keyed by queue id or as a list of entries with an
`id`; both are read into the same mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from preview_stack.errors import BadInput
from preview_stack.queue_prep import CONFIG_TYPES, Preparation

if TYPE_CHECKING:
    from preview_stack.config import TargetPath
    from preview_stack.spec import QueueUse

QUEUE_TYPES = ("RMQ", "Kafka")
# A queue id names Kubernetes objects (the preparation), so it is a DNS label.
_QUEUE_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")
# Characters that make a regex more than a literal value.
_REGEX_SPECIAL = re.compile(r"[.^$*+?()\[\]{}|\\]")


class SplitQueue(BaseModel):
    """One queue to split: its broker kind, the header filter (all must match), the mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_type: str
    message_filter: dict[str, str] = Field(min_length=1)
    queue_mode: Literal["steal", "mirror"] = "steal"

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.model_fields) - {"id"})
            if unknown:
                raise ValueError(
                    f"{', '.join(map(repr, unknown))} is not supported in a split queue "
                    f"(use: {', '.join(cls.model_fields)})"
                )
            value = {k: v for k, v in value.items() if k != "id"}
        return value

    @field_validator("queue_type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value not in QUEUE_TYPES:
            raise ValueError(
                f"queue_type {value!r} is not supported (supported: {', '.join(QUEUE_TYPES)})"
            )
        return value

    @model_validator(mode="after")
    def _honoured_exactly(self) -> SplitQueue:
        for header, pattern in self.message_filter.items():
            if not header:
                raise ValueError("message_filter: a header name is empty")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"message_filter {header!r}: {pattern!r} is no regex ({exc})"
                ) from None
            if self.queue_type == "RMQ":
                _check_rabbitmq(header, pattern, self.queue_mode)
        return self

    def exact_values(self) -> dict[str, str]:
        """RabbitMQ's binding arguments: each header's exact value (`^v$` becomes `v`)."""
        return {h: exact_value(p) or p for h, p in self.message_filter.items()}


def _check_rabbitmq(header: str, pattern: str, mode: str) -> None:
    if header.lower().startswith("x-"):
        raise ValueError(
            f"message_filter {header!r}: RabbitMQ's headers exchange ignores headers named "
            "x-..., so this filter would match every message; filter on another header"
        )
    if exact_value(pattern) is None:
        raise ValueError(
            f"message_filter {header!r}: {pattern!r} is a regex, and RabbitMQ splits by exact "
            "header value only; write the value itself (or ^value$)"
        )
    if mode != "steal":
        raise ValueError(
            "queue_mode 'mirror' is not supported for RMQ (a preview's binding takes its "
            "messages from staging); use steal, or Kafka for mirroring"
        )


def exact_value(pattern: str) -> str | None:
    """The literal a pattern stands for (`value` or `^value$`); None when it is more."""
    inner = pattern[1:-1] if pattern.startswith("^") and pattern.endswith("$") else pattern
    if not inner or _REGEX_SPECIAL.search(inner):
        return None
    return inner


def check_queue_id(queue_id: object) -> str:
    if not isinstance(queue_id, str) or not _QUEUE_ID.match(queue_id):
        raise ValueError(
            f"queue id {queue_id!r} must be lowercase letters, digits and '-' "
            "(at most 42), as it names the queue's preparation"
        )
    return queue_id


def parse_split_queues(value: Any) -> dict[str, SplitQueue]:
    """mirrord's object-or-list shape, as queue id -> SplitQueue (raises ValueError)."""
    if value is None:
        return {}
    if isinstance(value, list):
        entries: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise ValueError("each split queue in a list needs an id")
            if item["id"] in entries:
                raise ValueError(f"split queue {item['id']!r} is listed twice")
            entries[item["id"]] = item
        value = entries
    if not isinstance(value, dict):
        raise ValueError("split_queues must be an object keyed by queue id, or a list")
    queues = {}
    for queue_id, entry in value.items():
        check_queue_id(queue_id)
        try:
            queues[queue_id] = SplitQueue.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ValueError(f"{queue_id}: {message}") from None
    return queues


def queue_uses(
    queues: Mapping[str, SplitQueue],
    prepared: Mapping[str, Preparation],
    target: TargetPath | None,
    namespace: str,
) -> list[QueueUse]:
    """Each split queue of the config with its preparation; BadInput when a queue is not
    prepared in `namespace`, is prepared for another broker type or another target."""
    from preview_stack.spec import QueueUse  # the spec imports the config, which this

    uses = []
    for queue_id, queue in sorted(queues.items()):
        prep = prepared.get(queue_id)
        where = f"feature.split_queues: queue {queue_id!r}"
        if prep is None or prep.state != "prepared":
            listed = ", ".join(sorted(i for i, p in prepared.items() if p.state == "prepared"))
            raise BadInput(
                f"{where} is not prepared in namespace {namespace} (prepared there: "
                f"{listed or 'none'}); a platform engineer prepares it once with "
                f"`preview-env queues prepare {queue_id} -t KIND/NAME -n {namespace} ...`"
            )
        if CONFIG_TYPES[queue.queue_type] != prep.type:
            raise BadInput(
                f"{where} is a {queue.queue_type} queue in the config, but it is prepared "
                f"in {namespace} as {prep.type}; fix queue_type"
            )
        if target is None or (target.kind, target.name) != (prep.target_kind, prep.target_name):
            shown = f"{target.kind}/{target.name}" if target else "no target"
            raise BadInput(
                f"{where} is prepared for {prep.target}, not {shown}; preview {prep.target} "
                "or prepare the queue for this target"
            )
        if target.container and target.container != prep.container:
            raise BadInput(
                f"{where} is read by container {prep.container!r} of {prep.target}, not "
                f"{target.container!r}"
            )
        values = queue.exact_values() if prep.type == "rmq" else dict(queue.message_filter)
        uses.append(QueueUse(preparation=prep, filter=values, mode=queue.queue_mode))
    return uses
