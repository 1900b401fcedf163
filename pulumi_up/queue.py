"""`pulumi up -s queue.<ns>.<id>`: a queue's preparation from stack config (type, target,
env, urlFrom, exchange, routingKey, container, image, state), the same program as
`preview-env queues prepare` (adapters.queue_stack)."""

from __future__ import annotations

import os

import pulumi

from adapters.k8s.cluster import Cluster, ClusterTarget
from adapters.queue_stack import declare_preparation
from adapters.queues.rabbitmq import default_exchange_refusal
from preview_stack import queue_prep
from preview_stack.config import TargetPath
from preview_stack.errors import BadInput
from preview_stack.queue_prep import Preparation
from preview_stack.queues import check_queue_id
from preview_stack.spec import DEFAULT_COPY_IMAGE, ServiceSpec
from pulumi_up.platform import PROGRAMS


def program(namespace: str, queue_id: str, cfg: pulumi.Config) -> None:
    try:
        check_queue_id(queue_id)
        target = TargetPath.parse(cfg.require("target"))
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    kind = cfg.require("type")
    if kind not in ("rmq", "kafka"):
        raise BadInput(f"config type {kind!r}: use rmq or kafka")
    secret, secret_key = queue_prep.parse_secret_ref(cfg.require("urlFrom"))
    k8s_cfg = pulumi.Config("kubernetes")
    cluster = Cluster(ClusterTarget(k8s_cfg.get("kubeconfig"), k8s_cfg.get("context")))
    workload = cluster.workload(ServiceSpec(target=target, namespace=namespace, image="-"))
    assert workload is not None
    container, source = queue_prep.source_of(
        workload.pod_spec, cfg.get("container"), cfg.require("env")
    )
    exchange = cfg.get("exchange") or ""
    if kind == "rmq" and exchange in ("", "amq.default"):
        raise BadInput(default_exchange_refusal(source))
    state = cfg.get("state") or "prepared"
    if state not in ("prepared", "unprepared"):
        raise BadInput(f"config state {state!r}: use prepared or unprepared")
    declare_preparation(
        Preparation(
            id=queue_id,
            namespace=namespace,
            type=kind,
            source=source,
            target_kind=target.kind,
            target_name=target.name,
            container=container,
            env=cfg.require("env"),
            secret=secret,
            secret_key=secret_key,
            exchange=exchange,
            routing_key=cfg.get("routingKey") or source,
            state=state,
            image=cfg.get("image")
            or os.environ.get("PREVIEW_ENV_QUEUE_IMAGE")
            or DEFAULT_COPY_IMAGE,
            placement=queue_prep.placement_of(workload.pod_spec),
        )
    )


PROGRAMS["queue"] = program
