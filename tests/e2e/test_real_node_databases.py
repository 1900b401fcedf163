"""PostgreSQL and MariaDB run for real on the bed's real node, from the images
testbed.images builds out of the host's Debian packages (on demand, like the reaper's):
each engine as a Deployment with a readiness probe that execs its own client, behind a
Service, and a Job in the same image whose client creates a table, inserts rows and reads
them back through the Service's ClusterIP with the user and password the server was
initialised with."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from testbed import Testbed
from testbed import node as real_node
from tests.support.databases import MARIADB, POSTGRES, ROWS, Engine, env_list, server_manifests
from tests.support.kube import apply, job_state
from tests.support.polling import wait_until

pytestmark = pytest.mark.cluster


def _client(engine: Engine, namespace: str, image: str, host: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{engine.name}-client", "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    **real_node.pod_placement(),
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "client",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "args": ["sh", "-c", engine.client],  # through the entrypoint
                            "env": env_list({"DB_HOST": host, **engine.client_env}),
                        }
                    ],
                }
            },
        },
    }


def _report(testbed: Testbed, namespace: str, engine: Engine) -> str:
    parts = []
    for args in (
        ("get", "pods", "-o", "wide"),
        ("describe", "pods"),
        ("logs", f"deployment/{engine.name}", "--tail=60"),
        ("logs", f"job/{engine.name}-client", "--tail=60"),
    ):
        try:
            parts.append(testbed.kubectl("-n", namespace, *args))
        except RuntimeError as exc:
            parts.append(str(exc))
    return "\n".join(parts)


@pytest.mark.parametrize("engine", [POSTGRES, MARIADB], ids=lambda e: e.name)
def test_database_serves_a_client_through_its_service(
    testbed: Testbed, namespace: str, engine: Engine
) -> None:
    if not testbed.real_node:
        pytest.skip("needs the real node (PREVIEW_ENV_REAL_NODE=0)")
    started = time.monotonic()
    image = engine.build(None)
    node_ready = time.monotonic()
    real_node.import_image(testbed.state_dir, image)
    imported = time.monotonic()

    apply(testbed, *server_manifests(engine, namespace, image.name))
    try:
        testbed.kubectl(
            "rollout", "status", f"deployment/{engine.name}", "-n", namespace, "--timeout=180s"
        )
    except RuntimeError as exc:
        raise AssertionError(f"{exc}\n{_report(testbed, namespace, engine)}") from exc
    ready = time.monotonic()
    service = json.loads(
        testbed.kubectl("get", "service", engine.name, "-n", namespace, "-o", "json")
    )
    cluster_ip = service["spec"]["clusterIP"]

    job = f"{engine.name}-client"
    apply(testbed, _client(engine, namespace, image.name, cluster_ip))
    assert wait_until(lambda: job_state(testbed, namespace, job) != "Running", timeout=180), (
        _report(testbed, namespace, engine)
    )
    assert job_state(testbed, namespace, job) == "Complete", _report(testbed, namespace, engine)
    done = time.monotonic()

    logs = testbed.kubectl("-n", namespace, "logs", f"job/{job}")
    assert f"rows: {','.join(ROWS)}" in logs, logs
    assert "as: app" in logs and "@shop" in logs, logs
    pod = json.loads(
        testbed.kubectl("get", "pods", "-n", namespace, "-l", f"app={engine.name}", "-o", "json")
    )["items"][0]
    assert pod["spec"]["nodeName"] == real_node.NAME
    server_logs = testbed.kubectl("-n", namespace, "logs", pod["metadata"]["name"])
    assert "entrypoint: initialised" in server_logs, server_logs

    size = image.archive.stat().st_size / 1e6
    print(
        f"\n{image.name} ({size:.0f} MB): built or found {node_ready - started:.1f}s, "
        f"imported {imported - node_ready:.1f}s, Ready {ready - imported:.1f}s, "
        f"client Job done {done - ready:.1f}s; the client's log:\n{logs}"
    )
