"""What `status` shows, computed from the backend's specs, live pods and stack summaries (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from preview_stack import naming, routing
from preview_stack.spec import EnvironmentSpec
from preview_stack.ttl import parse_rfc3339, remaining

State = Literal["live", "updating", "failed", "expired", "unknown"]


class PodStatus(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)
    name: str
    namespace: str
    target: str
    image: str
    ready: bool
    phase: str
    reason: str | None = None
    traffic: str | None = Field(default=None, description="how requests reach this pod")


class EnvironmentStatus(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)
    key: str
    state: State
    owner: str | None = None
    namespaces: list[str] = Field(default_factory=list)
    pods: list[PodStatus] = Field(default_factory=list)
    expires_at: str | None = Field(default=None, alias="expiresAt")
    ttl: str = Field(description="`42m remaining`, `infinite` or `expired`")
    reason: str | None = None
    links: list[str] = Field(default_factory=list, description="share links")
    routes_problem: str | None = Field(
        default=None,
        alias="routesProblem",
        description="why the routes carry no traffic (no mesh or gateway accepted them)",
    )


def pod_reason(pod: Mapping[str, Any]) -> str | None:
    """Why a pod is not Ready, in the cluster's own words (ImagePullBackOff, ...)."""
    status = pod.get("status", {})
    for container in status.get("containerStatuses", []) or []:
        state = container.get("state", {}) or {}
        ended = (container.get("lastState") or {}).get("terminated") or state.get("terminated")
        last = (
            f" (container {container.get('name')} last ended: {ended.get('reason', 'unknown')}, "
            f"exit code {ended.get('exitCode')})"
            if ended
            else ""
        )
        if container.get("restartCount") and not state.get("running"):
            # Between restarts the state flips from terminated to waiting: a crash loop.
            return f"CrashLoopBackOff: restarted {container['restartCount']} times{last}"
        for kind in ("waiting", "terminated"):
            if state.get(kind) and state[kind].get("reason"):
                detail = state[kind].get("message")
                return f"{state[kind]['reason']}" + (f": {detail}" if detail else "") + last
    for condition in status.get("conditions", []) or []:
        if condition.get("status") != "True" and condition.get("reason"):
            return f"{condition['reason']}: {condition.get('message', '')}".rstrip(": ")
    phase = status.get("phase")
    return f"phase {phase}" if phase else "not scheduled yet"


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Ready, or run to completion (the Job a CronJob preview starts with)."""
    if pod.get("status", {}).get("phase") == "Succeeded":
        return True
    conditions = pod.get("status", {}).get("conditions", []) or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def ignored_records(
    records: Sequence[Mapping[str, Any]],
    specs: Mapping[str, EnvironmentSpec | None],
    is_ours: Callable[[Mapping[str, Any]], bool],
) -> list[str]:
    """Records claiming to be one of our environments' but not where that environment
    keeps its own (`ns/name`): planted or stale copies. Never read, only reported."""
    found = []
    for record in records:
        meta = record.get("metadata", {})
        key = (meta.get("labels") or {}).get(naming.LABEL_KEY, "")
        if not is_ours(record):
            continue
        spec = specs.get(key)
        where = (meta.get("namespace"), meta.get("name"))
        if spec is None or where != (spec.record_namespace(), naming.record_name(key)):
            found.append(f"{where[0]}/{where[1]}")
    return sorted(found)


def summarize(
    *,
    specs: Mapping[str, EnvironmentSpec | Exception | None],
    pods: Sequence[Mapping[str, Any]],
    stacks: Mapping[str, bool],
    now: dt.datetime,
    only_key: str | None = None,
    unlisted: Collection[str] = (),
    not_served: Mapping[str, str] | None = None,
) -> list[EnvironmentStatus]:
    """`specs` are read from the backend (the authority): key -> spec, None for a stack
    with nothing committed, or the error reading it. `stacks` maps each stack name to
    whether an update is running; `unlisted` are namespaces whose pods we may not list."""
    pods_by_key: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        key = pod.get("metadata", {}).get("labels", {}).get(naming.LABEL_KEY)
        if key:
            pods_by_key.setdefault(key, []).append(pod)
    keys = sorted(set(specs) | set(stacks))
    if only_key is not None:
        keys = [k for k in keys if k == only_key]
    result = []
    for key in keys:
        spec = specs.get(key)
        updating = stacks.get(key, False)
        if not isinstance(spec, EnvironmentSpec):
            reason = None
            if isinstance(spec, Exception):
                reason = str(spec)
            elif not updating:
                reason = "the stack has no live objects in this cluster"
            result.append(
                EnvironmentStatus(
                    key=key,
                    state="updating" if updating else "failed",
                    ttl="unknown",
                    reason=reason,
                )
            )
            continue
        by_target = {s.target_label: s for s in spec.services}
        pod_statuses = []
        for pod in sorted(pods_by_key.get(key, []), key=lambda p: p["metadata"]["name"]):
            meta = pod["metadata"]
            service = by_target.get(meta.get("labels", {}).get(naming.LABEL_TARGET, ""))
            ready = pod_ready(pod)
            pod_statuses.append(
                PodStatus(
                    name=meta["name"],
                    namespace=meta["namespace"],
                    target=service.display_target if service else "unknown",
                    image=service.image if service else "unknown",
                    ready=ready,
                    phase=pod.get("status", {}).get("phase", "Unknown"),
                    reason=None if ready else pod_reason(pod),
                    traffic=routing.service_traffic(service, key) if service else None,
                )
            )
        expires = parse_rfc3339(spec.expires_at) if spec.expires_at else None
        ttl = remaining(expires, now)
        state: State
        reason = None
        if updating:
            state = "updating"
        elif ttl == "expired":
            state = "expired"
        elif hidden := sorted({sv.namespace for sv in spec.services} & set(unlisted)):
            state = "unknown"
            reason = f"no rights to list pods in {', '.join(hidden)}"
        elif not pod_statuses or not all(p.ready for p in pod_statuses):
            state = "failed"
            unready = [p for p in pod_statuses if not p.ready]
            reason = (
                f"pod {unready[0].name}: {unready[0].reason}"
                if unready
                else "no preview pods are running"
            )
        else:
            state = "live"
        result.append(
            EnvironmentStatus(
                key=key,
                state=state,
                owner=spec.owner,
                namespaces=sorted({s.namespace for s in spec.services}),
                pods=pod_statuses,
                expires_at=spec.expires_at,
                ttl=ttl,
                reason=reason,
                links=routing.share_links(spec),
                routes_problem=(not_served or {}).get(key),
            )
        )
    return result
