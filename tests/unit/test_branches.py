"""Database branches, pure: config, specs, kept passwords, sources by reference, rewrites."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from preview_stack import branches
from preview_stack.changes import AddService, keep_branch_passwords
from preview_stack.changes import apply as apply_change
from preview_stack.config import validate
from preview_stack.derive import redacted
from preview_stack.errors import BadInput
from preview_stack.request import Flags, build_request
from preview_stack.spec import DbBranch, ServiceSpec

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
URL_BRANCH: dict[str, Any] = {
    "type": "pg",
    "id": "orders",
    "connection": {"url": {"type": "env", "variable": "DATABASE_URL"}},
    "copy": {"mode": "schema", "tables": {"customers": {"filter": "region = 'eu'"}}},
}
PARAMS_BRANCH: dict[str, Any] = {
    "type": "mysql",
    "connection": {
        "type": "env",
        "params": {"host": "DB_HOST", "port": "DB_PORT", "password": "DB_PASSWORD"},
    },
}


def service(*entries: dict[str, Any], target: str | None = "deployment/orders") -> ServiceSpec:
    document: dict[str, Any] = {"feature": {"db_branches": list(entries)}}
    if target:
        document["target"] = target
    config = validate(document, source=Path("mirrord.json"))
    flags = Flags(image="example/orders:pr", db_copy_image="example/tools:1")
    return build_request(config, flags, default_namespace="shop").service


def test_defaults_ids_images_and_fresh_passwords() -> None:
    first = service(URL_BRANCH, PARAMS_BRANCH)
    url, params = first.db_branches
    assert (url.id, url.image, url.mode) == ("orders", "postgres:17", "schema")
    assert url.tables[0].name == "customers" and url.tables[0].filter == "region = 'eu'"
    assert (params.id, params.image, params.mode) == ("deployment-orders-1", "mysql:8.4", "empty")
    assert params.copy_image == "example/tools:1"
    assert len(url.password) == 32 and url.password != service(URL_BRANCH).db_branches[0].password


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**URL_BRANCH, "type": "redis"}, "database type 'redis' is not supported"),
        ({**URL_BRANCH, "ttl_secs": 60}, "'ttl_secs' is not supported in a database branch"),
        ({**URL_BRANCH, "connection": {}}, "give exactly one of connection.url"),
        (
            {**URL_BRANCH, "connection": {"params": {"hostname": "H"}}},
            "unknown part 'hostname'",
        ),
        ({**URL_BRANCH, "version": "16", "image": "pg:x"}, "either version or image"),
    ],
)
def test_bad_config_is_refused_by_name(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        service(entry)


E_STRING_ATTACK = (
    "'a' = E'\\'') TO STDOUT; SET default_transaction_read_only = off; COMMIT; "
    "DELETE FROM playlist_track; COMMIT; COPY (SELECT E'\\''"
)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {**URL_BRANCH, "copy": {"tables": {"playlist_track": {"filter": E_STRING_ATTACK}}}},
            "feature.db_branches[0]: copy.tables filter of playlist_track: not one SQL "
            'expression (syntax error at or near "TO")',
        ),
        (
            {**URL_BRANCH, "copy": {"tables": {"t": {"filter": "1 = 1 -- x"}}}},
            "feature.db_branches[0]: copy.tables filter of t: comments are not allowed",
        ),
        (
            {
                **URL_BRANCH,
                "copy": {"tables": {"t": {"filter": "(WITH d AS (DELETE FROM t) SELECT 1) = 1"}}},
            },
            "feature.db_branches[0]: copy.tables filter of t: INSERT, UPDATE, DELETE and MERGE",
        ),
        (
            {**PARAMS_BRANCH, "copy": {"tables": {"orders": {"filter": "1; DELETE FROM t"}}}},
            "feature.db_branches[0]: copy.tables filter of orders: not one SQL expression",
        ),
        (
            {**PARAMS_BRANCH, "copy": {"tables": {"orders": {"filter": "GET_LOCK('x', 9) = 1"}}}},
            "feature.db_branches[0]: copy.tables filter of orders: GET_LOCK() is not allowed",
        ),
        (
            {**PARAMS_BRANCH, "copy": {"tables": {"orders": {"filter": "  "}}}},
            "feature.db_branches[0]: copy.tables filter of orders is empty",
        ),
        (
            {**PARAMS_BRANCH, "name": "--init-command=DELETE FROM shop.orders"},
            "feature.db_branches[0]: database name '--init-command=DELETE FROM shop.orders' "
            "starts with '-'",
        ),
        (
            {**PARAMS_BRANCH, "copy": {"tables": {"--where=1": {}}}},
            "feature.db_branches[0]: table name '--where=1' starts with '-'",
        ),
        (
            {**URL_BRANCH, "name": "shop\nx"},
            "feature.db_branches[0]: database name 'shop\\nx' has a control character",
        ),
    ],
)
def test_hostile_copy_config_is_refused_at_start(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput) as err:
        service(entry)
    assert str(err.value).startswith(message), str(err.value)


def test_filter_with_all_and_targetless_are_refused() -> None:
    with pytest.raises(BadInput, match=r'no effect with copy\.mode "all"'):
        service({**URL_BRANCH, "copy": {"mode": "all", "tables": {"t": {"filter": "x"}}}})
    with pytest.raises(BadInput, match="needs a target"):
        service(URL_BRANCH, target=None)


def test_a_branch_keeps_its_first_password_and_shared_ids_must_agree() -> None:
    env = apply_change(AddService(service(URL_BRANCH), 3600, "me"), "k", None, NOW)
    assert env is not None
    first = env.services[0].db_branches[0].password
    again = apply_change(AddService(service(URL_BRANCH), 3600, "me"), "k", env, NOW)
    assert again is not None and again.services[0].db_branches[0].password == first
    (kept,) = keep_branch_passwords([service(URL_BRANCH)], env)
    assert kept.db_branches[0].password == first
    other = service({**URL_BRANCH, "type": "mysql"}).model_copy(
        update={"target": service(target="deployment/billing").target}
    )
    with pytest.raises(BadInput, match="declared differently"):
        apply_change(AddService(other, 3600, "me"), "k", env, NOW)


def test_redacted_spec_holds_no_branch_password() -> None:
    env = apply_change(AddService(service(URL_BRANCH), 3600, "me"), "k", None, NOW)
    assert env is not None
    assert env.services[0].db_branches[0].password not in redacted(env).model_dump_json()


def branch(**update: Any) -> DbBranch:
    return service(URL_BRANCH).db_branches[0].model_copy(update=update)


def test_the_source_is_taken_by_reference_from_env_and_env_from() -> None:
    container = {
        "name": "app",
        "env": [
            {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "u"}}}
        ],
        "envFrom": [{"prefix": "DB_", "secretRef": {"name": "creds"}}],
    }
    sources = {"secret/creds": ["HOST", "PASSWORD"]}
    found = branches.connection_source(branch(), container, sources, where="app")
    assert found == {"DATABASE_URL": {"valueFrom": {"secretKeyRef": {"name": "db", "key": "u"}}}}
    params = branch(url_variable=None, params={"host": "DB_HOST", "password": "DB_PASSWORD"})
    found = branches.connection_source(params, container, sources, where="app")
    assert found["DB_PASSWORD"] == {
        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}
    }
    with pytest.raises(BadInput, match="app has no variable DB_PORT"):
        branches.connection_source(
            branch(url_variable=None, params={"host": "DB_HOST", "port": "DB_PORT"}),
            container,
            sources,
            where="app",
        )


def test_preview_variables_point_at_the_branch() -> None:
    variables = [
        {"name": "DATABASE_URL", "value": "postgres://a:b@db/x"},
        {"name": "A", "value": "1"},
    ]
    rewritten = branches.rewrite_connection(variables, "k", [branch()])
    server = branches.server_name("k", branch())
    assert rewritten[0] == {
        "name": "DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": server, "key": "url"}},
    }
    assert rewritten[1] == {"name": "A", "value": "1"}
    params = branch(
        engine="mysql", url_variable=None, params={"host": "DB_HOST", "password": "DB_PASSWORD"}
    )
    rewritten = branches.rewrite_connection([], "k", [params])
    names = {v["name"]: v for v in rewritten}
    assert branches.CLUSTER_IP.match(names["DB_HOST"]["value"])
    assert names["DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"


def test_copy_job_runs_the_laptop_command() -> None:
    args = branches.copy_args(branch(), wait=60, url_secret="db-orders-k")
    assert args == [
        "db", "copy", "--engine", "pg", "--from-env", "PREVIEW_ENV_SOURCE",
        "--to-env", "PREVIEW_ENV_BRANCH", "--mode", "schema",
        "--table", "customers:region = 'eu'", "--wait", "60", "--write-url-secret", "db-orders-k",
    ]  # fmt: skip


def _server_objects(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    env = apply_change(AddService(service(entry), 3600, "me"), "k", None, NOW)
    assert env is not None
    (svc,) = env.services
    manifests = branches.branch_manifests(
        env, svc, svc.db_branches[0], {}, {"DATABASE_URL": {"value": "postgres://a@b/c"}}
    )
    return {m["kind"]: m for m in manifests}


def test_branch_server_keeps_its_data_on_a_claim_sized_from_the_config() -> None:
    made = _server_objects({**URL_BRANCH, "storage": {"size": "5Gi", "class": "fast"}})
    claim = made["PersistentVolumeClaim"]
    server = made["Deployment"]["metadata"]["name"]
    assert claim["metadata"]["name"] == server
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "5Gi"}},
        "storageClassName": "fast",
    }
    pod = made["Deployment"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": server}}]
    mount = pod["containers"][0]["volumeMounts"][0]
    assert mount["subPath"] == "data" and mount["mountPath"] == "/var/lib/postgresql/data"
    default = _server_objects(URL_BRANCH)["PersistentVolumeClaim"]["spec"]
    assert default["resources"] == {"requests": {"storage": "1Gi"}}
    assert "storageClassName" not in default  # the cluster's default class


def test_ephemeral_storage_is_an_empty_dir_and_a_replaced_server_reports_lost() -> None:
    from preview_stack.branch_status import branch_statuses

    made = _server_objects({**URL_BRANCH, "storage": "ephemeral"})
    assert "PersistentVolumeClaim" not in made
    assert made["Deployment"]["spec"]["template"]["spec"]["volumes"] == [
        {"name": "data", "emptyDir": {}}
    ]
    env = apply_change(
        AddService(service({**URL_BRANCH, "storage": "ephemeral"}), 3600, "me"), "k", None, NOW
    )
    assert env is not None
    job = made["Job"]
    job = {
        **job,
        "status": {
            "completionTime": "2026-11-28T12:01:00Z",
            "conditions": [{"type": "Complete", "status": "True"}],
        },
    }
    labels = made["Deployment"]["spec"]["template"]["metadata"]["labels"]

    def server_pod(created: str) -> dict[str, Any]:
        meta = {"namespace": "shop", "labels": labels, "creationTimestamp": created}
        return {"metadata": meta, "status": {"phase": "Running"}}

    (before,) = branch_statuses(env, [job], [server_pod("2026-11-28T12:00:30Z")])
    assert before.state == "copied"
    (after,) = branch_statuses(env, [job], [server_pod("2026-11-28T12:05:00Z")])
    assert after.state == "lost" and "ephemeral" in (after.message or "")


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"size": "lots"}, "storage size 'lots' is not a quantity"),
        ({"size": "1Gi", "kind": "ssd"}, "'kind' is not supported in a database branch"),
        ("forever", "storage"),
    ],
)
def test_bad_storage_is_refused(storage: Any, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        service({**URL_BRANCH, "storage": storage})
