"""The baseline of issue 15: a plain Pulumi inline program (stock Automation API, no
preview-env logic) declaring the Deployment and Service `start` declares, on the same backend.

    .venv/bin/python bench/plain_pulumi.py up|destroy KEY

Run as its own process, like `preview-env start`, so both pay Python's start-up.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
from pulumi import automation as auto

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters.k8s.cluster import Cluster, ClusterTarget  # noqa: E402
from bench.bench_cli import bench_spec  # noqa: E402
from preview_stack.objects import manifests_for  # noqa: E402


def main(action: str, key: str) -> None:
    cluster = Cluster(ClusterTarget(None))
    env = bench_spec(key, routing=False)

    class Reader:
        def workload(self, spec):  # type: ignore[no-untyped-def]
            return cluster.workload(spec)

        def services(self, namespace):  # type: ignore[no-untyped-def]
            return cluster.services(namespace)

        def routes_to(self, namespace):  # type: ignore[no-untyped-def]
            return []

    docs = [m for m in manifests_for(env, Reader()) if m["kind"] in ("Deployment", "Service")]

    def program() -> None:
        for doc in docs:
            name = f"{doc['kind'].lower()}:{doc['metadata']['name']}"
            if doc["kind"] == "Deployment":
                k8s.apps.v1.Deployment(name, metadata=doc["metadata"], spec=doc["spec"])
            else:
                k8s.core.v1.Service(name, metadata=doc["metadata"], spec=doc["spec"])
        pulumi.export("key", key)

    stack = auto.create_or_select_stack(stack_name=key, project_name="plain", program=program)
    if action == "up":
        stack.up(on_output=lambda _line: None)
    else:
        stack.destroy(on_output=lambda _line: None)
        stack.workspace.remove_stack(key)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
