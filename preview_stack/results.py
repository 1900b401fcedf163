"""What `start`, `clean` and `extend` report: typed results, printed as JSON as they are
or as text by cli.render (`status` reports preview_stack.status.EnvironmentStatus)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from preview_stack.rollouts import Rollout
from preview_stack.routing import RouteState
from preview_stack.spec import EnvironmentSpec
from preview_stack.status import environment_pods, pod_row


class StartedPod(BaseModel):
    name: str
    namespace: str
    target: str
    image: str
    ready: bool
    traffic: str | None = None


class StartResult(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    key: str
    namespaces: list[str]
    pods: list[StartedPod]
    expires_at: str | None = Field(alias="expiresAt")
    links: list[str] = Field(default_factory=list)
    changes: list[str] = Field(
        default_factory=list,
        description="what was changed from the target's pod (storage, host ports, ...)",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="volumes kept shared with the target (feature.preview.shared_volumes)",
    )
    routes_problem: str | None = Field(
        default=None,
        alias="routesProblem",
        description="why (some of) the routes carry no traffic yet (None: all served, or none)",
    )
    routes: list[RouteState] = Field(
        default_factory=list, description="each route of the environment: served, or why not"
    )


def started_pods(
    env: EnvironmentSpec,
    pods: Sequence[Mapping[str, Any]],
    stack_id: str,
    rollouts: Sequence[Rollout] = (),
) -> list[StartedPod]:
    """The environment's pods as `start` lists them: each with the image its target runs
    in the spec (see status.environment_pods for which pods count: not those of an older
    template of one of `rollouts`)."""
    now = dt.datetime.now(dt.UTC)
    started = []
    for pod, service in environment_pods(env, pods, stack_id, rollouts):
        row = pod_row(pod, service, env.key, now)
        started.append(
            StartedPod(
                name=row.name,
                namespace=row.namespace,
                target=row.target,
                image=service.image,
                ready=row.ready,
                traffic=row.traffic,
            )
        )
    return started


class CleanResult(BaseModel):
    """`clean -k`: what was removed of one environment (`removed`: targets, or `all`)."""

    key: str
    cleaned: bool
    removed: list[str]
    message: str


class CleanFailure(BaseModel):
    key: str
    reason: str


class BulkCleanResult(BaseModel):
    """`clean --glob/--owner`: the environments destroyed and those that failed."""

    cleaned: list[str] = Field(default_factory=list)
    failed: list[CleanFailure] = Field(default_factory=list)
    message: str


class ExtendResult(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    key: str
    expires_at: str | None = Field(alias="expiresAt")
