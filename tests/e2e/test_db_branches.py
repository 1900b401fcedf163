"""Database branches (feature.db_branches) on the kwok test bed, through `python -m cli`.

kwok runs no containers: here a copy Job "succeeds" without running (kwok completes Job
pods), so these tests prove what is declared: the branch server, its Service and Secret,
the copy Job's image, command and references to the source's Secret (never values), the
preview pod's rewritten variables, shared ids, status, clean, and the bad-input rows. The
copy running for real is tests/e2e/test_real_branches.py, on the real node."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from preview_stack import naming
from testbed import Testbed
from tests.support.cli import Cli, pulumi
from tests.support.polling import wait_until
from tests.support.stacks import stack_names

pytestmark = pytest.mark.cluster
NS = "dbshop"
SOURCE_URL = "postgres://app:s3cret-pw@10.96.0.99:5432/orders?sslmode=require"
SOURCE_PASSWORD = "my-s3cret-pass"
COPY_IMAGE = "example.test/preview-env:db"

STAGING = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: orders-db, namespace: {NS}}}
stringData: {{url: "{SOURCE_URL}"}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: billing-db, namespace: {NS}}}
data: {{DB_HOST: "10.96.0.98", DB_PORT: "3306", DB_NAME: billing}}
---
apiVersion: v1
kind: Secret
metadata: {{name: billing-creds, namespace: {NS}}}
stringData: {{DB_USER: billing, DB_PASSWORD: "{SOURCE_PASSWORD}"}}
""" + "".join(
    f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: example.test/{name}:staging
        env:
        - name: DATABASE_URL
          valueFrom: {{secretKeyRef: {{name: orders-db, key: url}}}}
        - {{name: LOG_LEVEL, value: info}}
        envFrom:
        - configMapRef: {{name: billing-db}}
        - secretRef: {{name: billing-creds}}
"""
    for name in ("orders", "invoices")
)

PG = {
    "type": "pg",
    "id": "{{ key }}-orders",
    "name": "orders",
    "version": "16",
    "connection": {"url": {"type": "env", "variable": "DATABASE_URL"}},
    "copy": {"mode": "schema", "tables": {"customers": {"filter": "region = 'eu'"}}},
}
MYSQL = {
    "type": "mysql",
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


def config(tmp: Path, name: str, target: str, branches: list[dict[str, Any]]) -> str:
    path = tmp / f"{name}.json"
    document = {
        "target": {"path": target, "namespace": NS},
        "feature": {"preview": {"image": "example.test/preview:pr"}, "db_branches": branches},
    }
    path.write_text(json.dumps(document))
    return str(path)


@pytest.fixture(scope="module")
def shop(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> str:
    manifest = tmp_path_factory.mktemp("dbshop") / "staging.yaml"
    manifest.write_text(STAGING)
    testbed.kubectl("apply", "-f", str(manifest))
    testbed.kubectl("-n", NS, "rollout", "status", "deployment/orders", "--timeout=60s")
    return NS


def get(testbed: Testbed, kind: str, name: str | None = None, selector: str = "") -> Any:
    args = ["-n", NS, "get", kind] + ([name] if name else []) + ["-o", "json"]
    if selector:
        args += ["-l", selector]
    return json.loads(testbed.kubectl(*args))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def left_of(testbed: Testbed, key: str) -> list[str]:
    kinds = "deployments,services,secrets,configmaps,jobs,pods,serviceaccounts,roles,rolebindings"
    found = json.loads(
        testbed.kubectl("get", kinds, "-A", "-l", f"{naming.LABEL_PART_OF}={key}", "-o", "json")
    )["items"]
    return [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in found
        if not o["metadata"].get("deletionTimestamp")
    ]


def test_branches_declared_used_shown_and_cleaned(
    cli: Cli, testbed: Testbed, shop: str, tmp_path: Path
) -> None:
    key = "db-1"
    env = {"PREVIEW_ENV_DB_COPY_IMAGE": COPY_IMAGE}
    started = cli(
        "start", "-f", config(tmp_path, "orders", "deployment/orders", [PG, MYSQL]),
        "-k", key, "--routing", "none", "-o", "json", env=env,
    )  # fmt: skip
    assert started.code == 0, started.stderr

    pg_server = naming.workload_name(f"db-{key}-orders", key)
    my_id = naming.target_label("deployment", "orders") + "-1"
    my_server = naming.workload_name(f"db-{my_id}", key)
    # The branch servers: the engine's image, password from the branch's own Secret.
    pg = get(testbed, "deployment", pg_server)["spec"]["template"]["spec"]["containers"][0]
    assert pg["image"] == "postgres:16"
    assert env_of(pg)["POSTGRES_PASSWORD"] == {
        "secretKeyRef": {"name": pg_server, "key": "password"}
    }
    my = get(testbed, "deployment", my_server)["spec"]["template"]["spec"]["containers"][0]
    assert my["image"] == "mysql:8.4"
    pg_ip = get(testbed, "service", pg_server)["spec"]["clusterIP"]
    my_ip = get(testbed, "service", my_server)["spec"]["clusterIP"]

    # The copy Jobs: preview-env's image and command, the source by reference only.
    pg_job = get(testbed, "job", f"{pg_server}-copy")["spec"]["template"]["spec"]
    copy = pg_job["containers"][0]
    assert copy["image"] == COPY_IMAGE
    assert "command" not in copy  # the image's entrypoint: preview-env
    assert copy["args"][:2] == ["db", "copy"]
    assert "--table" in copy["args"] and "customers:region = 'eu'" in copy["args"]
    assert copy["args"][copy["args"].index("--write-url-secret") + 1] == pg_server
    copy_env = env_of(copy)
    assert copy_env["PREVIEW_ENV_SOURCE_URL"] == {
        "secretKeyRef": {"name": "orders-db", "key": "url"}
    }
    assert copy_env["PREVIEW_ENV_BRANCH_HOST"] == pg_ip
    assert pg_job["serviceAccountName"] == f"{pg_server}-copy"
    role = get(testbed, "role", f"{pg_server}-copy")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [pg_server],
         "verbs": ["get", "patch"]}
    ]  # fmt: skip
    my_copy = get(testbed, "job", f"{my_server}-copy")["spec"]["template"]["spec"]
    my_env = env_of(my_copy["containers"][0])
    assert my_env["PREVIEW_ENV_SOURCE_PASSWORD"] == {
        "secretKeyRef": {"name": "billing-creds", "key": "DB_PASSWORD"}
    }
    assert my_env["PREVIEW_ENV_SOURCE_HOST"] == {
        "configMapKeyRef": {"name": "billing-db", "key": "DB_HOST"}
    }
    assert "--table" not in my_copy["containers"][0]["args"]
    assert my_copy.get("automountServiceAccountToken") is False

    # The preview pod points at the branches; the target is untouched.
    preview = get(testbed, "deployment", naming.workload_name("orders", key))
    variables = env_of(preview["spec"]["template"]["spec"]["containers"][0])
    assert variables["DATABASE_URL"] == {"secretKeyRef": {"name": pg_server, "key": "url"}}
    assert variables["DB_HOST"] == my_ip
    assert variables["DB_PORT"] == "3306"
    assert variables["DB_USER"] == "root"
    assert variables["DB_PASSWORD"] == {"secretKeyRef": {"name": my_server, "key": "password"}}
    assert variables["LOG_LEVEL"] == "info"
    target = get(testbed, "deployment", "orders")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(target)["DATABASE_URL"] == {"secretKeyRef": {"name": "orders-db", "key": "url"}}

    # No source credential in anything preview-env wrote or printed.
    record = testbed.kubectl("-n", NS, "get", "configmap", naming.record_name(key), "-o", "json")
    for text in (started.stdout, started.stderr, record, json.dumps(pg_job)):
        assert "s3cret-pw" not in text and SOURCE_PASSWORD not in text

    # A second target of the same key shares the pg branch by id.
    shared = cli(
        "start", "-f", config(tmp_path, "invoices", "deployment/invoices", [PG]),
        "-k", key, "--routing", "none", env=env,
    )  # fmt: skip
    assert shared.code == 0, shared.stderr
    assert len(get(testbed, "job", selector=f"{naming.LABEL_PART_OF}={key}")["items"]) == 2
    invoices = get(testbed, "deployment", naming.workload_name("invoices", key))
    assert env_of(invoices["spec"]["template"]["spec"]["containers"][0])["DATABASE_URL"] == {
        "secretKeyRef": {"name": pg_server, "key": "url"}
    }

    # Another key never shares a branch, even with the same config.
    other = cli(
        "start", "-f", config(tmp_path, "orders", "deployment/orders", [PG]),
        "-k", "db-2", "--routing", "none", env=env,
    )  # fmt: skip
    assert other.code == 0, other.stderr
    assert get(testbed, "deployment", naming.workload_name("db-db-2-orders", "db-2"))

    status = cli("status", "-k", key, "-o", "json")
    assert status.code == 0, status.stderr
    (shown,) = status.json()
    branches = {b["id"]: b for b in shown["branches"]}
    assert set(branches) == {f"{key}-orders", my_id}
    assert branches[f"{key}-orders"]["engine"] == "pg"
    assert branches[f"{key}-orders"]["mode"] == "schema"
    assert branches[f"{key}-orders"]["tables"] == ["customers"]
    assert branches[f"{key}-orders"]["source"] == "DATABASE_URL of deployment/orders in dbshop"
    assert {b["state"] for b in branches.values()} == {"copied"}  # kwok completes Job pods
    text = cli("status", "-k", key)
    assert f"database branch {key}-orders of {key}: pg from DATABASE_URL" in text.stdout

    cleaned = cli("clean", "-k", key)
    assert cleaned.code == 0, cleaned.stderr
    # The reaper removes a branch with its expired environment.
    assert cli("extend", "-k", "db-2", "--ttl", "1s").code == 0
    time.sleep(2)
    reaped = cli("reap", "-o", "json")
    assert {r["key"]: r["outcome"] for r in reaped.json()["results"]}.get("db-2") == "reaped"
    # Secrets and RBAC objects go with their branch Service (the garbage collector).
    assert wait_until(lambda: left_of(testbed, key) == [] and left_of(testbed, "db-2") == [])


BAD = [
    (
        "engine",
        [{**PG, "type": "mongodb"}],
        "database type 'mongodb' is not supported (supported: pg, mysql)",
    ),
    (
        "variable",
        [{**PG, "connection": {"url": {"type": "env", "variable": "ORDERS_URL"}}}],
        "has no variable ORDERS_URL",
    ),
    (
        "filter-with-all",
        [{**PG, "copy": {"mode": "all", "tables": {"customers": {"filter": "id < 3"}}}}],
        'has no effect with copy.mode "all"',
    ),
    ("unknown-field", [{**PG, "iam_auth": True}], "'iam_auth' is not supported in a database"),
    ("mode", [{**PG, "copy": {"mode": "some"}}], "feature.db_branches.0.copy.mode"),
    (
        # An E'...' string hides statements from a quote-counting checker: PostgreSQL's own
        # parser (pglast) sees that it is not one expression.
        "estring-filter",
        [
            {
                **PG,
                "copy": {
                    "mode": "schema",
                    "tables": {
                        "customers": {
                            "filter": "'a' = E'\\'') TO STDOUT; SET default_transaction_read_only"
                            " = off; COMMIT; DELETE FROM customers; COMMIT; COPY (SELECT E'\\''"
                        }
                    },
                },
            }
        ],
        "feature.db_branches[0]: copy.tables filter of customers: not one SQL expression",
    ),
    (
        "write-filter",
        [
            {
                **MYSQL,
                "copy": {"mode": "empty", "tables": {"orders": {"filter": "1 = 1; DELETE"}}},
            }
        ],
        "feature.db_branches[0]: copy.tables filter of orders: not one SQL expression",
    ),
    (
        "option-name",
        [{**MYSQL, "name": "--init-command=DELETE FROM shop.orders"}],
        "feature.db_branches[0]: database name '--init-command=DELETE FROM shop.orders' "
        "starts with '-'",
    ),
]


@pytest.mark.parametrize(("name", "branches", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_branch_config_is_refused_with_nothing_created(
    cli: Cli,
    testbed: Testbed,
    shop: str,
    tmp_path: Path,
    name: str,
    branches: list[dict[str, Any]],
    message: str,
) -> None:
    key = f"bad-{name}"
    result = cli(
        "start", "-f", config(tmp_path, name, "deployment/orders", branches),
        "-k", key, "--routing", "none",
    )  # fmt: skip
    assert result.code == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert left_of(testbed, key) == []
    assert not any(s.endswith(key) for s in stack_names())


def test_pulumi_up_declares_the_same_branches(
    testbed: Testbed, shop: str, stack_config: Any
) -> None:
    """The platform front door takes the same db_branches; a re-run keeps the branch (its
    password is kept, so nothing changes), and `pulumi destroy` removes it."""
    key = "db-plat"
    assert pulumi("stack", "init", key).returncode == 0
    service = {
        "target": "deployment/orders",
        "namespace": NS,
        "image": "example.test/orders:plat",
        "db_branches": [MYSQL],
    }
    stack_config(key, {"services": [service], "dbCopyImage": COPY_IMAGE})
    try:
        up = pulumi("up", "--yes", "--skip-preview", "-s", key)
        assert up.returncode == 0, up.stdout + up.stderr
        server = naming.workload_name(f"db-{naming.target_label('deployment', 'orders')}-0", key)
        job = get(testbed, "job", f"{server}-copy")["spec"]["template"]["spec"]["containers"][0]
        assert job["image"] == COPY_IMAGE and job["args"][:2] == ["db", "copy"]
        again = pulumi("preview", "--expect-no-changes", "-s", key)
        assert again.returncode == 0, again.stdout + again.stderr
        assert pulumi("destroy", "--yes", "--skip-preview", "-s", key).returncode == 0
        assert left_of(testbed, key) == []
    finally:
        pulumi("stack", "rm", "--yes", "--force", "-s", key)


def test_branch_data_lives_on_its_claim_and_status_tells_a_lost_copy(
    cli: Cli, testbed: Testbed, shop: str, tmp_path: Path
) -> None:
    """A branch server keeps its copy on a claim of its own (size and class from
    `storage`), so a replaced pod finds the data again; with `storage: ephemeral` a
    replaced pod has lost it, and status says so instead of "copied"."""
    key = "db-keep"
    kept = {**PG, "id": "keep", "storage": {"size": "2Gi"}}
    lost = {**MYSQL, "id": "gone", "storage": "ephemeral"}
    started = cli(
        "start", "-f", config(tmp_path, "keep", "deployment/orders", [kept, lost]),
        "-k", key, "--routing", "none", env={"PREVIEW_ENV_DB_COPY_IMAGE": COPY_IMAGE},
    )  # fmt: skip
    assert started.code == 0, started.stderr
    kept_server = naming.workload_name("db-keep", key)
    lost_server = naming.workload_name("db-gone", key)
    claim = get(testbed, "pvc", kept_server)
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert wait_until(lambda: get(testbed, "pvc", kept_server)["status"]["phase"] == "Bound")
    server_pod = get(testbed, "deployment", kept_server)["spec"]["template"]["spec"]
    assert server_pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": kept_server}}
    ]
    assert server_pod["containers"][0]["volumeMounts"][0]["subPath"] == "data"
    lost_pod = get(testbed, "deployment", lost_server)["spec"]["template"]["spec"]
    assert lost_pod["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert not get(testbed, "pvc", selector=f"{naming.LABEL_PART_OF}={key}")["items"][1:]

    def states() -> dict[str, str]:
        shown = cli("status", "-k", key, "-o", "json").json()[0]["branches"]
        return {b["id"]: b["state"] for b in shown}

    assert states() == {"keep": "copied", "gone": "copied"}
    time.sleep(1.1)  # creation timestamps have a one-second resolution
    testbed.kubectl("-n", NS, "delete", "pod", "--wait=true", "-l",
                    f"{naming.LABEL_COMPONENT}=db-branch,{naming.LABEL_PART_OF}={key}")  # fmt: skip
    assert wait_until(lambda: states() == {"keep": "copied", "gone": "lost"}, timeout=60), states()
    shown = cli("status", "-k", key)
    assert "lost" in shown.stdout and "ephemeral" in shown.stdout, shown.stdout

    cleaned = cli("clean", "-k", key)
    assert cleaned.code == 0, cleaned.stderr
    assert wait_until(
        lambda: not get(testbed, "pvc", selector=f"{naming.LABEL_PART_OF}={key}")["items"],
        timeout=60,
    )


def test_branch_storage_bad_size_is_refused(
    cli: Cli, testbed: Testbed, shop: str, tmp_path: Path
) -> None:
    bad = {**PG, "storage": {"size": "lots"}}
    failed = cli(
        "start", "-f", config(tmp_path, "bad-size", "deployment/orders", [bad]),
        "-k", "db-bad-size",
        "--routing", "none",
    )  # fmt: skip
    assert failed.code == 2, failed.stderr
    assert "storage size 'lots'" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert not any(s.endswith("db-bad-size") for s in stack_names())
