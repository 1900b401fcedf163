"""What `status` shows, computed from the backend's specs, live pods and stack summaries, and
the pod rows `start` lists too (pure)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from preview_stack import naming, routing
from preview_stack.rollouts import PodState, Rollout, is_outdated, rollout_state
from preview_stack.spec import EnvironmentSpec, ServiceSpec
from preview_stack.ttl import parse_rfc3339, remaining

State = Literal["starting", "ready", "not-ready", "updating", "expired", "orphaned"]
# Waiting/terminated reasons and conditions that will not fix themselves: `not-ready`.
FAILING = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "ContainerCannotRun",
        "StartError",
        "OOMKilled",
        "Error",
        "Unschedulable",
        "Evicted",
    }
)
# A running container that is still not Ready this long after it started counts as failing
# its readiness probe (kubelet keeps the probe's own message in events, not in the pod).
# Ours, not the cluster's: `status --probe-grace` / PREVIEW_ENV_PROBE_GRACE (README).
PROBE_GRACE_SECONDS = 60
PROBE_GRACE_VAR = "PREVIEW_ENV_PROBE_GRACE"


class PodStatus(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)
    name: str
    namespace: str
    target: str
    image: str
    ready: bool
    state: PodState = "starting"
    phase: str
    reason: str | None = None
    traffic: str | None = Field(default=None, description="how requests reach this pod")
    outdated: bool = Field(
        default=False,
        description="of an older pod template of its Deployment, on its way out during a "
        "rollout: it never makes the environment ready",
    )


class BranchStatus(BaseModel):
    """A database branch (feature.db_branches) and how its copy went."""

    model_config = ConfigDict(frozen=True)
    id: str
    engine: str
    source: str = Field(description="where the target finds its database (never credentials)")
    mode: str
    tables: list[str] = Field(default_factory=list)
    namespace: str
    state: Literal["copying", "copied", "failed", "missing", "lost"]
    message: str | None = Field(
        default=None, description="the copy's summary line, or why it failed"
    )

    @property
    def bad_input(self) -> bool:
        return self.state == "failed" and (self.message or "").startswith("bad input:")


class SplitStatus(BaseModel):
    """A split queue (feature.split_queues): the key's queue, its filter, what waits in it."""

    model_config = ConfigDict(frozen=True)
    id: str
    type: str
    namespace: str
    queue: str = Field(description="the original queue or topic, staging's")
    key_queue: str = Field(description="the key's queue or topic")
    filter: dict[str, str]
    waiting: int | None = Field(
        default=None, description="messages ready in the key's queue (None: not known yet)"
    )
    state: str = Field(
        description="`split` (the keeper keeps the key's queue), `pending` (not seen by the "
        "keeper yet), or `keeper <state>: <error>`"
    )


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
    locked_by: str | None = Field(
        default=None,
        alias="lockedBy",
        description="`user@host (pid N) since TIME` of the running update holding the lock",
    )
    orphans: list[str] = Field(
        default_factory=list, description="`kind namespace/name` of objects without a stack"
    )
    links: list[str] = Field(default_factory=list, description="share links")
    branches: list[BranchStatus] = Field(default_factory=list, description="database branches")
    splits: list[SplitStatus] = Field(default_factory=list, description="split queues")
    routes_problem: str | None = Field(
        default=None,
        alias="routesProblem",
        description="why (some of) the routes carry no traffic: per route not served, why",
    )
    served_routes: list[str] = Field(
        default_factory=list,
        alias="servedRoutes",
        description="the routes a controller serves: kind ns/name via its parents, hosts",
    )


class Unfinished(BaseModel):
    """What the backend holds for a stack with no committed spec (its first update never
    finished): objects in its state, its last update's result, and the owner and namespaces
    its objects were declared with."""

    model_config = ConfigDict(frozen=True)
    resources: int = 0
    result: str | None = None
    ended: str | None = None
    owner: str | None = None
    namespaces: list[str] = Field(default_factory=list)
    # What its objects were declared from, as the state holds them (never the cluster): the
    # record ConfigMap's redacted spec, and the objects' expiry (RFC 3339, "never", or None
    # when no object says).
    spec: EnvironmentSpec | None = None
    expires_at: str | None = None

    def describe(self, key: str) -> str:
        if self.result is None:  # history is written when an update ends
            update = "no update has finished yet (a start still running, or one killed)"
        else:
            update = f"first start {self.result}" + (f" at {self.ended}" if self.ended else "")
        return (
            f"{update}: {self.resources} objects kept, no spec committed (only a start that "
            f"finishes commits one); `preview-env clean -k {key}` removes them"
        )


