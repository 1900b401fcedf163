"""PostgreSQL and MariaDB servers for the bed's real node, from the images testbed.images
builds out of the host's Debian packages: each engine a Deployment whose readiness probe
execs its own client, behind a Service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import images
from testbed import node as real_node
from tests.support.workloads import deployment_and_service


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


def env_list(values: dict[str, str]) -> list[dict[str, str]]:
    """A container's env entries for these values."""
    return [{"name": k, "value": v} for k, v in values.items()]


def server_manifests(engine: Engine, namespace: str, image: str) -> list[dict[str, Any]]:
    """The engine's server on the real node and its Service (named after the engine)."""
    container = {
        "name": engine.name,
        "image": image,
        "imagePullPolicy": "Never",
        "env": env_list(engine.server_env),
        "ports": [{"containerPort": engine.port}],
        "readinessProbe": {
            "exec": {"command": engine.probe},
            "periodSeconds": 2,
            "timeoutSeconds": 5,
        },
    }
    return deployment_and_service(
        engine.name,
        namespace,
        [container],
        [{"port": engine.port}],
        pod={**real_node.pod_placement(), "terminationGracePeriodSeconds": 5},
    )
