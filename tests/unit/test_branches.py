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
