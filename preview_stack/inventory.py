"""Which environments `status` shows, and which live objects are theirs.

The backend is the authority on what exists: its stacks and specs (read through
`StackReads`), filtered by key, glob, owner and namespace. The cluster's objects (pods,
routes, records: `LiveObjects`) only count when they carry this backend's stack id for
their key, and where the backend says that environment runs (labels can be copied); with
a stack id but no stack, they are orphans. Rules only: the reads come in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from preview_stack import naming, queue_prep
from preview_stack.branch_status import branch_statuses
from preview_stack.errors import PreviewError
from preview_stack.queue_prep import KeeperStatus, Preparation
from preview_stack.reaping import Lock
from preview_stack.rollouts import Rollout, rollouts_of
from preview_stack.routing import GatewaySupport, RouteState, route_states
from preview_stack.spec import EnvironmentSpec
from preview_stack.status import (
    EnvironmentStatus,
    SplitStatus,
    Unfinished,
    ignored_records,
    matches,
)

Spec = EnvironmentSpec | PreviewError | None


class StackReads(Protocol):
    """The backend's reads `status` needs (adapters.automation.Stacks)."""

    def environments(self) -> Mapping[str, bool]: ...

    def specs(self, keys: Iterable[str]) -> Mapping[str, Spec]: ...

    def owner(self, key: str, spec: Spec) -> str | None: ...

    def unfinished(self, key: str) -> Unfinished: ...

    def lock_holders(self, key: str) -> Sequence[Lock]: ...


@dataclass(frozen=True)
class Selection:
    """`status`'s filters (None: any)."""

    key: str | None = None
    namespace: str | None = None
    glob: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class Inventory:
    """What the backend holds for the selection."""

    every_key: Mapping[str, bool]  # every stack of the backend: is an update running
    specs: Mapping[str, Spec]  # the selected stacks' specs (see Stacks.specs)
    stacks: Mapping[str, bool]  # the selected stacks: is an update running
    # Selected stacks with no committed spec and no update running (see Unfinished).
    unfinished: Mapping[str, Unfinished]
    # What each selected environment declared: its spec, or a kept first start's.
    declared: Mapping[str, EnvironmentSpec]
    namespaces: set[str]  # where to look for its objects when we may not list everywhere

    def homes(self) -> dict[str, set[str]]:
        """The namespaces each selected environment runs in."""
        chosen = self.declared.items()
        return {k: {v.namespace for v in s.services} for k, s in chosen if k in self.specs}

    def with_branches(self) -> dict[str, EnvironmentSpec]:
        """The selected environments with database branches."""
        return {
            k: s for k, s in self.specs.items() if isinstance(s, EnvironmentSpec) and s.branches()
        }


def read_inventory(stacks: StackReads, chosen: Selection) -> Inventory:
    """The backend's environments matching `chosen`, with their specs."""
    every_key = stacks.environments()
    wanted = [
        k
        for k in every_key
        if (chosen.key is None or k == chosen.key)
        and matches(k, None, glob=chosen.glob, owner_filter=None)
    ]
    specs = dict(stacks.specs(wanted))
    if chosen.owner is not None:
        specs = {k: s for k, s in specs.items() if stacks.owner(k, s) == chosen.owner}
    busy = {k: v for k, v in every_key.items() if k in specs}
    # No committed spec and no update running: a first start that never finished (kept with
    # --keep-on-failure) or an emptied stack; the backend's state tells them apart, and
    # holds the spec a kept one's objects were declared from.
    unfinished = {
        k: stacks.unfinished(k)
        for k, s in specs.items()
        if s is None and not busy[k] and not stacks.lock_holders(k)
    }
    declared: dict[str, EnvironmentSpec] = {}
    for k, s in specs.items():
        kept = unfinished.get(k)
        if isinstance(s, EnvironmentSpec):
            declared[k] = s
        elif kept is not None and kept.resources and kept.spec is not None:
            declared[k] = kept.spec
    if chosen.namespace is not None:
        specs = {
            k: s
            for k, s in specs.items()
            if k in declared and chosen.namespace in {v.namespace for v in declared[k].services}
        }
        busy = {k: v for k, v in busy.items() if k in specs}
    namespaces = (
        {chosen.namespace}
        if chosen.namespace
        else {v.namespace for s in declared.values() for v in s.services}
    )
    return Inventory(every_key, specs, busy, unfinished, declared, namespaces)


def held_locks(stacks: StackReads, keys: Iterable[str]) -> dict[str, str]:
    """Who holds each locked stack of `keys`: a diy backend's stack list does not always
    say an update runs, its lock files do."""
    return {
        k: ", ".join(lock.describe() for lock in holders)
        for k in keys
        if (holders := stacks.lock_holders(k))
    }


