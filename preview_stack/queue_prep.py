"""Queue preparations and per-key splits (pure): the models every broker plug-in shares,
the names of the objects they make, and the Kubernetes objects around them.

A platform engineer prepares a queue once (`preview-env queues prepare`, or `pulumi up`
on stack `queue.<ns>.<id>`). The preparation is a platform stack declaring:

- the preparation record, ConfigMap `preview-env-queue-<id>` (JSON `Preparation`), which
  `start` reads to know the queue's broker, its variable and how to reach the broker;
- the queue keeper (Deployment `preview-env-queue-<id>`, the project's image, the broker
  URL from the Secret by reference) which prepares the broker at start-up, reconciles the
  keys' queues against the split ConfigMaps every `POLL_SECONDS`, writes its status to
  ConfigMap `preview-env-queue-<id>-status`, and reverses the preparation when the
  record's `state` becomes `unprepared`;
- its ServiceAccount, Role (read ConfigMaps, patch its own status) and RoleBinding.

Each environment splitting the queue declares a split ConfigMap (`KeySplit`), and its
preview pod gets an init container declaring the key's queue and binding, and the
queue variable pointing at the key's queue. Broker specifics (names, arguments) are keyed
by `Preparation.type`: `rmq` here, `kafka` in the Kafka plug-in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from preview_stack import naming
from preview_stack.errors import BadInput

BrokerType = Literal["rmq", "kafka"]
# queue_type in mirrord's config -> our preparation's type.
CONFIG_TYPES: dict[str, BrokerType] = {"RMQ": "rmq", "Kafka": "kafka"}
POLL_SECONDS = 5  # the keeper's round: a removed key's queue is gone within two rounds
URL_VAR = "PREVIEW_ENV_BROKER_URL"  # the broker URL in the keeper and init containers
LABEL_QUEUE = f"{naming.DOMAIN}/queue"  # the queue id, on records, splits and status
COMPONENT_PREPARATION = "queue-preparation"
COMPONENT_SPLIT = "queue-split"
COMPONENT_STATUS = "queue-status"
RECORD_KEY = "preparation.json"
STATUS_KEY = "status.json"
SPLIT_KEY = "split.json"
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Preparation(_Frozen):
    """What a queue's preparation did, as its record says (and `start` reads)."""

    id: str
    namespace: str
    type: BrokerType
    source: str  # the original queue or topic (the target's `env` in its pod template)
    target_kind: str = ""
    target_name: str = ""
    container: str = ""
    env: str = ""  # the target container's variable holding the queue (or topic) name
    secret: str = ""  # the Secret in `namespace` holding the broker URL ...
    secret_key: str = ""  # ... under this key
    image: str = ""  # the keeper's image, also the preview pods' init container's
    exchange: str = ""  # rmq: the producers' exchange feeding `source`
    routing_key: str = ""  # rmq: the binding key of exchange -> source
    state: Literal["prepared", "unprepared"] = "prepared"
    # The target's nodeSelector, tolerations and affinity: the keeper runs where the
    # consumer may, which reaches the broker.
    placement: dict[str, Any] = Field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"{self.target_kind}/{self.target_name}"

    def objects(self) -> dict[str, str]:
        """The broker objects the preparation makes, by role (for the record and list)."""
        if self.type == "rmq":
            return {"headers_exchange": headers_exchange(self), "fallback": fallback(self)}
        return {}


class KeySplit(_Frozen):
    """One environment's split of one prepared queue: its key, its queue, its filter."""

    queue_id: str
    key: str
    queue: str  # the key's queue (rmq) or topic (kafka)
    filter: dict[str, str] = Field(min_length=1)  # header -> exact value (rmq) or regex
    mode: Literal["steal", "mirror"] = "steal"


class KeyQueueStatus(_Frozen):
    """A key's queue as the keeper last saw it (the filter: to unbind it once removed)."""

    key: str
    queue: str
    filter: dict[str, str] = Field(default_factory=dict)
    waiting: int | None = None  # messages ready in the key's queue; None: not known
    removing: bool = False  # its split is gone; the keeper is moving it back to staging


class KeeperStatus(_Frozen):
    """What the keeper last saw, written to its status ConfigMap every round."""

    state: Literal["starting", "prepared", "unprepared", "failed"] = "starting"
    error: str = ""  # why `failed` (bad input at preparation, an unreachable broker)
    bad_input: bool = False  # the failure is the preparation's config (exit 2)
    updated_at: str = ""
    keys: list[KeyQueueStatus] = Field(default_factory=list)


