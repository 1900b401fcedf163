"""The `pulumi up` entry point (Pulumi.yaml at the repository root): stack config ->
EnvironmentSpec -> the same `declare` the CLI's inline program calls."""

from __future__ import annotations

import datetime as dt
import getpass
import os
from pathlib import Path

import pulumi

from adapters.backend.latest import read_latest_spec
from adapters.backend.resolve import identity, resolve
from adapters.k8s.cluster import Cluster, ClusterTarget
from adapters.program import declare
from preview_stack import config as mirrord_config
from preview_stack import naming
from preview_stack.changes import apply as apply_change
from preview_stack.errors import PreviewError
from preview_stack.objects import derive_environment
from preview_stack.request import Flags, build_request
from preview_stack.stack_config import declared_change, parse_services
from pulumi_up import platform
from pulumi_up import queue as _queue  # noqa: F401  (registers the `queue` program)


def main() -> None:
    cfg = pulumi.Config(naming.PROJECT)
    key = pulumi.get_stack()
    platform_parts = naming.platform_stack_parts(key)
    if platform_parts:
        platform.run(*platform_parts, cfg)
        return
    k8s_cfg = pulumi.Config("kubernetes")
    cluster = Cluster(ClusterTarget(k8s_cfg.get("kubeconfig"), k8s_cfg.get("context")))
    mirrord_path = cfg.get("mirrordConfig")
    if mirrord_path:
        parsed = mirrord_config.load(
            Path(mirrord_path),
            {"key": key, "git_branch": os.environ.get("MIRRORD_BRANCH_NAME", "")},
        )
        request = build_request(
            parsed,
            Flags(image=cfg.get("image"), db_copy_image=cfg.get("dbCopyImage")),
            default_namespace=cluster.default_namespace(),
            read_file=mirrord_config.read_local_file,
            preparations=cluster.queue_preparations,
        )
        services = [request.service]
    else:
        services = parse_services(cfg.get_object("services"), cfg.get("dbCopyImage"))
    owner = cfg.get("owner") or f"pulumi up by {os.environ.get('USER') or getpass.getuser()}"
    change = declared_change(
        key=key, services=services, ttl=cfg.get("ttl"), expires_at=cfg.get("expiresAt"), owner=owner
    )
    for service in services:
        cluster.check_namespace(service.namespace)
    # The engine holds the stack's lock while this program runs: the spec read here is the
    # latest, and the change applies to it (the CLI's inline program does the same).
    previous = read_latest_spec(key, organization=pulumi.get_organization())
    env = apply_change(change, key, previous, dt.datetime.now(dt.UTC).replace(microsecond=0))
    assert env is not None
    stack_id = naming.stack_identity(identity(resolve(None)), key)
    # Derived once, with every check, before any resource is declared.
    declare(env, derive_environment(env, cluster, stack_id))


try:
    main()
except PreviewError as exc:
    raise pulumi.RunError(str(exc)) from None
