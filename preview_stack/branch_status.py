"""What `status` and a failed `start` say of database branches: the copy Job's outcome in
the cluster's own words (its pod's termination message, written by `preview-env db copy`).
Pure: Jobs and pods in, BranchStatus out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from preview_stack import branches, naming
from preview_stack.spec import DbBranch, EnvironmentSpec, ServiceSpec
from preview_stack.status import BranchStatus, pod_reason

CopyState = Literal["copying", "copied", "failed", "missing", "lost"]
LOST = (
    "the branch server's pod was replaced after the copy and its storage is ephemeral: "
    "the copied data is gone; run `preview-env clean` and `start` again, or use a claim "
    "(drop `storage: ephemeral`)"
)


def source_of(branch: DbBranch, service: ServiceSpec) -> str:
    variables = ", ".join(branch.variables)
    return f"{variables} of {service.display_target} in {service.namespace}"


def _termination(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in pods:
        for container in pod.get("status", {}).get("containerStatuses", []) or []:
            ended = (container.get("state") or {}).get("terminated") or {}
            if ended.get("message"):
                return str(ended["message"]).strip().splitlines()[-1]
    return None


def copy_state(
    job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]
) -> tuple[CopyState, str | None]:
    """The copy Job's state and message. A Job still running shows why its pod waits."""
    if job is None:
        return "missing", "the copy Job is gone (see `preview-env logs`)"
    conditions = {
        c.get("type"): c
        for c in job.get("status", {}).get("conditions", []) or []
        if c.get("status") == "True"
    }
    message = _termination(pods)
    if "Complete" in conditions:
        return "copied", message
    if "Failed" in conditions:
        fallback = conditions["Failed"].get("message") or conditions["Failed"].get("reason")
        return "failed", message or fallback or "the copy failed"
    waiting = [pod_reason(p) for p in pods if p.get("status", {}).get("phase") == "Pending"]
    return "copying", next((w for w in waiting if w), None)


def _started_after_copy(job: Mapping[str, Any], servers: Sequence[Mapping[str, Any]]) -> bool:
    """A server pod made after the copy completed: an emptyDir it started with is empty."""
    done = str(job.get("status", {}).get("completionTime") or "")
    return bool(done) and any(
        str(p["metadata"].get("creationTimestamp") or "") > done
        and not p["metadata"].get("deletionTimestamp")
        for p in servers
    )


def branch_statuses(
    env: EnvironmentSpec,
    jobs: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> list[BranchStatus]:
    """One line per branch of `env`, from the copy Jobs and their pods in its namespaces."""
    found: list[BranchStatus] = []
    for branch, service in env.branches():
        name = branches.job_name(env.key, branch)
        job = next(
            (
                j
                for j in jobs
                if j["metadata"]["name"] == name and j["metadata"]["namespace"] == service.namespace
            ),
            None,
        )
        here = [p for p in pods if p["metadata"]["namespace"] == service.namespace]
        own = [p for p in here if naming.labels_of(p).get("job-name") == name]
        server = {
            naming.LABEL_COMPONENT: branches.COMPONENT_SERVER,
            branches.LABEL_BRANCH: naming.label_value(branch.id),
        }
        servers = [
            p for p in here if all(naming.labels_of(p).get(k) == v for k, v in server.items())
        ]
        state, message = copy_state(job, own)
        if (
            state == "copied"
            and job is not None
            and branch.storage_size is None
            and _started_after_copy(job, servers)
        ):
            state, message = "lost", LOST
        found.append(
            BranchStatus(
                id=branch.id,
                engine=branch.engine,
                source=source_of(branch, service),
                mode=branch.mode,
                tables=[t.name for t in branch.tables],
                namespace=service.namespace,
                state=state,
                message=message,
            )
        )
    return found