def source_of(pod_spec: Mapping[str, Any], container: str | None, var: str) -> tuple[str, str]:
    """(container, queue) from the target's pod template: the container (default: the
    first) and its variable `var`'s literal value, which the preview pods get replaced."""
    containers = list(pod_spec.get("containers") or [])
    names = [c.get("name", "") for c in containers]
    chosen = next((c for c in containers if c.get("name") == (container or names[0])), None)
    if chosen is None:
        raise BadInput(
            f"--container {container!r} is not a container of the target "
            f"(containers: {', '.join(names)})"
        )
    found = next((e for e in chosen.get("env") or [] if e.get("name") == var), None)
    listed = ", ".join(sorted(e.get("name", "") for e in chosen.get("env") or [])) or "none"
    if found is None:
        raise BadInput(
            f"--env {var}: container {chosen['name']!r} of the target has no such variable "
            f"(its variables: {listed})"
        )
    value = found.get("value")
    if not isinstance(value, str) or not value:
        raise BadInput(
            f"--env {var}: the target sets it from a reference, not a value; the queue's name "
            "must be a literal value in the target's pod template"
        )
    return str(chosen["name"]), value


PLACEMENT_FIELDS = ("nodeSelector", "tolerations", "affinity")


def placement_of(pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    return {f: pod_spec[f] for f in PLACEMENT_FIELDS if pod_spec.get(f)}


def parse_secret_ref(text: str) -> tuple[str, str]:
    """`SECRET:KEY` of --url-from."""
    name, _, key = text.partition(":")
    if not _SECRET_NAME.match(name) or not _SECRET_KEY.match(key):
        # Not echoed: it may be the URL itself, credentials and all, in a CI log.
        raise BadInput(
            "--url-from: use SECRET:KEY, a Secret in the namespace and its key holding the "
            "broker URL (a URL is never taken on the command line)"
        )
    return name, key


# ---------------------------------------------------------------------------- names
def record_name(queue_id: str) -> str:
    return naming.fit(f"preview-env-queue-{queue_id}")


def keeper_name(queue_id: str) -> str:
    return naming.fit(f"preview-env-queue-{queue_id}", 52)


def status_name(queue_id: str) -> str:
    return naming.fit(f"preview-env-queue-{queue_id}-status")


def split_name(queue_id: str, key: str) -> str:
    return naming.fit(f"preview-env-split-{queue_id}-{key}")


def headers_exchange(prep: Preparation) -> str:
    """rmq: the headers exchange the producers' exchange now feeds."""
    return f"preview-env.split.{prep.id}"


def fallback(prep: Preparation) -> str:
    """rmq: the fanout alternate exchange into `source` (unmatched messages: staging's)."""
    return f"preview-env.split.{prep.id}.staging"


def key_queue(prep: Preparation, key: str) -> str:
    """The key's queue (rmq) or topic (kafka): the original's name with the key."""
    return f"{prep.source}.preview-env.{key}"


def binding_arguments(split: KeySplit) -> dict[str, str]:
    """rmq: the key queue's binding to the headers exchange: all headers, exact values."""
    return {"x-match": "all", **split.filter}


def key_split(prep: Preparation, key: str, values: Mapping[str, str], mode: str) -> KeySplit:
    return KeySplit(
        queue_id=prep.id,
        key=key,
        queue=key_queue(prep, key),
        filter=dict(values),
        mode="mirror" if mode == "mirror" else "steal",
    )


def selector(component: str, queue_id: str | None = None) -> str:
    terms = naming.selector(components=(component,))
    return f"{terms},{LABEL_QUEUE}={queue_id}" if queue_id else terms


class QueueRow(_Frozen):
    """One prepared queue, as `queues list` shows it."""

    id: str
    namespace: str
    type: str = ""
    target: str = ""
    env: str = ""
    source: str = ""
    exchange: str = ""
    state: str = "unknown"  # the keeper's: starting, prepared, unprepared, failed
    error: str = ""
    keys: list[str] = Field(default_factory=list)


def queue_row(
    queue_id: str, namespace: str, prep: Preparation | None, status: KeeperStatus | None
) -> QueueRow:
    row = QueueRow(id=queue_id, namespace=namespace)
    if prep is not None:
        row = row.model_copy(
            update={
                "type": prep.type,
                "target": prep.target,
                "env": prep.env,
                "source": prep.source,
                "exchange": prep.exchange,
            }
        )
    if status is not None:
        row = row.model_copy(
            update={
                "state": status.state,
                "error": status.error,
                "keys": [k.key for k in status.keys],
            }
        )
    return row


# ------------------------------------------------------------- Kubernetes objects
def _labels(queue_id: str, component: str) -> dict[str, str]:
    return {
        naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
        naming.LABEL_COMPONENT: component,
        LABEL_QUEUE: queue_id,
    }


def url_env(prep: Preparation) -> dict[str, Any]:
    """The broker URL, by reference to the Secret: never read, never in any output."""
    return {
        "name": URL_VAR,
        "valueFrom": {"secretKeyRef": {"name": prep.secret, "key": prep.secret_key}},
    }


def record_manifest(prep: Preparation) -> dict[str, Any]:
    body = {**prep.model_dump(mode="json"), "objects": prep.objects()}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": record_name(prep.id),
            "namespace": prep.namespace,
            "labels": _labels(prep.id, COMPONENT_PREPARATION),
        },
        "data": {RECORD_KEY: json.dumps(body, sort_keys=True)},
    }


