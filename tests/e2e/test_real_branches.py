"""Database branches for real, on the test bed's real node, through `python -m cli start`.

Staging's database runs as a pod (PostgreSQL, MariaDB: images from the host's Debian
packages), the target reads its connection from a Secret, and the preview's branch server
and copy Job (the preview-env image with the engines' client tools) run on the real node:
the branch holds exactly the rows the config asks for, the source is unchanged, the preview's
connection points at the branch, a filter on a missing table fails the start with the copy's
own reason (exit 2, nothing left), and `clean` removes every branch object."""

from __future__ import annotations

import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from preview_stack import naming
from testbed import Testbed, images
from testbed import node as real_node
from tests.support.cli import Cli
from tests.support.databases import MARIADB, POSTGRES, Engine, env_list, server_manifests
from tests.support.kube import apply, job_state
from tests.support.polling import wait_until
from tests.support.stacks import stack_names
from tests.support.workloads import deployment

pytestmark = pytest.mark.cluster

SOURCE_REF = {"name": "orders-db", "key": "url"}
ECHO = "PREVIEW_ENV_ECHO_IMAGE"
PG_SEED = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, region text NOT NULL);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers (id),
                     item text NOT NULL);
CREATE VIEW eu_customers AS SELECT id, name FROM customers WHERE region = 'eu';
INSERT INTO customers (name, region) VALUES ('Zoë', 'eu'), ('Bob', 'us'), ('Åsa', 'eu');
INSERT INTO orders (customer_id, item) VALUES (1, 'café'), (2, 'tea');
"""
PG_REPORT = (
    "SELECT 'customers: ' || coalesce(string_agg(name, ',' ORDER BY id), '') FROM customers;"
    "SELECT 'orders: ' || count(*) FROM orders;"
    "SELECT 'view: ' || count(*) FROM eu_customers;"
    "SELECT 'seq: ' || last_value FROM customers_id_seq;"
)
MY_SEED = """
CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20) NOT NULL,
                        region VARCHAR(5) NOT NULL) DEFAULT CHARSET utf8mb4;
CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer_id INT,
                     item VARCHAR(20) NOT NULL, FOREIGN KEY (customer_id) REFERENCES customers (id))
                     DEFAULT CHARSET utf8mb4;
INSERT INTO customers (name, region) VALUES ('Zoë', 'eu'), ('Bob', 'us'), ('Åsa', 'eu');
INSERT INTO orders (customer_id, item) VALUES (1, 'café'), (2, 'tea');
"""
MY_REPORT = (
    "SELECT CONCAT('customers: ', GROUP_CONCAT(name ORDER BY id)) FROM customers;"
    "SELECT CONCAT('orders: ', GROUP_CONCAT(item ORDER BY id)) FROM orders;"
)


def _sql_job(
    engine: Engine, namespace: str, image: str, name: str, host: str, creds: dict[str, str],
    sql: str,
) -> dict[str, Any]:  # fmt: skip
    if engine is POSTGRES:
        script = (
            'for i in $(seq 60); do pg_isready -q -t 2 -h "$DB_HOST" && break; sleep 1; done\n'
            'exec psql -h "$DB_HOST" -v ON_ERROR_STOP=1 -At -c "$SQL"'
        )
    else:
        script = (
            "for i in $(seq 60); do mariadb-admin ping --silent --connect-timeout=2"
            ' -h "$DB_HOST" -u "$DB_USER" && break; sleep 1; done\n'
            'exec mariadb --default-character-set=utf8mb4 -h "$DB_HOST" -u "$DB_USER"'
            ' "$DB_NAME" -N -B -e "$SQL"'
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    **real_node.pod_placement(),
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "sql",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "args": ["sh", "-c", script],
                            "env": env_list({"DB_HOST": host, "SQL": sql, **creds}),
                        }
                    ],
                }
            },
        },
    }


def run_sql(
    testbed: Testbed, engine: Engine, namespace: str, image: str, host: str,
    creds: dict[str, str], sql: str,
) -> str:  # fmt: skip
    """Run `sql` with the engine's own client in a Job on the real node; its output."""
    name = f"sql-{uuid.uuid4().hex[:6]}"
    apply(testbed, _sql_job(engine, namespace, image, name, host, creds, sql))
    assert wait_until(lambda: job_state(testbed, namespace, name) != "Running", timeout=180), (
        testbed.kubectl("-n", namespace, "describe", "pods")
    )
    return testbed.kubectl("-n", namespace, "logs", f"job/{name}")


def pg_creds(user: str, password: str, database: str) -> dict[str, str]:
    return {"PGUSER": user, "PGPASSWORD": password, "PGDATABASE": database}


def my_creds(user: str, password: str, database: str) -> dict[str, str]:
    return {"DB_USER": user, "MYSQL_PWD": password, "DB_NAME": database}


def cluster_ip(testbed: Testbed, namespace: str, name: str) -> str:
    service = json.loads(testbed.kubectl("-n", namespace, "get", "service", name, "-o", "json"))
    return str(service["spec"]["clusterIP"])