@dataclass(frozen=True)
class LiveObjects:
    """preview-env's objects read from the cluster (of one key, or all), unfiltered;
    `deployments` and `replicasets`: the preview Deployments and theirs (none when they
    could not be read: then the pods alone say how an environment is)."""

    pods: list[dict[str, Any]] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    # What the classes of the routes' Gateways support, by `ns/name` (routing.route_states).
    gateways: Mapping[str, GatewaySupport] = field(default_factory=dict)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    replicasets: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Sorted:
    """The live objects sorted out: the selected environments' own pods, their routes as
    served or not, orphans by key (`kind namespace/name`), records ignored, and the
    rollouts of their Deployments (which pods run the current template)."""

    pods: list[dict[str, Any]]
    routes: dict[str, list[RouteState]]
    orphans: dict[str, list[str]]
    ignored_records: list[str]
    rollouts: list[Rollout] = field(default_factory=list)


def sort_out(
    inventory: Inventory,
    live: LiveObjects,
    chosen: Selection,
    stack_id: Callable[[str], str],
) -> Sorted:
    """Which live objects belong to the selected environments (`stack_id(key)`: this
    backend's stack id of a key), and which are orphans."""
    homes = inventory.homes()

    def ours(obj: Mapping[str, Any]) -> bool:
        """Objects of this backend's stacks; other backends' keys are theirs."""
        return naming.key_of(obj) in inventory.stacks and naming.of_backend(obj, stack_id)

    def ours_here(obj: Mapping[str, Any]) -> bool:
        """Ours, and where the backend says the environment runs: labels are copyable, so a
        labelled pod or route in someone else's namespace is not this environment's."""
        namespace = obj.get("metadata", {}).get("namespace")
        return ours(obj) and namespace in homes.get(naming.key_of(obj), set())

    orphans: dict[str, list[str]] = {}
    for kind, objects in (("pod", live.pods), ("record", live.records), ("route", live.routes)):
        for obj in objects:
            meta = obj.get("metadata", {})
            found = naming.key_of(obj)
            if (
                found not in inventory.every_key
                and naming.of_backend(obj, stack_id)
                and matches(found, None, glob=chosen.glob, owner_filter=None)
                and chosen.owner is None
                and (chosen.namespace is None or meta.get("namespace") == chosen.namespace)
            ):
                orphans.setdefault(found, []).append(
                    f"{kind} {meta.get('namespace')}/{meta.get('name')}"
                )
    routes_by_key: dict[str, list[dict[str, Any]]] = {}
    for route in live.routes:
        if ours_here(route):
            routes_by_key.setdefault(naming.key_of(route), []).append(route)
    committed = {k: inventory.declared.get(k) for k in inventory.specs}
    return Sorted(
        pods=[p for p in live.pods if ours_here(p)],
        routes={k: route_states(rs, live.gateways) for k, rs in routes_by_key.items()},
        orphans=orphans,
        ignored_records=ignored_records(live.records, committed, ours),
        rollouts=rollouts_of(
            [d for d in live.deployments if ours_here(d)],
            [r for r in live.replicasets if ours_here(r)],
        ),
    )


def with_branches(
    summaries: Sequence[EnvironmentStatus],
    specs: Mapping[str, EnvironmentSpec],
    jobs: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> list[EnvironmentStatus]:
    """The summaries of `specs`' environments with their database branches' copies."""
    return [
        s.model_copy(update={"branches": branch_statuses(specs[s.key], jobs, pods)})
        if s.key in specs
        else s
        for s in summaries
    ]


KeeperReads = Callable[[str, str], KeeperStatus | None]


def with_splits(
    summaries: Sequence[EnvironmentStatus],
    specs: Mapping[str, EnvironmentSpec | PreviewError | None],
    keeper: KeeperReads,
) -> list[EnvironmentStatus]:
    """The summaries with each split queue and what its keeper last saw (one read of a
    keeper's status per queue, only for environments that split queues)."""
    seen: dict[tuple[str, str], KeeperStatus | None] = {}
    done = []
    for summary in summaries:
        spec = specs.get(summary.key)
        if not isinstance(spec, EnvironmentSpec):
            done.append(summary)
            continue
        rows = []
        for service in spec.services:
            for use in service.split_queues:
                prep = use.preparation
                where = (prep.namespace, prep.id)
                if where not in seen:
                    seen[where] = keeper(*where)
                rows.append(split_status(prep, use.filter, summary.key, seen[where]))
        done.append(summary.model_copy(update={"splits": rows}) if rows else summary)
    return done


def split_status(
    prep: Preparation, values: Mapping[str, str], key: str, keeper: KeeperStatus | None
) -> SplitStatus:
    queue = queue_prep.key_queue(prep, key)
    row = next((k for k in keeper.keys if k.queue == queue), None) if keeper else None
    if keeper is None or keeper.state != "prepared":
        state = f"keeper {keeper.state if keeper else 'missing'}"
        state += f": {keeper.error}" if keeper and keeper.error else ""
    else:
        state = "pending" if row is None else "split"
    return SplitStatus(
        id=prep.id,
        type=prep.type,
        namespace=prep.namespace,
        queue=prep.source,
        key_queue=queue,
        filter=dict(values),
        waiting=row.waiting if row else None,
        state=state,
    )