def parse_record(obj: Mapping[str, Any]) -> Preparation | None:
    """The preparation a record ConfigMap holds; None when it holds none (or garbage)."""
    text = (obj.get("data") or {}).get(RECORD_KEY)
    if not text:
        return None
    try:
        body = json.loads(text)
        body.pop("objects", None)
        return Preparation.model_validate(body)
    except ValueError:
        return None


def split_manifest(prep: Preparation, split: KeySplit, labels: Mapping[str, str]) -> dict[str, Any]:
    """The key's split ConfigMap (in the key's stack): the keeper keeps the key's queue
    while it exists and removes the queue once it is gone."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": split_name(prep.id, split.key),
            "namespace": prep.namespace,
            "labels": {**labels, **_labels(prep.id, COMPONENT_SPLIT)},
        },
        "data": {SPLIT_KEY: split.model_dump_json()},
    }


def parse_split(obj: Mapping[str, Any]) -> KeySplit | None:
    text = (obj.get("data") or {}).get(SPLIT_KEY)
    try:
        return KeySplit.model_validate_json(text) if text else None
    except ValueError:
        return None


def parse_status(obj: Mapping[str, Any] | None) -> KeeperStatus | None:
    text = ((obj or {}).get("data") or {}).get(STATUS_KEY)
    try:
        return KeeperStatus.model_validate_json(text) if text else None
    except ValueError:
        return None


def init_container(prep: Preparation, split: KeySplit) -> dict[str, Any]:
    """The preview pod's first container: declares the key's queue and binding (idempotent)
    before the preview starts, so no message of the key is consumed by staging meanwhile."""
    args = ["queues", "bind", prep.id, "--type", prep.type, "--queue", split.queue]
    for header, value in sorted(split.filter.items()):
        args += ["--match", f"{header}={value}"]
    return {
        "name": naming.fit(f"queue-{prep.id}", 63),
        "image": prep.image,
        "args": args,
        "env": [url_env(prep)],
        "securityContext": _restricted(),
    }


def _restricted() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def keeper_manifests(prep: Preparation) -> list[dict[str, Any]]:
    """The keeper and its rights: read ConfigMaps in its namespace, patch its status."""
    name, ns = keeper_name(prep.id), prep.namespace
    labels = _labels(prep.id, "queue-keeper")
    meta = {"name": name, "namespace": ns, "labels": labels}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta,
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [status_name(prep.id)],
                "verbs": ["patch", "update"],
            },
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }
    status = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            **meta,
            "name": status_name(prep.id),
            "labels": _labels(prep.id, COMPONENT_STATUS),
        },
        "data": {STATUS_KEY: KeeperStatus().model_dump_json()},
    }
    selector = {LABEL_QUEUE: prep.id, naming.LABEL_COMPONENT: "queue-keeper"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # one keeper at a time per queue
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    **prep.placement,
                    "serviceAccountName": name,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "keeper",
                            "image": prep.image,
                            "args": ["queues", "keep", prep.id, "-n", ns],
                            "env": [url_env(prep)],
                            "securityContext": _restricted(),
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    service_account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}
    return [service_account, role, binding, status, deployment]
