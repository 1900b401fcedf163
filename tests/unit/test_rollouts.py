"""A preview Deployment's current template decides, never the previous revision's pods:
which ReplicaSet runs the current template, which pods are outdated, and the verdicts of
`start` (rollout_state) and `status` (summarize) during a rolling update."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from preview_stack import naming
from preview_stack.config import TargetPath
from preview_stack.errors import PreviewError
from preview_stack.inventory import LiveObjects, Selection, read_inventory, sort_out
from preview_stack.reaping import Lock
from preview_stack.results import started_pods
from preview_stack.rollouts import Rollout, is_outdated, rollout_state, rollouts_of
from preview_stack.spec import EnvironmentSpec, ServiceSpec
from preview_stack.status import PodStatus, Unfinished, summarize

NOW = dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.UTC)
KEY = "pr-42"
STACK = "stack-of-pr-42"
TARGET = naming.target_label("deployment", "users")


def labels(**extra: str) -> dict[str, str]:
    return {
        naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
        naming.LABEL_KEY: KEY,
        naming.LABEL_STACK: STACK,
        naming.LABEL_TARGET: TARGET,
        **extra,
    }


def template(image: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels()},
        "spec": {"containers": [{"name": "users", "image": image}]},
    }


def deployment(
    image: str,
    *,
    generation: int = 2,
    observed: int = 2,
    replicas: int = 1,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "users-pr-42",
            "namespace": "staging",
            "uid": "d-1",
            "generation": generation,
            "labels": labels(),
        },
        "spec": {"replicas": replicas, "template": template(image)},
        "status": {"observedGeneration": observed, "conditions": conditions or []},
    }


def replicaset(
    hash_: str, image: str, *, created: str = "2026-01-01T00:00:00Z", owner: str = "d-1"
) -> dict[str, Any]:
    rs_template = template(image)
    rs_template["metadata"]["labels"]["pod-template-hash"] = hash_
    return {
        "metadata": {
            "name": f"users-pr-42-{hash_}",
            "namespace": "staging",
            "creationTimestamp": created,
            "labels": labels(**{"pod-template-hash": hash_}),
            "ownerReferences": [{"kind": "Deployment", "uid": owner, "controller": True}],
        },
        "spec": {"template": rs_template},
    }


def pod(name: str, hash_: str | None, *, ready: bool, reason: str | None = None) -> dict[str, Any]:
    extra = {"pod-template-hash": hash_} if hash_ else {}
    waiting = {"waiting": {"reason": reason}} if reason else {"running": {}}
    return {
        "metadata": {"name": name, "namespace": "staging", "labels": labels(**extra)},
        "status": {
            "phase": "Running" if ready or not reason else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [
                {"name": "users", "ready": ready, "restartCount": 0, "state": waiting}
            ],
        },
    }


def env() -> EnvironmentSpec:
    return EnvironmentSpec(
        key=KEY,
        owner="me",
        created_at="2026-01-01T00:00:00Z",
        expires_at="2026-01-01T01:00:00Z",
        ttl_seconds=3600,
        services=[
            ServiceSpec(
                target=TargetPath.parse("deployment/users"),
                namespace="staging",
                image="ghcr.io/acme/users:new",
            )
        ],
    )


OLD, NEW = "ghcr.io/acme/users:old", "ghcr.io/acme/users:new"
OLD_RS, NEW_RS = replicaset("aaa", OLD), replicaset("bbb", NEW, created="2026-01-01T00:20:00Z")


def test_the_current_replicaset_is_the_one_running_the_deployments_template() -> None:
    (rollout,) = rollouts_of([deployment(NEW)], [OLD_RS, NEW_RS])
    assert (rollout.key, rollout.namespace, rollout.target) == (KEY, "staging", TARGET)
    assert (rollout.template_hash, rollout.replicas, rollout.stalled) == ("bbb", 1, None)
    # Not created yet (the controller has not seen the update), or another Deployment's.
    (waiting,) = rollouts_of([deployment(NEW)], [OLD_RS, replicaset("ccc", NEW, owner="x")])
    assert waiting.template_hash is None
    # A rollback reuses the old ReplicaSet; of two with the template, the oldest.
    again = replicaset("ddd", OLD, created="2026-01-01T00:25:00Z")
    assert rollouts_of([deployment(OLD)], [again, OLD_RS, NEW_RS])[0].template_hash == "aaa"
    # The controller's input is not the current template's copy: the ReplicaSet is unchanged.
    assert OLD_RS["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == "aaa"
    # Deployments that are not a preview target's (a database branch's) are not rollouts.
    branch = copy.deepcopy(deployment(NEW))
    del branch["metadata"]["labels"][naming.LABEL_TARGET]
    assert rollouts_of([branch], [NEW_RS]) == []


def test_a_stalled_rollout_counts_only_for_the_generation_the_controller_saw() -> None:
    deadline = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "users-pr-42-bbb" has timed out progressing.',
    }
    (stalled,) = rollouts_of([deployment(NEW, conditions=[deadline])], [NEW_RS])
    assert stalled.stalled is not None and stalled.stalled.startswith("ProgressDeadlineExceeded")
    (unseen,) = rollouts_of([deployment(NEW, observed=1, conditions=[deadline])], [NEW_RS])
    assert unseen.stalled is None
    quota = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "q"}
    assert rollouts_of([deployment(NEW, conditions=[quota])], [])[0].stalled == "FailedCreate: q"


def rollout(hash_: str | None = "bbb", replicas: int = 1, stalled: str | None = None) -> Rollout:
    return Rollout(KEY, "staging", "users-pr-42", TARGET, replicas, hash_, stalled)


def row(name: str, state: str, reason: str | None = None) -> PodStatus:
    return PodStatus.model_validate(
        {
            "name": name,
            "namespace": "staging",
            "target": "deployment/users",
            "image": NEW,
            "ready": state == "ready",
            "state": state,
            "phase": "Running",
            "reason": reason,
        }
    )


def test_a_rollout_is_done_when_its_current_templates_pods_are_ready() -> None:
    assert rollout_state(rollout(), [row("b", "ready")]) == ("ready", None)
    state, why = rollout_state(rollout(), [row("b", "not-ready", "ErrImageNeverPull: x")])
    assert state == "not-ready" and why == "pod b: ErrImageNeverPull: x"
    state, why = rollout_state(rollout(), [row("b", "starting", "ContainerCreating")])
    assert state == "starting" and why == "pod b: ContainerCreating"
    state, why = rollout_state(rollout(hash_=None), [])
    assert state == "starting" and why is not None and "no ReplicaSet runs its current" in why
    state, why = rollout_state(rollout(replicas=2), [row("b", "ready")])
    assert state == "starting" and why is not None and "1 of 2 pods" in why
    state, why = rollout_state(rollout(stalled="ProgressDeadlineExceeded: late"), [])
    assert (
        state == "not-ready" and why is not None and why.endswith("ProgressDeadlineExceeded: late")
    )


def test_the_previous_revisions_ready_pod_is_outdated_and_never_listed_by_start() -> None:
    rollouts = rollouts_of([deployment(NEW)], [OLD_RS, NEW_RS])
    old, new = pod("users-old", "aaa", ready=True), pod("users-new", "bbb", ready=False)
    job_pod = pod("users-job", None, ready=True)  # a CronJob preview's: no template hash
    assert is_outdated(old, rollouts) and not is_outdated(new, rollouts)
    assert not is_outdated(job_pod, rollouts) and not is_outdated(old, [])
    listed = started_pods(env(), [old, new], STACK, rollouts)
    assert [(p.name, p.ready) for p in listed] == [("users-new", False)]
    assert [p.name for p in started_pods(env(), [old, new], STACK)] == ["users-new", "users-old"]


def summary(
    pods: list[dict[str, Any]], deployments: list[dict[str, Any]], replicasets: list[Any]
) -> Any:
    (found,) = summarize(
        specs={KEY: env()},
        pods=pods,
        stacks={KEY: False},
        now=NOW,
        rollouts=rollouts_of(deployments, replicasets),
    )
    return found


def test_status_judges_the_current_template_during_a_rolling_update() -> None:
    old = pod("users-old", "aaa", ready=True)
    # The update is not picked up yet: the old pod alone is Ready, the environment is not.
    unseen = summary([old], [deployment(NEW, observed=1)], [OLD_RS])
    assert unseen.state == "starting" and "no ReplicaSet runs its current" in unseen.reason
    assert [(p.name, p.outdated, p.state) for p in unseen.pods] == [("users-old", True, "ready")]
    # The new pod cannot pull its image: not-ready with the kubelet's reason.
    failing = pod("users-new", "bbb", ready=False, reason="ErrImageNeverPull")
    broken = summary([old, failing], [deployment(NEW)], [OLD_RS, NEW_RS])
    assert broken.state == "not-ready" and broken.reason == "pod users-new: ErrImageNeverPull"
    # The new pod on its way: starting; once Ready: ready.
    coming = summary([old, pod("users-new", "bbb", ready=False)], [deployment(NEW)], [OLD_RS])
    assert coming.state == "starting"
    done = summary([old, pod("users-new", "bbb", ready=True)], [deployment(NEW)], [NEW_RS])
    assert done.state == "ready" and [p.outdated for p in done.pods] == [False, True]
    # An outdated pod that crashes does not make the rolled-out environment not-ready.
    crashed = pod("users-old", "aaa", ready=False, reason="CrashLoopBackOff")
    fine = summary([crashed, pod("users-new", "bbb", ready=True)], [deployment(NEW)], [NEW_RS])
    assert fine.state == "ready"
    # Without the Deployments (no rights to list them), the pods alone decide, as before.
    (unknown,) = summarize(specs={KEY: env()}, pods=[old], stacks={KEY: False}, now=NOW)
    assert unknown.state == "ready" and not unknown.pods[0].outdated


class Stacks:
    def environments(self) -> Mapping[str, bool]:
        return {KEY: False}

    def specs(self, keys: Iterable[str]) -> Mapping[str, EnvironmentSpec | PreviewError | None]:
        return {KEY: env()}

    def owner(self, key: str, spec: EnvironmentSpec | PreviewError | None) -> str | None:
        return "me"

    def unfinished(self, key: str) -> Unfinished:
        return Unfinished()

    def lock_holders(self, key: str) -> Sequence[Lock]:
        return []


def test_status_reads_the_rollouts_of_its_own_deployments_only() -> None:
    elsewhere = copy.deepcopy(deployment(NEW))
    elsewhere["metadata"].update(namespace="other", uid="d-2")
    foreign = copy.deepcopy(deployment(OLD))
    foreign["metadata"]["labels"][naming.LABEL_STACK] = "another-backend"
    live = LiveObjects(
        pods=[pod("users-old", "aaa", ready=True)],
        deployments=[deployment(NEW), elsewhere, foreign],
        replicasets=[OLD_RS, NEW_RS],
    )
    inventory = read_inventory(Stacks(), Selection())
    found = sort_out(inventory, live, Selection(), lambda key: STACK)
    assert [(r.namespace, r.template_hash) for r in found.rollouts] == [("staging", "bbb")]
