"""PostgreSQL and MariaDB run for real on the bed's real node, from the images
testbed.images builds out of the host's Debian packages (on demand, like the reaper's):
each engine as a Deployment with a readiness probe that execs its own client, behind a
Service, and a Job in the same image whose client creates a table, inserts rows and reads
them back through the Service's ClusterIP with the user and password the server was
initialised with."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed import Testbed, images
from testbed import node as real_node
from tests.support import wait_until

pytestmark = pytest.mark.cluster


@dataclass(frozen=True)
class Engine:
    name: str
    build: Callable[[Path | None], images.Image]
    port: int
    server_env: dict[str, str]
    probe: list[str]
    # Run by the client Job with DB_HOST set to the Service's ClusterIP: waits for the
    # Service to answer (kube-proxy's rules follow the endpoints by a moment), then the SQL.
    client: str
    client_env: dict[str, str]


ROWS = ("ann", "bob", "cy")
VALUES = ", ".join(f"('{who}')" for who in ROWS)

POSTGRES = Engine(
    name="postgres",
    build=images.postgres,
    port=5432,
    server_env={"POSTGRES_USER": "app", "POSTGRES_PASSWORD": "pg-s3cret", "POSTGRES_DB": "shop"},
    probe=["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", "app"],
    client=(
        'export PGHOST="$DB_HOST"\n'
        "for i in $(seq 60); do pg_isready -q -t 2 && break; sleep 1; done\n"
        "exec psql -v ON_ERROR_STOP=1 -At"
        ' -c "CREATE TABLE visits (id serial PRIMARY KEY, who text NOT NULL)"'
        f' -c "INSERT INTO visits (who) VALUES {VALUES}"'
        " -c \"SELECT 'rows: ' || string_agg(who, ',' ORDER BY id) FROM visits\""
        " -c \"SELECT 'as: ' || current_user || '@' || current_database()\""
    ),
    client_env={"PGUSER": "app", "PGPASSWORD": "pg-s3cret", "PGDATABASE": "shop"},
)

MARIADB = Engine(
    name="mariadb",
    build=images.mariadb,
    port=3306,
    server_env={
        "MARIADB_ROOT_PASSWORD": "root-s3cret",
        "MARIADB_USER": "app",
        "MARIADB_PASSWORD": "maria-s3cret",
        "MARIADB_DATABASE": "shop",
    },
    probe=[
        "sh",
        "-c",
        'mariadb-admin ping --silent -h 127.0.0.1 -u root -p"$MARIADB_ROOT_PASSWORD"',
    ],
    client=(
        "for i in $(seq 60); do"
        ' mariadb-admin ping --silent --connect-timeout=2 -h "$DB_HOST" && break; sleep 1; done\n'
        'exec mariadb -h "$DB_HOST" -u "$MARIADB_USER" "$MARIADB_DATABASE" -N -B -e "'
        "CREATE TABLE visits (id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(20) NOT NULL);"
        f" INSERT INTO visits (who) VALUES {VALUES};"
        " SELECT CONCAT('rows: ', GROUP_CONCAT(who ORDER BY id)) FROM visits;"
        " SELECT CONCAT('as: ', CURRENT_USER(), '@', DATABASE());\""
    ),
    # MYSQL_PWD: the client's password from the environment, off the command line.
    client_env={"MARIADB_USER": "app", "MYSQL_PWD": "maria-s3cret", "MARIADB_DATABASE": "shop"},
)


def _apply(testbed: Testbed, *docs: dict[str, Any]) -> None:
    testbed.kubectl(
        "apply",
        "-f",
        "-",
        input_text=json.dumps({"kind": "List", "apiVersion": "v1", "items": list(docs)}),
    )


def _env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def _server(engine: Engine, namespace: str, image: str) -> list[dict[str, Any]]:
    labels = {"app": engine.name}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": engine.name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    **real_node.pod_placement(),
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": engine.name,
                            "image": image,
                            "imagePullPolicy": "Never",
                            "env": _env(engine.server_env),
                            "ports": [{"containerPort": engine.port}],
                            "readinessProbe": {
                                "exec": {"command": engine.probe},
                                "periodSeconds": 2,
                                "timeoutSeconds": 5,
                            },
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": engine.name, "namespace": namespace},
        "spec": {"selector": labels, "ports": [{"port": engine.port}]},
    }
    return [deployment, service]


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
                            "env": _env({"DB_HOST": host, **engine.client_env}),
                        }
                    ],
                }
            },
        },
    }


def _job_state(testbed: Testbed, namespace: str, job: str) -> str:
    doc = json.loads(testbed.kubectl("-n", namespace, "get", "job", job, "-o", "json"))
    for condition in doc.get("status", {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return str(condition["type"])
    return "Running"


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

    _apply(testbed, *_server(engine, namespace, image.name))
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
    _apply(testbed, _client(engine, namespace, image.name, cluster_ip))
    assert wait_until(lambda: _job_state(testbed, namespace, job) != "Running", timeout=180), (
        _report(testbed, namespace, engine)
    )
    assert _job_state(testbed, namespace, job) == "Complete", _report(testbed, namespace, engine)
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
