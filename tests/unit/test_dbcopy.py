"""db copy's pure parts: URLs and params, table filters, the plan, the branch URL, the
Job's argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import dbcopy
from preview_stack import copy_plan
from preview_stack.copy_plan import Conn, branch_url, job_args, parse_table, parse_url
from preview_stack.errors import BadInput


def test_parse_postgres_url_with_everything() -> None:
    c = parse_url("postgresql://app%40x:p%3Aw%2Fd@db.staging:6543/orders?sslmode=require&x=1")
    assert c == Conn(
        "pg", "db.staging", 6543, "app@x", "p:w/d", "orders", (("sslmode", "require"), ("x", "1"))
    )
    assert c.where() == "db.staging:6543/orders"
    assert "p:w/d" not in repr(c)


@pytest.mark.parametrize(
    ("url", "engine", "port"),
    [
        ("postgres://u@h/db", "pg", 5432),
        ("mysql://u:p@h/db", "mysql", 3306),
        ("mariadb://u:p@h:3307/db", "mysql", 3307),
    ],
)
def test_schemes_and_default_ports(url: str, engine: str, port: int) -> None:
    c = parse_url(url)
    assert (c.engine, c.port, c.database) == (engine, port, "db")


def test_credentials_in_the_query_are_used_and_removed() -> None:
    c = parse_url("postgres://h/db?user=u&password=pw&host=other&application_name=a")
    assert (c.user, c.password, c.host, c.query) == ("u", "pw", "h", (("application_name", "a"),))


def test_ipv6_host() -> None:
    c = parse_url("postgres://u:p@[::1]:5433/db")
    assert c.host == "::1" and c.where() == "[::1]:5433/db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h/db", "not a database URL (scheme 'http'"),
        ("h:5432/db", "not a database URL (scheme"),
        ("postgres://u:secret@h:port/db", "not a database URL ("),
        ("postgres:///db", "database URL without a host"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(BadInput, match="^" + message.replace("(", r"\(")) as err:
        parse_url(url)
    assert "secret" not in str(err.value)


def test_engine_must_match_scheme() -> None:
    with pytest.raises(BadInput, match="--engine mysql does not match the URL's scheme postgres"):
        parse_url("postgres://h/db", "mysql")


def test_params_and_env() -> None:
    env = {"P_HOST": "h", "P_PORT": "3307", "P_USER": "u", "P_PASSWORD": "pw", "P_DATABASE": ""}
    conn, url = copy_plan.conn_from_env("mysql", "P", env)
    assert conn == Conn("mysql", "h", 3307, "u", "pw", "") and url is None
    conn, url = copy_plan.conn_from_env("pg", "P", {"P_URL": "postgres://h/db", "P_HOST": "x"})
    assert conn.host == "h" and url == "postgres://h/db"
    with pytest.raises(BadInput, match="neither Q_URL nor Q_HOST"):
        copy_plan.conn_from_env("pg", "Q", env)
    with pytest.raises(BadInput, match="port 'x' is not a number"):
        copy_plan.conn_from_params("pg", host="h", port="x")
    assert copy_plan.conn_from_params("pg", host="h", port="").port == 5432


@pytest.mark.parametrize(
    ("arg", "parsed"),
    [
        ("customers", ("customers", None)),
        ("customers:region = 'eu'", ("customers", "region = 'eu'")),
        ("events: at > '2024-01-01 00:00:00'", ("events", "at > '2024-01-01 00:00:00'")),
    ],
)
def test_parse_table(arg: str, parsed: tuple[str, str | None]) -> None:
    assert parse_table(arg) == parsed
    assert copy_plan.table_arg(*parsed) == arg.replace(": ", ":")


@pytest.mark.parametrize("arg", ["", ":x = 1", "t:", "t:  "])
def test_bad_table_args(arg: str) -> None:
    with pytest.raises(BadInput):
        parse_table(arg)


SRC = parse_url("postgres://u:p@src:5432/shop")
BRANCH = parse_url("postgres://admin:q@branch:5432")


def test_plan_defaults_the_branch_database_to_the_sources() -> None:
    p = copy_plan.plan("pg", "schema", SRC, BRANCH, {"customers": "region = 'eu'"}, 120)
    assert p.branch.database == "shop" and p.wait == 120


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("oracle", "all", SRC, BRANCH), "unsupported engine 'oracle' (supported: pg, mysql)"),
        (("pg", "full", SRC, BRANCH), "unsupported copy mode 'full'"),
        (("pg", "all", SRC, BRANCH, {"t": None}), "copy.tables is ignored with copy.mode all"),
        (("pg", "all", SRC, parse_url("mysql://h")), "a mysql connection given to --engine pg"),
        (("pg", "all", parse_url("postgres://h"), BRANCH), "the source connection names no"),
        (("pg", "all", SRC, parse_url("postgres://x@src/shop")), "source and branch are the same"),
    ],
)
def test_plan_refuses(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        copy_plan.plan(*args)  # type: ignore[arg-type]


def test_resolve_tables() -> None:
    known = ["public.customers", "public.orders", "audit.orders", "audit.log"]
    assert copy_plan.resolve_tables({"orders": None, "log": "x", "audit.orders": None}, known) == {
        "orders": "public.orders",
        "log": "audit.log",
        "audit.orders": "audit.orders",
    }
    with pytest.raises(BadInput) as err:
        copy_plan.resolve_tables({"invoices": None}, known)
    assert str(err.value) == (
        'copy.tables names "invoices", which is not a table of the source database '
        "(tables: audit.log, audit.orders, customers, orders)"
    )


BRANCH_PARTS = {
    "host": "db-branch-orders",
    "port": 5432,
    "user": "branch",
    "password": "g3n:er@ted",
    "database": "orders",
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "postgres://app:secret@db.staging:6543/orders?application_name=shop&connect_timeout=5",
            "postgres://branch:g3n%3Aer%40ted@db-branch-orders:5432/orders"
            "?application_name=shop&connect_timeout=5",
        ),
        (
            "postgresql://app:secret@db/orders?sslmode=verify-full&sslrootcert=/ca.pem"
            "&password=x&host=/sock&passfile=/p&sslpassword=k&hostaddr=1.2.3.4&port=1"
            "&user=u&dbname=d&target_session_attrs=read-write",
            "postgresql://branch:g3n%3Aer%40ted@db-branch-orders:5432/orders"
            "?sslmode=disable&target_session_attrs=read-write",
        ),
        (
            "postgres://app@db/orders?sslmode=prefer",
            "postgres://branch:g3n%3Aer%40ted@db-branch-orders:5432/orders?sslmode=prefer",
        ),
        (
            "mysql://app:secret@db:3306/orders?ssl-mode=REQUIRED&charset=utf8mb4&ssl=true",
            "mysql://branch:g3n%3Aer%40ted@db-branch-orders:5432/orders"
            "?ssl-mode=DISABLED&charset=utf8mb4&ssl=false",
        ),
        ("mariadb://db/x", "mariadb://branch:g3n%3Aer%40ted@db-branch-orders:5432/orders"),
        (
            "postgres://db/x?schema=shop%20eu&connection_limit=5",
            "postgres://branch:g3n%3Aer%40ted@db-branch-orders:5432/orders"
            "?schema=shop%20eu&connection_limit=5",
        ),
    ],
)
def test_branch_url(source: str, expected: str) -> None:
    assert branch_url(source, **BRANCH_PARTS) == expected  # type: ignore[arg-type]
    again = parse_url(expected)
    assert (again.user, again.password, again.host) == ("branch", "g3n:er@ted", "db-branch-orders")


def test_branch_url_without_password_and_ipv6() -> None:
    url = branch_url("postgres://a:b@h/db", host="::1", port=5, user="u", password="", database="d")
    assert url == "postgres://u@[::1]:5/d"


def test_job_args() -> None:
    assert job_args("pg", "schema", {"customers": "region = 'eu'", "notes": None}, 120, "s") == [
        "db",
        "copy",
        "--engine",
        "pg",
        "--from-env",
        "PREVIEW_ENV_SOURCE",
        "--to-env",
        "PREVIEW_ENV_BRANCH",
        "--mode",
        "schema",
        "--table",
        "customers:region = 'eu'",
        "--table",
        "notes",
        "--wait",
        "120",
        "--write-url-secret",
        "s",
    ]
    assert "--write-url-secret" not in job_args("mysql", "all", {}, 0, None)


def test_summary_has_no_credentials() -> None:
    p = copy_plan.plan("pg", "all", SRC, BRANCH)
    line = copy_plan.summary(p, 3, 10)
    assert (
        line == "copied 3 tables (10 rows) from pg src:5432/shop into branch:5432/shop (mode all)"
    )


def test_termination_log(tmp_path: Path) -> None:
    log = tmp_path / "log"
    dbcopy.write_termination_log("failed: x", {dbcopy.TERMINATION_LOG_ENV: str(log)})
    assert log.read_text() == "failed: x\n"
    dbcopy.write_termination_log("nowhere", {})  # unset: nothing, no error


def test_conninfo_never_has_the_password_and_only_libpq_options() -> None:
    c = parse_url("postgres://u:secret@h:1/d?sslmode=require&schema=x&application_name=it's")
    info = dbcopy._Client(c).conninfo()
    assert info == (
        "host='h' port=1 dbname='d' user='u' sslmode='require' application_name='it\\'s'"
    )
    assert dbcopy._Client(c).env()["PGPASSWORD"] == "secret"


@pytest.mark.parametrize(
    ("engine", "where", "runs"),
    [
        ("pg", "region = 'eu'", "region = 'eu'"),
        (
            "pg",
            "name = 'a;b' AND (id > 1 OR \"Weird;Col\" = 'it''s (')",
            "name = 'a;b' AND (id > 1 OR \"Weird;Col\" = 'it''s (')",
        ),
        (
            "pg",
            "created > now() - interval '30 days'",
            "created > now() - CAST('30 days' AS interval)",
        ),
        ("pg", "intolerant = 1 AND point_into IS NULL", "intolerant = 1 AND point_into IS NULL"),
        # E'' and dollar quoting are strings like any other: what runs is a plain literal.
        ("pg", "note = E'it\\'s' OR note = $$a;b$$", "note = 'it''s' OR note = 'a;b'"),
        ("pg", "id IN (SELECT customer_id FROM orders)", "id IN (SELECT customer_id FROM orders)"),
        (
            "pg",
            "$q$ $q$ = $q$') TO STDOUT; DELETE FROM t; --$q$",
            "' ' = ''') TO STDOUT; DELETE FROM t; --'",
        ),
        ("mysql", "name = 'it\\'s; fine' AND `into` = 1", "name = 'it''s; fine' AND `into` = 1"),
        (
            "mysql",
            "id IN (SELECT customer_id FROM orders WHERE total > 5)",
            "id IN (SELECT customer_id FROM orders WHERE total > 5)",
        ),
        (
            "mysql",
            "created > NOW() - INTERVAL 30 DAY",
            "created > NOW() - INTERVAL '30' DAY",
        ),
    ],
)
def test_filters_that_are_one_expression_run_as_parsed(engine: str, where: str, runs: str) -> None:
    assert copy_plan.check_filter(engine, "t", where) == runs
    assert copy_plan.check_filter(engine, "t", runs) == runs  # printed back: parses the same


E_STRING = (
    "'a' = E'\\'') TO STDOUT; SET default_transaction_read_only = off; COMMIT; "
    "DELETE FROM playlist_track; COMMIT; COPY (SELECT E'\\''"
)


@pytest.mark.parametrize(
    ("engine", "where", "why"),
    [
        ("pg", E_STRING, 'not one SQL expression (syntax error at or near "TO")'),
        (
            "pg",
            "1 = 1; DELETE FROM customers",
            'not one SQL expression (syntax error at or near ";")',
        ),
        ("pg", "$$a$$ = $$a$$) TO STDOUT; DELETE FROM t; COPY (SELECT 1", "not one SQL expression"),
        ("pg", "1 = 1) TO PROGRAM 'sh' --", "not one SQL expression"),
        ("pg", "1 = 1 -- x", "comments are not allowed"),
        ("pg", "1 = 1 /* x */", "comments are not allowed"),
        ("pg", "name = 'open", "not one SQL expression (unterminated quoted string at or near"),
        ("pg", "(id > 1", "not one SQL expression (syntax error at end of input)"),
        ("pg", "a = 1 ORDER BY 1", 'not one SQL expression (syntax error at or near "ORDER")'),
        ("pg", "true) UNION (SELECT 1 WHERE (true", "not one SQL expression"),
        (
            "pg",
            "(WITH d AS (DELETE FROM t RETURNING 1) SELECT 1) = 1",
            "INSERT, UPDATE, DELETE and MERGE are not allowed",
        ),
        (
            "pg",
            "EXISTS (WITH u AS (UPDATE t SET a = 1 RETURNING 1) SELECT 1)",
            "INSERT, UPDATE, DELETE and MERGE are not allowed",
        ),
        ("pg", "id IN (SELECT id FROM t FOR UPDATE)", "INTO and FOR UPDATE/SHARE are not allowed"),
        ("pg", "EXISTS (SELECT 1 INTO x)", "INTO and FOR UPDATE/SHARE are not allowed"),
        ("mysql", "1 = 1; DELETE FROM customers", "not one SQL expression"),
        ("mysql", "1 = 1 # x", "comments are not allowed"),
        ("mysql", "1 = 1 /*! OR 1 = 1 */", "comments are not allowed"),
        ("mysql", "1 = 1 -- x", "comments are not allowed"),
        ("mysql", "1 = 1 INTO OUTFILE '/tmp/x'", "not one SQL expression"),
        ("mysql", "(SELECT 1 INTO @x) = 1", "INTO and FOR UPDATE/SHARE are not allowed"),
        ("mysql", "id IN (SELECT id FROM t FOR UPDATE)", "INTO and FOR UPDATE/SHARE"),
        ("mysql", "shop.purge() = 1", "calls to stored functions are not allowed"),
        ("mysql", "SLEEP(5) = 0", "SLEEP() is not allowed"),
        ("mysql", "LOAD_FILE('/etc/passwd') IS NULL", "LOAD_FILE() is not allowed"),
        ("mysql", "NEXTVAL(s) > 0", "NEXTVAL() is not allowed"),
        ("mysql", "a = 1 UNION SELECT 2", "not one SQL expression"),
    ],
)
def test_filters_that_could_do_more_are_refused(engine: str, where: str, why: str) -> None:
    with pytest.raises(BadInput) as err:
        copy_plan.check_filter(engine, "customers", where)
    message = str(err.value)
    assert message.startswith(f"copy.tables filter of customers: {why}"), message
    assert message.endswith("(a filter is one WHERE clause, e.g. region = 'eu')")
    assert "\n" not in message


def test_mysql_filters_name_the_functions_that_may_be_stored() -> None:
    where = "discount(total) > 1 AND LOWER(region) = 'eu' AND NOW() > created"
    assert copy_plan.filter_functions("mysql", "t", where) == {"discount", "now"}
    assert copy_plan.filter_functions("pg", "t", where) == set()


def test_plan_runs_the_parsed_filter_and_checks_names() -> None:
    p = copy_plan.plan("pg", "schema", SRC, BRANCH, {"t": "x = E'a\\'b'"})
    assert p.tables == {"t": "x = 'a''b'"}
    evil = "--init-command=DELETE FROM shop.orders"
    for source, branch, tables, message in [
        (parse_url(f"mysql://u@h/{evil}"), parse_url("mysql://b/x"), {}, "database name"),
        (parse_url("mysql://u@h/shop"), parse_url(f"mysql://b/{evil}"), {}, "database name"),
        (parse_url(f"mysql://{evil}@h/shop"), parse_url("mysql://b/x"), {}, "user name"),
        (parse_url("mysql://u@h/shop"), parse_url("mysql://b/x"), {evil: None}, "table name"),
    ]:
        with pytest.raises(BadInput, match=f"^{message} '--init-command="):
            copy_plan.plan("mysql", "schema", source, branch, tables)


@pytest.mark.parametrize(
    ("engine", "name", "why"),
    [
        ("mysql", "-x", "starts with '-'"),
        ("pg", "", "is empty"),
        ("pg", "a\x00b", "has a control character"),
        ("mysql", "x" * 65, "is longer than 64 bytes"),
        ("pg", "s." + "t" * 64, "is longer than 63 bytes"),
    ],
)
def test_bad_names(engine: str, name: str, why: str) -> None:
    with pytest.raises(BadInput, match=why):
        copy_plan.check_name("table", name, engine)


def test_source_sessions_get_preview_envs_options_never_the_urls() -> None:
    c = parse_url("postgres://u:pw@h:1/d?options=-c%20default_transaction_read_only%3Doff")
    source = dbcopy._Client(c, read_only=True).conninfo()
    assert source == (
        "host='h' port=1 dbname='d' user='u' options='-c default_transaction_read_only=on "
        "-c standard_conforming_strings=on'"
    )
    assert copy_plan.ignored_source_options(c) == ["options"]
    assert "password='pw'" in dbcopy._Client(c, read_only=True).conninfo(with_password=True)
    assert "PGOPTIONS" not in dbcopy._Client(c, read_only=True).env()
    assert dbcopy._Client(c).conninfo().endswith("options='-c default_transaction_read_only=off'")


@pytest.mark.parametrize(
    "url",
    [
        "postgres://app:Pa55/w0rd@h:5432/db",
        "postgres://app:Pa55/w0rd@h:port/db",
        "mysql://app:5432/Pa55w0rd@h:3306/db",
        "postgres://app:Pa55w0rd@h:99999/db",
        "http://app:Pa55w0rd@h/db",
    ],
)
def test_url_errors_never_show_the_userinfo(url: str) -> None:
    with pytest.raises(BadInput) as err:
        parse_url(url)
    assert "Pa55" not in str(err.value) and "w0rd" not in str(err.value)
    assert "://***@h" in str(err.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "postgres://h/db", "--to", "postgres://b"], "--engine is required"),
        (["--engine", "pg", "--to", "postgres://b"], "give exactly one of --from URL or"),
        (
            [
                *("--engine", "pg", "--from", "postgres://h/d", "--to", "postgres://b"),
                *("--table", "t", "--table", "t:x = 1"),
            ],
            "--table t given twice",
        ),
        (
            [
                *("--engine", "pg", "--from-env", "S", "--to", "postgres://b/x"),
                *("--write-url-secret", "s"),
            ],
            "--write-url-secret needs a source URL",
        ),
    ],
)
def test_cli_bad_usage_is_one_line_exit_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    monkeypatch.setenv("S_HOST", "h")
    monkeypatch.setenv("S_DATABASE", "d")
    monkeypatch.setenv(dbcopy.TERMINATION_LOG_ENV, str(tmp_path / "log"))
    result = CliRunner().invoke(app, ["db", "copy", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
    assert (tmp_path / "log").read_text().startswith(f"bad input: {message}")


def test_branch_url_secret_is_merge_patched_in_the_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kubernetes

    from adapters.k8s import client as kubeapi
    from cli.commands import db

    calls: list[tuple[object, ...]] = []

    def merge_patch(self: object, path: str, patch: object) -> None:
        calls.append((path, patch))

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("PREVIEW_ENV_NAMESPACE", "preview-pr-7")
    monkeypatch.setattr(kubernetes.config, "load_kube_config", lambda: None)
    monkeypatch.setattr(kubeapi.KubeApi, "merge_patch", merge_patch)
    db._patch_secret("orders-branch", "postgres://b:p@h:5432/orders")
    assert calls == [
        (
            "/api/v1/namespaces/preview-pr-7/secrets/orders-branch",
            {"stringData": {"url": "postgres://b:p@h:5432/orders"}},
        )
    ]
