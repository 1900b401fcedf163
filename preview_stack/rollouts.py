"""Which of a preview Deployment's pods run its current pod template, and whether that
template is rolled out (pure: the reads come in).

Pulumi's Deployment await can report an update done while the new pods are not Ready: it
may judge a status that predates the update, whose ReplicaSet is the old one, still Ready
during the rolling update (tests/e2e/test_real_previews.py makes that deterministic). So
`start` and `status` judge the current template themselves. Its pods are those of the
ReplicaSet whose pod template is the Deployment's, found as the deployment controller
finds it (the template without the `pod-template-hash` label, the oldest such ReplicaSet);
the other ReplicaSets' pods are an older revision on its way out (`outdated`), never a
reason to call the environment ready.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from preview_stack import naming

TEMPLATE_HASH = "pod-template-hash"
PodState = Literal["starting", "ready", "not-ready"]


class PodFacts(Protocol):
    """What a rollout's verdict reads of a pod (status.PodStatus)."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> PodState: ...
    @property
    def reason(self) -> str | None: ...


@dataclass(frozen=True)
class Rollout:
    """One preview Deployment as the cluster shows it."""

    key: str
    namespace: str
    name: str
    target: str  # its target label (naming.LABEL_TARGET)
    replicas: int
    # The pod-template-hash of the ReplicaSet running the current template; None: the
    # controller has not created it yet (the rollout has not started).
    template_hash: str | None
    # Why the controller says the rollout cannot progress (ProgressDeadlineExceeded, a
    # ReplicaFailure such as a quota), once it observed the current generation.
    stalled: str | None = None

    def owns(self, pod: Mapping[str, Any]) -> bool:
        """`pod` is of this Deployment (its environment, namespace and target)."""
        meta = pod.get("metadata") or {}
        return (
            naming.key_of(pod) == self.key
            and meta.get("namespace") == self.namespace
            and naming.labels_of(pod).get(naming.LABEL_TARGET) == self.target
            and TEMPLATE_HASH in naming.labels_of(pod)
        )

    def is_current(self, pod: Mapping[str, Any]) -> bool:
        """`pod` runs this Deployment's current template."""
        hash_ = naming.labels_of(pod).get(TEMPLATE_HASH)
        return self.template_hash is not None and hash_ == self.template_hash


def rollouts_of(
    deployments: Iterable[Mapping[str, Any]], replicasets: Iterable[Mapping[str, Any]]
) -> list[Rollout]:
    """The rollouts of preview Deployments (labelled with a key and a target), each with the
    ReplicaSet of its current template among `replicasets` (those it owns)."""
    owned: dict[str, list[Mapping[str, Any]]] = {}
    for rs in replicasets:
        for ref in (rs.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("kind") == "Deployment" and ref.get("controller"):
                owned.setdefault(str(ref.get("uid")), []).append(rs)
    found = []
    for deployment in deployments:
        meta = deployment.get("metadata") or {}
        key = naming.key_of(deployment)
        target = naming.labels_of(deployment).get(naming.LABEL_TARGET)
        if not key or not target:
            continue
        spec = deployment.get("spec") or {}
        template = spec.get("template") or {}
        current = sorted(
            (rs for rs in owned.get(str(meta.get("uid")), []) if _template_of(rs) == template),
            key=lambda rs: (rs["metadata"].get("creationTimestamp") or "", rs["metadata"]["name"]),
        )
        hash_ = naming.labels_of(current[0]).get(TEMPLATE_HASH) if current else None
        replicas = spec.get("replicas")
        found.append(
            Rollout(
                key=key,
                namespace=str(meta.get("namespace")),
                name=str(meta.get("name")),
                target=target,
                replicas=1 if replicas is None else int(replicas),
                template_hash=hash_,
                stalled=_stalled(deployment),
            )
        )
    return found


def rollout_of(pod: Mapping[str, Any], rollouts: Sequence[Rollout]) -> Rollout | None:
    """The Deployment rollout `pod` belongs to (None: a Job's pod, or one not known)."""
    return next((r for r in rollouts if r.owns(pod)), None)


def is_outdated(pod: Mapping[str, Any], rollouts: Sequence[Rollout]) -> bool:
    """`pod` is of a Deployment's older template (on its way out)."""
    rollout = rollout_of(pod, rollouts)
    return rollout is not None and not rollout.is_current(pod)


def rollout_state(rollout: Rollout, current: Sequence[PodFacts]) -> tuple[PodState, str | None]:
    """Whether `rollout` is done, from its current template's pods (`current`, as
    status.pod_row shows them): `ready` when as many are Ready as it wants, `not-ready`
    with the kubelet's (or the controller's) reason when one is failing or the rollout
    stalled, else `starting` with what it waits for."""
    where = f"deployment {rollout.namespace}/{rollout.name}"
    failing = [p for p in current if p.state == "not-ready"]
    if failing:
        return "not-ready", f"pod {failing[0].name}: {failing[0].reason}"
    if rollout.stalled:
        return "not-ready", f"{where}: {rollout.stalled}"
    if rollout.template_hash is None:
        return "starting", f"{where}: no ReplicaSet runs its current pod template yet"
    ready = [p for p in current if p.state == "ready"]
    if len(ready) >= rollout.replicas:
        return "ready", None
    starting = [p for p in current if p.state == "starting"]
    if starting:
        return "starting", f"pod {starting[0].name}: {starting[0].reason}"
    return "starting", (
        f"{where}: {len(ready)} of {rollout.replicas} pods of its current template Ready"
    )


def _template_of(replicaset: Mapping[str, Any]) -> Any:
    """A ReplicaSet's pod template without the hash label the controller added."""
    template = copy.deepcopy((replicaset.get("spec") or {}).get("template") or {})
    labels = (template.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(TEMPLATE_HASH, None)
    return template


def _stalled(deployment: Mapping[str, Any]) -> str | None:
    """The controller's reason the current generation cannot roll out, if it says one."""
    meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    if (status.get("observedGeneration") or 0) < (meta.get("generation") or 0):
        return None  # its conditions are about an earlier generation
    for condition in status.get("conditions") or []:
        kind, state = condition.get("type"), condition.get("status")
        if (kind == "Progressing" and state == "False") or (
            kind == "ReplicaFailure" and state == "True"
        ):
            reason = condition.get("reason") or kind
            message = condition.get("message")
            return f"{reason}: {message}" if message else str(reason)
    return None