def unfinished_from(history: Any, checkpoint: Any) -> Unfinished:
    """Read `pulumi stack history --json` (newest first) and `pulumi stack export`: objects
    are the state's resources other than the stack itself and its providers."""
    last = history[0] if isinstance(history, list) and history else {}
    resources = ((checkpoint or {}).get("deployment") or {}).get("resources") or []
    objects = [
        r
        for r in resources
        if r.get("type") != "pulumi:pulumi:Stack"
        and not str(r.get("type", "")).startswith("pulumi:providers:")
    ]
    owner = expires_at = None
    spec = None
    namespaces = set()
    for resource in objects:
        body = resource.get("outputs") or resource.get("inputs") or {}
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            continue
        if isinstance(meta.get("namespace"), str):
            namespaces.add(meta["namespace"])
        annotations = meta.get("annotations") or {}
        found = annotations.get(naming.ANNOTATION_OWNER)
        if owner is None and isinstance(found, str):
            owner = found
        expiry = annotations.get(naming.ANNOTATION_EXPIRES_AT)
        if expires_at is None and isinstance(expiry, str) and _valid_expiry(expiry):
            expires_at = expiry
        if spec is None and naming.labels_of(body).get(naming.LABEL_COMPONENT) == "record":
            spec = _record_spec(body)
    return Unfinished(
        resources=len(objects),
        result=last.get("result") if isinstance(last, dict) else None,
        ended=str(last["endTime"]) if isinstance(last, dict) and last.get("endTime") else None,
        owner=owner,
        namespaces=sorted(namespaces),
        spec=spec,
        expires_at=(spec.expires_at or "never") if spec else expires_at,
    )


def _valid_expiry(text: str) -> bool:
    if text == "never":
        return True
    try:
        parse_rfc3339(text)
    except ValueError:
        return False
    return True