def secret_data(testbed: Testbed, namespace: str, name: str) -> dict[str, str]:
    doc = json.loads(testbed.kubectl("-n", namespace, "get", "secret", name, "-o", "json"))
    return {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}


def left_of(testbed: Testbed, key: str) -> list[str]:
    kinds = "deployments,services,secrets,jobs,serviceaccounts,roles,rolebindings,pvc"
    found = json.loads(
        testbed.kubectl("get", kinds, "-A", "-l", f"{naming.LABEL_PART_OF}={key}", "-o", "json")
    )["items"]
    return [f"{o['kind']}/{o['metadata']['name']}" for o in found]


def target(namespace: str, image: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    container = {"name": "app", "image": image, "imagePullPolicy": "Never", "env": env}
    return deployment(
        "orders",
        namespace,
        [container],
        pod={**real_node.pod_placement(), "terminationGracePeriodSeconds": 1},
    )


def write_config(tmp: Path, name: str, namespace: str, branch: dict[str, Any]) -> str:
    path = tmp / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "target": {"path": "deployment/orders", "namespace": namespace},
                "feature": {
                    "preview": {
                        "image": "echo-preview",  # replaced by -i below
                        "creation_timeout_secs": 240,
                    },
                    "db_branches": [branch],
                },
            }
        )
    )
    return str(path)


@pytest.fixture(scope="module")
def built(testbed: Testbed) -> dict[str, str]:
    """The images, built from the host's packages and imported into the real node."""
    if not testbed.real_node:
        pytest.skip("needs the real node (PREVIEW_ENV_REAL_NODE=0)")
    made = {
        "postgres": images.postgres(None),
        "mariadb": images.mariadb(None),
        "tools": images.reaper(testbed.toolchain),
    }
    for image in made.values():
        real_node.import_image(testbed.state_dir, image)
    return {name: image.name for name, image in made.items()}


def test_postgres_branch_copies_schema_and_filtered_rows(
    cli: Cli, testbed: Testbed, namespace: str, built: dict[str, str], tmp_path: Path
) -> None:
    pg = built["postgres"]
    apply(testbed, *server_manifests(POSTGRES, namespace, pg))
    testbed.kubectl("-n", namespace, "rollout", "status", "deployment/postgres", "--timeout=180s")
    source_ip = cluster_ip(testbed, namespace, "postgres")
    app = pg_creds("app", "pg-s3cret", "shop")
    run_sql(testbed, POSTGRES, namespace, pg, source_ip, app, PG_SEED)
    before = run_sql(testbed, POSTGRES, namespace, pg, source_ip, app, PG_REPORT)
    url = f"postgres://app:pg-s3cret@{source_ip}:5432/shop?application_name=orders"
    apply(
        testbed,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "orders-db", "namespace": namespace},
            "stringData": {"url": url},
        },
        target(
            namespace,
            os.environ[ECHO],
            [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": SOURCE_REF}}],
        ),
    )
    echo = os.environ[ECHO]
    branch = {
        "type": "pg",
        "id": "{{ key }}-orders",
        "image": pg,
        "connection": {"url": {"type": "env", "variable": "DATABASE_URL"}},
        "copy": {"mode": "schema", "tables": {"customers": {"filter": "region = 'eu'"}}},
    }
    env = {"PREVIEW_ENV_DB_COPY_IMAGE": built["tools"]}
    key = "rb-pg"
    started = cli(
        "start", "-f", write_config(tmp_path, "pg", namespace, branch), "-i", echo,
        "-k", key, "--routing", "none", env=env, timeout=600,
    )  # fmt: skip
    assert started.code == 0, started.stderr + started.stdout

    server = naming.workload_name(f"db-{key}-orders", key)
    branch_ip = cluster_ip(testbed, namespace, server)
    secret = secret_data(testbed, namespace, server)
    # The rewritten URL: the branch's address and credentials, the source's query kept.
    assert secret["url"] == (
        f"postgres://preview:{secret['password']}@{branch_ip}:5432/shop?application_name=orders"
    )
    status = cli("status", "-k", key, "-o", "json")
    (branch_status,) = status.json()[0]["branches"]
    assert branch_status["state"] == "copied", branch_status
    assert "pg-s3cret" not in status.stdout + started.stdout + started.stderr

    copied = run_sql(
        testbed, POSTGRES, namespace, pg, branch_ip,
        pg_creds("preview", secret["password"], "shop"), PG_REPORT,
    )  # fmt: skip
    assert copied.split("\n")[:4] == ["customers: Zoë,Åsa", "orders: 0", "view: 2", "seq: 3"]
    after = run_sql(testbed, POSTGRES, namespace, pg, source_ip, app, PG_REPORT)
    assert after == before  # the source is untouched

    # The branch server's pod is replaced (an eviction, a node drain, an OOM kill's
    # rescheduling): the copy lives on the branch's own claim and is still there.
    claim = json.loads(
        testbed.kubectl("-n", namespace, "get", "pvc", server, "-o", "json")
    )  # fmt: skip
    assert claim["status"]["phase"] == "Bound", claim
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    testbed.kubectl("-n", namespace, "delete", "pod", "-l", f"{naming.LABEL_COMPONENT}=db-branch",
                    "--wait=true", "--timeout=60s")  # fmt: skip
    testbed.kubectl("-n", namespace, "rollout", "status", f"deployment/{server}", "--timeout=120s")
    again = run_sql(
        testbed, POSTGRES, namespace, pg, branch_ip,
        pg_creds("preview", secret["password"], "shop"), PG_REPORT,
    )  # fmt: skip
    assert again == copied
    (branch_status,) = cli("status", "-k", key, "-o", "json").json()[0]["branches"]
    assert branch_status["state"] == "copied", branch_status

    cleaned = cli("clean", "-k", key)
    assert cleaned.code == 0, cleaned.stderr
    assert wait_until(lambda: left_of(testbed, key) == [], timeout=60), left_of(testbed, key)

    # A filter on a table the source does not have: the copy's own reason, exit 2, nothing left.
    bad = {**branch, "copy": {"mode": "schema", "tables": {"custmers": {"filter": "true"}}}}
    failed = cli(
        "start", "-f", write_config(tmp_path, "bad", namespace, bad), "-i", echo,
        "-k", "rb-bad", "--routing", "none", env=env, timeout=600,
    )  # fmt: skip
    assert failed.code == 2, failed.stderr
    assert "database branch 'rb-bad-orders'" in failed.stderr and "custmers" in failed.stderr
    assert wait_until(lambda: left_of(testbed, "rb-bad") == [], timeout=60)
    assert not any(s.endswith("rb-bad") for s in stack_names())


