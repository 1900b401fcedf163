"""Every name, label and annotation preview-env writes, the rules they obey, and the
selectors and owner checks that read them back (one place for "is this object ours")."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

PROJECT = "preview-env"
DOMAIN = "preview-env.dev"

LABEL_KEY = f"{DOMAIN}/key"
LABEL_TARGET = f"{DOMAIN}/target"  # "<kind>-<name>" or "targetless-<name>", hashed if long
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = f"{DOMAIN}/component"  # workload | service | record
# Which stack owns an object: a hash of (backend identity, project, key). Sweeps, clean and
# the reaper touch only objects carrying their own stack's value.
LABEL_STACK = f"{DOMAIN}/stack"
MANAGED_BY = PROJECT

ANNOTATION_OWNER = f"{DOMAIN}/owner"
ANNOTATION_CREATED_AT = f"{DOMAIN}/created-at"
ANNOTATION_EXPIRES_AT = f"{DOMAIN}/expires-at"
ANNOTATION_TARGET = f"{DOMAIN}/target"  # the full target path, unhashed
ANNOTATION_IMAGE = f"{DOMAIN}/image"

ENV_KEY_VAR = "PREVIEW_ENV_KEY"
RECORD_DATA_KEY = "spec.json"

KEY_MAX = 40
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
NAME_MAX = 63


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid environment key, or None when it is."""
    if not key:
        return "the key is empty"
    if len(key) > KEY_MAX:
        return f"the key {key!r} is {len(key)} characters long (at most {KEY_MAX})"
    if not _DNS_LABEL.match(key):
        return (
            f"the key {key!r} is not a lowercase DNS label "
            "(use a-z, 0-9 and '-', starting and ending with a letter or digit)"
        )
    return None


def stack_identity(backend_id: str, key: str) -> str:
    """The owner label value of stack `key` in the backend identified by `backend_id`."""
    return _digest(f"{backend_id}\n{PROJECT}\n{key}", 20)


def _digest(text: str, size: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def fit(name: str, limit: int = NAME_MAX) -> str:
    """Shorten `name` to `limit` characters, keeping it unique with a hash suffix."""
    name = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if len(name) <= limit:
        return name
    suffix = _digest(name)
    return f"{name[: limit - len(suffix) - 1].rstrip('-')}-{suffix}"


def workload_name(workload: str, key: str) -> str:
    """`users-pr-42`: the preview Deployment of `workload` in environment `key`."""
    return fit(f"{workload}-{key}", 47)  # leaves room for ReplicaSet and pod suffixes


def service_name(service: str, key: str) -> str:
    return fit(f"{service}-{key}")


def record_name(key: str) -> str:
    return fit(f"preview-env-{key}")


# Platform stacks: what a platform engineer sets up once for every preview (a waypoint in
# front of a Service, a queue prepared for splitting). They share the project with the
# environments, and their names hold dots, which no environment key can: `kind.ns.name`.
PLATFORM_KINDS = ("waypoint", "queue")


def platform_stack(kind: str, namespace: str, name: str) -> str:
    """`waypoint.staging.orders`: the stack of platform object `kind` NAME in NAMESPACE."""
    assert kind in PLATFORM_KINDS, kind
    return f"{kind}.{namespace}.{name}"


def platform_stack_parts(stack: str) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of a platform stack's name; None for an environment's."""
    parts = stack.split(".")
    if len(parts) != 3 or parts[0] not in PLATFORM_KINDS:
        return None
    return parts[0], parts[1], parts[2]


def label_value(text: str) -> str:
    """A valid label value for `text` (hash-suffixed when too long or invalid)."""
    if len(text) <= NAME_MAX and _LABEL_VALUE.match(text):
        return text
    return fit(text)


def target_label(kind: str, name: str) -> str:
    return label_value(f"{kind}-{name}")


def image_base_name(image: str) -> str:
    """`ghcr.io/acme/users:pr-42` -> `users`: names targetless workloads."""
    last = image.rsplit("/", 1)[-1]
    last = last.split("@", 1)[0].split(":", 1)[0]
    return fit(last, 30) or "preview"


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Shell-style glob (`*`, `?`) anchored on both ends."""
    out = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{out}$")


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    """An object's labels (none: empty)."""
    labels: Mapping[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


def key_of(obj: Mapping[str, Any]) -> str:
    """The environment key an object is labelled with ("" when none). Anyone who can write
    labels can copy it: see `owned_by`."""
    return labels_of(obj).get(LABEL_KEY, "")


def is_managed(obj: Mapping[str, Any]) -> bool:
    """Labelled as made by preview-env (any backend's, any key)."""
    return labels_of(obj).get(LABEL_MANAGED_BY) == MANAGED_BY


def owned_by(obj: Mapping[str, Any], stack_id: str) -> bool:
    """Labelled with stack `stack_id` (see LABEL_STACK): the same key in another backend
    carries another stack id, and sweeps, clean and the reaper touch only their own."""
    return labels_of(obj).get(LABEL_STACK) == stack_id


def of_backend(obj: Mapping[str, Any], stack_id: Callable[[str], str]) -> bool:
    """Labelled with a key and with the stack id this backend gives that key
    (`stack_id(key)`): an object of this backend's environment of that key, or left by it."""
    key = key_of(obj)
    return bool(key) and owned_by(obj, stack_id(key))


def selector(
    *,
    key: str | None = None,
    keyed: bool = False,
    part_of: str | None = None,
    stack: str | None = None,
    components: Sequence[str] = (),
) -> str:
    """A label selector for preview-env's objects: of environment `key` (any key with
    `keyed`), part of environment `part_of`, of stack `stack`, of one of `components`."""
    terms = [f"{LABEL_MANAGED_BY}={MANAGED_BY}"]
    if key is not None:
        terms.append(f"{LABEL_KEY}={key}")
    elif keyed:
        terms.append(LABEL_KEY)
    if part_of is not None:
        terms.append(f"{LABEL_PART_OF}={part_of}")
    if stack is not None:
        terms.append(f"{LABEL_STACK}={stack}")
    if len(components) == 1:
        terms.append(f"{LABEL_COMPONENT}={components[0]}")
    elif components:
        terms.append(f"{LABEL_COMPONENT} in ({','.join(components)})")
    return ",".join(terms)