def _record_spec(body: Mapping[str, Any]) -> EnvironmentSpec | None:
    """The redacted spec a record ConfigMap in the state carries (None if it does not)."""
    data = body.get("data")
    raw = data.get(naming.RECORD_DATA_KEY) if isinstance(data, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        return EnvironmentSpec.model_validate_json(raw)
    except ValueError:
        return None


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


def pod_state(
    pod: Mapping[str, Any], now: dt.datetime, probe_grace: float = PROBE_GRACE_SECONDS
) -> tuple[PodState, str | None]:
    """`ready`, `starting` (on its way: scheduling, pulling, creating, within the probe
    grace) or `not-ready` with the cluster's reason (a crash loop, an image that cannot be
    pulled, no node fits, OOMKilled, a readiness probe failing for `probe_grace` s)."""
    if pod_ready(pod):
        return "ready", None
    reason = pod_reason(pod) or "not Ready"
    head = re.split(r"[\s:]", reason, maxsplit=1)[0]
    status = pod.get("status", {})
    if head in FAILING or status.get("phase") == "Failed":
        return "not-ready", reason
    for container in status.get("containerStatuses", []) or []:
        running = (container.get("state") or {}).get("running")
        if not running or container.get("ready"):
            continue
        if container.get("restartCount"):
            ended = (container.get("lastState") or {}).get("terminated") or {}
            return "not-ready", (
                f"restarted {container['restartCount']} times, not Ready "
                f"(container {container.get('name')} last ended: "
                f"{ended.get('reason', 'unknown')}, exit code {ended.get('exitCode')})"
            )
        started = running.get("startedAt")
        if started:
            age = (now - parse_rfc3339(started)).total_seconds()
            if age >= probe_grace:
                return "not-ready", (
                    f"readiness probe failing: container {container.get('name')} running "
                    f"for {int(age)}s, not Ready"
                )
    return "starting", reason


def pod_row(
    pod: Mapping[str, Any],
    service: ServiceSpec | None,
    key: str,
    now: dt.datetime,
    probe_grace: float = PROBE_GRACE_SECONDS,
    *,
    outdated: bool = False,
) -> PodStatus:
    """One preview pod as `status` and `start` show it (`service`: its target, if known;
    `outdated`: of an older template of its Deployment, see preview_stack.rollouts)."""
    meta = pod["metadata"]
    state, why = pod_state(pod, now, probe_grace)
    return PodStatus(
        name=meta["name"],
        namespace=meta["namespace"],
        target=service.display_target if service else "unknown",
        image=_running_image(pod, service),
        ready=state == "ready",
        state=state,
        phase=pod.get("status", {}).get("phase", "Unknown"),
        reason=why,
        traffic=routing.service_traffic(service, key) if service else None,
        outdated=outdated,
    )


def environment_pods(
    env: EnvironmentSpec,
    pods: Sequence[Mapping[str, Any]],
    stack_id: str,
    rollouts: Sequence[Rollout] = (),
) -> list[tuple[Mapping[str, Any], ServiceSpec]]:
    """Stack `stack_id`'s live pods of `env`, each with its target, by namespace and name.
    Labels can be copied: only pods in their target's namespace count, none being deleted,
    none of an older template of its Deployment (one of `rollouts`)."""
    by_target = {s.target_label: s for s in env.services}
    found = []
    for pod in pods:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") or not naming.owned_by(pod, stack_id):
            continue  # going, or the same key in another backend
        if is_outdated(pod, rollouts):
            continue  # the previous revision, until the rollout removes it
        service = by_target.get(naming.labels_of(pod).get(naming.LABEL_TARGET, ""))
        if service is not None and meta.get("namespace") == service.namespace:
            found.append((pod, service))
    return sorted(found, key=lambda f: (f[0]["metadata"]["namespace"], f[0]["metadata"]["name"]))


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
        key = naming.key_of(record)
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
    routes: Mapping[str, Sequence[routing.RouteState]] | None = None,
    locks: Mapping[str, str] | None = None,
    orphans: Mapping[str, Sequence[str]] | None = None,
    probe_grace: float = PROBE_GRACE_SECONDS,
    unfinished: Mapping[str, Unfinished] | None = None,
    rollouts: Sequence[Rollout] = (),
) -> list[EnvironmentStatus]:
    """`specs` are read from the backend (the authority): key -> spec, None for a stack
    with nothing committed, or the error reading it. `stacks` maps each stack name to
    whether an update is running; `unlisted` are namespaces whose pods we may not list;
    `routes` each environment's routes as served or not (share links show only while
    served); `locks` who holds a locked stack; `orphans` objects labelled with this backend's stack
    id for a key that has no stack (`kind namespace/name`); `unfinished` what the backend
    holds for stacks with no committed spec (a kept failed first start is `not-ready`);
    `rollouts` the preview Deployments read with the pods (preview_stack.rollouts): only
    the pods of each one's current template decide the state, and one whose current
    template is not rolled out is not `ready` (empty when they could not be read: the
    pods alone decide)."""
    locks = locks or {}
    unfinished = unfinished or {}
    orphans = orphans or {}
    pods_by_key: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        key = naming.key_of(pod)
        if key:
            pods_by_key.setdefault(key, []).append(pod)
    keys = sorted(set(specs) | set(stacks) | {k for k, v in orphans.items() if v})
    if only_key is not None:
        keys = [k for k in keys if k == only_key]
    result = []
    for key in keys:
        spec = specs.get(key)
        updating = stacks.get(key, False)
        holder = locks.get(key) if updating else None
        if key not in stacks:
            result.append(
                EnvironmentStatus(
                    key=key,
                    state="orphaned",
                    ttl="unknown",
                    reason="objects labelled with this backend's stack id, but no stack",
                    orphans=sorted(orphans.get(key, [])),
                )
            )
            continue
        kept = None if updating else unfinished.get(key)
        kept_reason = None
        if spec is None and kept is not None and kept.resources and kept.spec is not None:
            # A kept failed first start: shown as its objects were declared (in the state).
            spec, kept_reason = kept.spec, kept.describe(key)
        if not isinstance(spec, EnvironmentSpec):
            state: State = "updating" if updating else "orphaned"
            reason = None
            if updating:
                reason = f"locked by {holder}" if holder else "its stack is locked"
            elif isinstance(spec, Exception):
                state, reason = "not-ready", f"cannot read its spec: {spec}"
            elif kept is not None and kept.resources:
                state, reason = "not-ready", kept.describe(key)
            else:
                reason = "a stack without objects in this cluster"
            result.append(
                EnvironmentStatus(
                    key=key,
                    state=state,
                    ttl="unknown",
                    reason=reason,
                    locked_by=holder,
                    owner=kept.owner if kept else None,
                    namespaces=kept.namespaces if kept else [],
                )
            )
            continue
        by_target = {s.target_label: s for s in spec.services}
        states = (routes or {}).get(key, [])
        pod_statuses = []
        # The rollouts of this environment's targets, each with its current pods' rows.
        rolling = {
            (r.namespace, r.target): (r, list[PodStatus]())
            for r in rollouts
            if r.key == key
            and any((s.namespace, s.target_label) == (r.namespace, r.target) for s in spec.services)
        }
        for pod in sorted(pods_by_key.get(key, []), key=lambda p: p["metadata"]["name"]):
            target = naming.labels_of(pod).get(naming.LABEL_TARGET, "")
            service = by_target.get(target)
            outdated = is_outdated(pod, rollouts)
            row = pod_row(pod, service, key, now, probe_grace, outdated=outdated)
            pod_statuses.append(row)
            rollout = rolling.get((pod["metadata"].get("namespace", ""), target))
            if rollout is not None and rollout[0].is_current(pod):
                rollout[1].append(row)
        verdicts = [rollout_state(r, rows) for r, rows in rolling.values()]
        expires = parse_rfc3339(spec.expires_at) if spec.expires_at else None
        ttl = remaining(expires, now)
        reason = None
        current = [p for p in pod_statuses if not p.outdated]
        failing = [p for p in current if p.state == "not-ready"]
        stalled = [why for state, why in verdicts if state == "not-ready"]
        starting = [f"pod {p.name}: {p.reason}" for p in current if p.state == "starting"]
        starting += [why or "" for state, why in verdicts if state == "starting"]
        if updating:
            state = "updating"
            reason = f"locked by {holder}" if holder else "its stack is locked"
        elif ttl == "expired":
            state = "expired"
            reason = "due; waiting for the reaper (or `extend` it)"
        elif hidden := sorted({sv.namespace for sv in spec.services} & set(unlisted)):
            state = "not-ready"
            reason = f"cannot tell: no rights to list pods in {', '.join(hidden)}"
        elif failing:
            state = "not-ready"
            reason = f"pod {failing[0].name}: {failing[0].reason}"
        elif stalled:
            state = "not-ready"
            reason = stalled[0]
        elif not pod_statuses:
            state = "not-ready"
            reason = "no preview pods are running"
        elif starting:
            state = "starting"
            reason = starting[0]
        else:
            state = "ready"
        if kept_reason is not None and state not in ("updating", "expired"):
            # No spec committed: never `ready`, whatever its pods say (see Unfinished).
            state, reason = "not-ready", kept_reason + (f"; {reason}" if reason else "")
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
                locked_by=holder,
                links=routing.served_links(spec, states),
                routes_problem=routing.serving_problem(states),
                served_routes=routing.served_lines(states),
            )
        )
    return result


