"""The `pulumi up` entry point (Pulumi.yaml at the repository root): stack config ->
EnvironmentSpec -> the same `declare` the CLI's inline program calls."""

from __future__ import annotations

import datetime as dt
import getpass
import os
from pathlib import Path

import pulumi

from preview_stack import config as mirrord_config
from preview_stack import naming
from preview_stack.cluster import Cluster, ClusterTarget
from preview_stack.derive import spec_from_records
from preview_stack.errors import PreviewError
from preview_stack.program import declare, manifests_for
from preview_stack.request import Flags, build_request
from preview_stack.stack_config import environment, parse_services


def main() -> None:
    cfg = pulumi.Config(naming.PROJECT)
    key = pulumi.get_stack()
    k8s_cfg = pulumi.Config("kubernetes")
    cluster = Cluster(ClusterTarget(k8s_cfg.get("kubeconfig"), k8s_cfg.get("context")))
    mirrord_path = cfg.get("mirrordConfig")
    if mirrord_path:
        parsed = mirrord_config.load(Path(mirrord_path), {"key": key, "git_branch": ""})
        request = build_request(
            parsed, Flags(image=cfg.get("image")), default_namespace=cluster.default_namespace()
        )
        services = [request.service]
        ttl = cfg.get("ttl")
    else:
        services = parse_services(cfg.get_object("services"))
        ttl = cfg.get("ttl")
    owner = cfg.get("owner") or f"pulumi up by {os.environ.get('USER') or getpass.getuser()}"
    env = environment(
        key=key,
        services=services,
        ttl=ttl,
        expires_at=cfg.get("expiresAt"),
        owner=owner,
        previous=spec_from_records(cluster.records(key)),
        now=dt.datetime.now(dt.UTC).replace(microsecond=0),
    )
    for service in env.services:
        cluster.check_namespace(service.namespace)
    manifests_for(env, cluster)  # every check before any resource is declared
    declare(env, cluster)


try:
    main()
except PreviewError as exc:
    raise pulumi.RunError(str(exc)) from None