def test_mariadb_branch_copies_everything_through_params(
    cli: Cli, testbed: Testbed, namespace: str, built: dict[str, str], tmp_path: Path
) -> None:
    maria = built["mariadb"]
    apply(testbed, *server_manifests(MARIADB, namespace, maria))
    testbed.kubectl("-n", namespace, "rollout", "status", "deployment/mariadb", "--timeout=180s")
    source_ip = cluster_ip(testbed, namespace, "mariadb")
    app = my_creds("app", "maria-s3cret", "shop")
    run_sql(testbed, MARIADB, namespace, maria, source_ip, app, MY_SEED)
    before = run_sql(testbed, MARIADB, namespace, maria, source_ip, app, MY_REPORT)
    apply(
        testbed,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "billing-creds", "namespace": namespace},
            "stringData": {"DB_USER": "app", "DB_PASSWORD": "maria-s3cret"},
        },
        target(
            namespace,
            os.environ[ECHO],
            [
                {"name": "DB_HOST", "value": source_ip},
                {"name": "DB_PORT", "value": "3306"},
                {"name": "DB_NAME", "value": "shop"},
            ],
        ),
    )
    # envFrom for the credentials
    testbed.kubectl(
        "-n", namespace, "patch", "deployment", "orders", "--type=json", "-p",
        json.dumps([{"op": "add", "path": "/spec/template/spec/containers/0/envFrom",
                     "value": [{"secretRef": {"name": "billing-creds"}}]}]),
    )  # fmt: skip
    branch = {
        "type": "mysql",
        "image": maria,
        "connection": {
            "type": "env",
            "params": {
                "host": "DB_HOST",
                "port": "DB_PORT",
                "user": "DB_USER",
                "password": "DB_PASSWORD",
                "database": "DB_NAME",
            },
        },
        "copy": {"mode": "all"},
    }
    key = "rb-my"
    started = cli(
        "start", "-f", write_config(tmp_path, "my", namespace, branch), "-i", os.environ[ECHO],
        "-k", key, "--routing", "none", env={"PREVIEW_ENV_DB_COPY_IMAGE": built["tools"]},
        timeout=600,
    )  # fmt: skip
    assert started.code == 0, started.stderr + started.stdout
    server = naming.workload_name(f"db-{naming.target_label('deployment', 'orders')}-0", key)
    branch_ip = cluster_ip(testbed, namespace, server)
    secret = secret_data(testbed, namespace, server)
    copied = run_sql(
        testbed, MARIADB, namespace, maria, branch_ip, my_creds("root", secret["password"], "shop"),
        MY_REPORT,
    )  # fmt: skip
    assert copied == before and "Zoë,Bob,Åsa" in copied and "café,tea" in copied
    preview = json.loads(
        testbed.kubectl("-n", namespace, "get", "deployment", naming.workload_name("orders", key),
                        "-o", "json")
    )["spec"]["template"]["spec"]["containers"][0]  # fmt: skip
    variables = {e["name"]: e.get("value", e.get("valueFrom")) for e in preview["env"]}
    assert variables["DB_HOST"] == branch_ip and variables["DB_USER"] == "root"
    assert run_sql(testbed, MARIADB, namespace, maria, source_ip, app, MY_REPORT) == before
    cleaned = cli("clean", "-k", key)
    assert cleaned.code == 0, cleaned.stderr
    assert wait_until(lambda: left_of(testbed, key) == [], timeout=60), left_of(testbed, key)