def matches(key: str, owner: str | None, *, glob: str | None, owner_filter: str | None) -> bool:
    """`--glob` (shell glob on the key) and `--owner` (exact) together; None means any."""
    if glob is not None and not naming.glob_to_regex(glob).match(key):
        return False
    return owner_filter is None or owner == owner_filter


def markdown(env: EnvironmentStatus) -> str:
    """A compact summary of one environment for a pull-request comment: state, expiry,
    one table row per pod (image, state, how to reach it) and the share links. Every
    value is escaped: keys, images and reasons end up in someone's PR."""
    lines = [
        f"<!-- preview-env:{env.key} -->",
        f"### Preview environment `{env.key}`: **{env.state}**",
        "",
    ]
    if env.reason:
        lines += [f"> {_md(env.reason)}", ""]
    expiry = env.ttl if not env.expires_at else f"{env.ttl} (expires {env.expires_at})"
    lines += [f"- **Expires:** {_md(expiry)}"]
    if env.owner:
        lines += [f"- **Owner:** {_md(env.owner)}"]
    headers = sorted({p.traffic for p in env.pods if p.traffic})
    for header in headers:
        lines += [f"- **Reach it:** {_md(header)}"]
    for link in env.links:
        lines += [f"- **Share link:** <{link}>"]
    for branch in env.branches:
        outcome = f"{branch.state}: {branch.message}" if branch.message else branch.state
        lines += [
            f"- **Database branch** {_md(branch.id)} ({_md(branch.engine)}, copy "
            f"{_md(branch.mode)}): {_md(outcome)}"
        ]
    for split in env.splits:
        waiting = "?" if split.waiting is None else str(split.waiting)
        lines += [
            f"- **Split queue** {_md(split.id)} ({_md(split.queue)} to "
            f"{_md(split.key_queue)}): {_md(split.state)}, {waiting} waiting"
        ]
    if env.pods:
        lines += ["", "| Pod | Target | Image | State |", "| --- | --- | --- | --- |"]
        for pod in env.pods:
            state = pod.state if not pod.reason else f"{pod.state}: {pod.reason}"
            state += " (outdated: the previous template)" if pod.outdated else ""
            lines.append(
                f"| `{_cell(pod.namespace)}/{_cell(pod.name)}` | {_cell(pod.target)} "
                f"| `{_cell(pod.image)}` | {_cell(state)} |"
            )
    return "\n".join(lines) + "\n"


def removed_markdown(key: str) -> str:
    return f"<!-- preview-env:{key} -->\n### Preview environment `{key}`: **removed**\n"


def _md(text: str) -> str:
    """Plain text in Markdown: no markup, no HTML, no links of its own."""
    out = []
    for ch in text:
        out.append("\\" + ch if ch in "\\`*_{}[]()<>#+-!|~" else ch)
    return "".join(out).replace("\n", " ")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")


def _running_image(pod: Mapping[str, Any], service: ServiceSpec | None) -> str:
    """The image this pod runs (a failed update's new pod may differ from the spec)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    wanted = service.target.container if service and service.target else None
    for container in containers:
        if wanted is None or container.get("name") == wanted:
            return str(container.get("image") or "unknown")
    return service.image if service else "unknown"
