"""Which objects are whose: label selectors, owner labels, the pods `start` and `status`
list, and the environments and orphans `status` sorts the cluster's objects into."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from preview_stack import naming
from preview_stack.config import IncomingFeature, TargetPath
from preview_stack.errors import Busy, PreviewError
from preview_stack.inventory import LiveObjects, Selection, read_inventory, sort_out
from preview_stack.reaping import Lock
from preview_stack.results import started_pods
from preview_stack.routing import others_routes_problem
from preview_stack.spec import EnvironmentSpec, ServiceSpec
from preview_stack.status import Unfinished, environment_pods


def pod(
    name: str = "users-pr-42-abc", *, ready: bool = False, key: str = "pr-42"
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "staging",
            "labels": {
                naming.LABEL_KEY: key,
                naming.LABEL_TARGET: naming.target_label("deployment", "users"),
            },
        },
        "status": {
            "phase": "Running" if ready else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def env(key: str = "pr-42", owner: str = "me") -> EnvironmentSpec:
    return EnvironmentSpec(
        key=key,
        owner=owner,
        created_at="2026-01-01T00:00:00Z",
        expires_at="2026-01-01T01:00:00Z",
        ttl_seconds=3600,
        services=[
            ServiceSpec(
                target=TargetPath.parse("deployment/users"),
                namespace="staging",
                image="ghcr.io/acme/users:pr-42",
                incoming=IncomingFeature(mode="steal"),
            )
        ],
    )


def stack_id(key: str) -> str:
    return f"stack-of-{key}"


def owned(obj: dict[str, Any], key: str = "pr-42", namespace: str = "staging") -> dict[str, Any]:
    obj["metadata"]["namespace"] = namespace
    obj["metadata"]["labels"][naming.LABEL_MANAGED_BY] = naming.MANAGED_BY
    obj["metadata"]["labels"][naming.LABEL_STACK] = stack_id(key)
    return obj


def test_selectors_name_preview_env_objects_by_key_stack_and_component() -> None:
    managed = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
    assert naming.selector() == managed
    assert naming.selector(keyed=True) == f"{managed},{naming.LABEL_KEY}"
    assert naming.selector(key="k", stack="s") == (
        f"{managed},{naming.LABEL_KEY}=k,{naming.LABEL_STACK}=s"
    )
    assert naming.selector(part_of="k", components=("a", "b")) == (
        f"{managed},{naming.LABEL_PART_OF}=k,{naming.LABEL_COMPONENT} in (a,b)"
    )


def test_owner_labels_tell_this_backends_objects_apart() -> None:
    mine = owned(pod())
    assert naming.key_of(mine) == "pr-42" and naming.is_managed(mine)
    assert naming.owned_by(mine, stack_id("pr-42")) and naming.of_backend(mine, stack_id)
    copied = pod()  # the key label alone: anyone can write it
    assert not naming.owned_by(copied, stack_id("pr-42"))
    assert not naming.of_backend(copied, stack_id)
    assert naming.labels_of({"metadata": {"labels": None}}) == {}


def test_start_lists_only_its_stacks_pods_where_its_targets_run() -> None:
    spec = env()
    here = owned(pod("b", ready=True))
    other_backend = pod("a")
    elsewhere = owned(pod("c"), namespace="other")
    going = owned(pod("d"))
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    pods = [other_backend, elsewhere, going, here, owned(pod("a2"))]
    found = [p["metadata"]["name"] for p, _ in environment_pods(spec, pods, stack_id("pr-42"))]
    assert found == ["a2", "b"]
    [first, second] = started_pods(spec, pods, stack_id("pr-42"))
    assert (second.name, second.ready, second.image) == ("b", True, "ghcr.io/acme/users:pr-42")
    assert first.target == "deployment/users" and first.traffic == second.traffic


class Stacks:
    def __init__(self, specs: Mapping[str, EnvironmentSpec | None]) -> None:
        self._specs = dict(specs)

    def environments(self) -> Mapping[str, bool]:
        return dict.fromkeys(self._specs, False)

    def specs(self, keys: Iterable[str]) -> Mapping[str, EnvironmentSpec | PreviewError | None]:
        return {k: self._specs[k] for k in keys}

    def owner(self, key: str, spec: EnvironmentSpec | PreviewError | None) -> str | None:
        return spec.owner if isinstance(spec, EnvironmentSpec) else None

    def unfinished(self, key: str) -> Unfinished:
        return Unfinished()

    def lock_holders(self, key: str) -> Sequence[Lock]:
        return []


def test_status_sorts_live_objects_into_environments_and_orphans() -> None:
    stacks = Stacks({"pr-42": env(), "pr-7": env("pr-7", owner="you"), "empty": None})
    chosen = Selection(owner="me")
    inventory = read_inventory(stacks, chosen)
    assert set(inventory.specs) == {"pr-42"} and inventory.namespaces == {"staging"}
    live = LiveObjects(
        pods=[
            owned(pod()),
            owned(pod("planted"), namespace="elsewhere"),  # copied labels, not its namespace
            owned(pod("left", key="gone"), key="gone"),  # a stack id, no stack: an orphan
        ]
    )
    found = sort_out(inventory, live, Selection(), stack_id)
    assert [p["metadata"]["name"] for p in found.pods] == ["users-pr-42-abc"]
    assert found.orphans == {"gone": ["pod staging/left"]}
    # With --owner, orphans (whose owner is unknown) are not listed.
    assert sort_out(inventory, live, chosen, stack_id).orphans == {}


def route(key: str, hosts: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "staging", "labels": {naming.LABEL_KEY: key}},
        "spec": {"hostnames": hosts, "parentRefs": [], "rules": []},
    }


def test_a_share_host_held_by_another_environment_is_refused() -> None:
    service = env().services[0]
    mine = [route("pr-42", ["pr-42.example.com"])]
    with pytest.raises(Busy, match="held by environment 'pr-7'"):
        others_routes_problem(mine, [route("pr-7", ["pr-42.example.com"])], service, "pr-42")
    assert (
        others_routes_problem(mine, [route("pr-7", ["pr-7.example.com"])], service, "pr-42") is None
    )
