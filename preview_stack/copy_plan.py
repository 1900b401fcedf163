"""The database copy's plan (pure): what `preview-env db copy` will do, checked before
any server is reached. The runner (adapters.dbcopy) starts the client tools on it.

Here: the connection model (`Conn`, parsed from a URL or PREFIX_* variables, never showing
credentials in a message), the branch URL, table filters, name checks, the `Plan` and the
copy Job's argv.

Modes:
- `empty`: an empty database; with `tables`, only those tables are created (with their
  sequences, indexes and constraints) and filled with their filtered rows. A foreign key
  from a listed table to a table that is not listed is dropped, with a warning (the
  referenced table does not exist in the branch).
- `schema`: every table's and view's schema, no rows; with `tables`, those tables' rows
  (all, or those matching their filter).
- `all`: schema and every row; `tables` are refused (bad input).

A table filter is parsed by the engine's own grammar as exactly one expression
(`check_filter`: pglast for PostgreSQL, sqlglot for MySQL, both pure parsers) and the
parsed expression, printed back, is what runs. Names never reach an argv where they could
be read as options (`check_name`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, get_args
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from preview_stack.errors import BadInput

Engine = Literal["pg", "mysql"]
Mode = Literal["empty", "schema", "all"]
ENGINES: tuple[str, ...] = get_args(Engine)
MODES: tuple[str, ...] = get_args(Mode)
DEFAULT_PORTS: dict[str, int] = {"pg": 5432, "mysql": 3306}
SCHEMES: dict[str, str] = {
    "postgres": "pg",
    "postgresql": "pg",
    "mysql": "mysql",
    "mariadb": "mysql",
}

# Query parameters that name a host, a user or a secret: never carried into a branch URL,
# never passed to the client tools on their command line.
SENSITIVE_PARAMS = frozenset(
    {
        "password",
        "pass",
        "pwd",
        "user",
        "username",
        "host",
        "hostaddr",
        "port",
        "dbname",
        "database",
        "passfile",
        "sslpassword",
        "sslkey",
        "sslcert",
        "service",
        "servicefile",
    }
)
# URL parameters handed to libpq (others, e.g. an ORM's `schema=`, are the application's).
LIBPQ_OPTIONS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcrl",
        "sslcompression",
        "sslsni",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "gssencmode",
        "krbsrvname",
        "channel_binding",
        "require_auth",
        "connect_timeout",
        "application_name",
        "options",
        "target_session_attrs",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "client_encoding",
    }
)
_TLS_REQUIRED = {"require", "verify-ca", "verify-full", "required", "verify_ca", "verify_identity"}


# ------------------------------------------------------------------------- connections
@dataclass(frozen=True)
class Conn:
    """Where a database is: everything the client tools need. `query` holds the URL's
    remaining (non-sensitive) parameters, e.g. sslmode."""

    engine: Engine
    host: str
    port: int
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""
    query: tuple[tuple[str, str], ...] = ()

    def where(self) -> str:
        """host:port/db, never credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}/{self.database}"


def parse_url(url: str, engine: Engine | None = None) -> Conn:
    """A postgres://, postgresql://, mysql:// or mariadb:// URL; BadInput otherwise. No
    message ever shows the URL's user or password."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise BadInput(
            "not a database URL (bad host or port; percent-encode '/', '@' and ':' in the user "
            f"and password): {_redact(url)}"
        ) from None
    scheme_engine = SCHEMES.get(parts.scheme.lower())
    if scheme_engine is None:
        raise BadInput(
            f"not a database URL (scheme {parts.scheme or 'missing'!r}; expected "
            f"{', '.join(s + '://' for s in SCHEMES)}): {_redact(url)}"
        )
    if engine is not None and scheme_engine != engine:
        raise BadInput(f"--engine {engine} does not match the URL's scheme {parts.scheme}://")
    if "@" in parts.path:
        raise BadInput(
            "not a database URL ('@' after the host: percent-encode '/' and '@' in the user "
            f"and password): {_redact(url)}"
        )
    if not parts.hostname:
        raise BadInput(f"database URL without a host: {_redact(url)}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    password = unquote(parts.password or "") or dict(query).get("password", "")
    user = unquote(parts.username or "") or dict(query).get("user", "")
    return Conn(
        engine=scheme_engine,  # type: ignore[arg-type]
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme_engine],
        user=user,
        password=password,
        database=unquote(parts.path.lstrip("/")),
        query=tuple((k, v) for k, v in query if k.lower() not in SENSITIVE_PARAMS),
    )


def conn_from_params(
    engine: Engine,
    *,
    host: str,
    port: str | int | None = None,
    user: str = "",
    password: str = "",
    database: str = "",
) -> Conn:
    """Connection parameters (as the PREFIX_HOST, PREFIX_PORT, ... variables give them)."""
    if not host:
        raise BadInput("database connection without a host")
    try:
        number = int(port) if port not in (None, "") else DEFAULT_PORTS[engine]
    except ValueError:
        raise BadInput(f"database port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise BadInput(f"database port {number} is out of range")
    return Conn(engine, host, number, user, password, database)


def conn_from_env(engine: Engine, prefix: str, env: Mapping[str, str]) -> tuple[Conn, str | None]:
    """PREFIX_URL, else PREFIX_HOST/_PORT/_USER/_PASSWORD/_DATABASE; the URL if one was
    given (a branch URL can only be written for a URL source)."""
    url = env.get(f"{prefix}_URL", "")
    if url:
        return parse_url(url, engine), url
    if not env.get(f"{prefix}_HOST"):
        raise BadInput(f"neither {prefix}_URL nor {prefix}_HOST is set in the environment")
    return (
        conn_from_params(
            engine,
            host=env[f"{prefix}_HOST"],
            port=env.get(f"{prefix}_PORT"),
            user=env.get(f"{prefix}_USER", ""),
            password=env.get(f"{prefix}_PASSWORD", ""),
            database=env.get(f"{prefix}_DATABASE", ""),
        ),
        None,
    )


def _redact(url: str) -> str:
    """`url` without its user and password (for error messages): everything between the
    scheme and the last '@' (a password may hold unencoded '/' or '@'), and the values of
    password-like query parameters."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    rest = re.sub(r"(?i)([?&](?:password|pass|pwd|sslpassword)=)[^&#]*", r"\1***", rest)
    return scheme + sep + rest


def branch_url(
    source_url: str, *, host: str, port: int | str, user: str, password: str, database: str
) -> str:
    """The source URL pointed at the branch: same scheme and user-visible query parameters,
    the branch's credentials, host, port and database. Parameters that carry credentials
    or hosts are dropped; TLS that the source required (sslmode=require/verify-*,
    ssl-mode=REQUIRED/VERIFY_*, ssl=true) is turned off, since the branch server, inside
    the environment's namespace, serves no TLS."""
    parts = urlsplit(source_url.strip())
    query: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        lower = key.lower()
        if lower in SENSITIVE_PARAMS:
            continue
        if lower in ("sslmode", "ssl-mode", "ssl_mode") and value.lower() in _TLS_REQUIRED:
            value = "DISABLED" if value.isupper() else "disable"
        elif lower in ("ssl", "tls", "usessl", "requiressl") and value.lower() in (
            "true",
            "1",
            "required",
            "yes",
        ):
            value = "false"
        elif lower in ("sslrootcert", "sslcrl", "ssl-ca", "ssl_ca", "sslca"):
            continue  # files of the source's TLS; meaningless without TLS
        query.append((key, value))
    userinfo = quote(user, safe="")
    if password:
        userinfo += ":" + quote(password, safe="")
    netloc_host = f"[{host}]" if ":" in host else host
    netloc = f"{userinfo}@{netloc_host}:{port}" if userinfo else f"{netloc_host}:{port}"
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            "/" + quote(database, safe=""),
            urlencode(query, quote_via=quote),
            "",
        )
    )


# ---------------------------------------------------------------------------- planning
def parse_table(arg: str) -> tuple[str, str | None]:
    """--table NAME[:WHERE] (the first colon separates; a WHERE may contain colons)."""
    name, sep, where = arg.partition(":")
    name = name.strip()
    if not name:
        raise BadInput(f"--table {arg!r}: expected NAME or NAME:WHERE")
    where = where.strip()
    if sep and not where:
        raise BadInput(f"--table {arg!r}: empty filter after the colon")
    return name, (where or None)


# MySQL built-ins that do more than compute a value: locks, waits, files, sequences.
_MYSQL_SIDE_EFFECTS = frozenset(
    {
        "benchmark",
        "get_lock",
        "is_free_lock",
        "is_used_lock",
        "last_insert_id",
        "lastval",
        "load_file",
        "master_gtid_wait",
        "master_pos_wait",
        "nextval",
        "release_all_locks",
        "release_lock",
        "setval",
        "sleep",
        "source_pos_wait",
        "wait_for_executed_gtid_set",
    }
)


def filter_error(table: str, why: str) -> BadInput:
    return BadInput(
        f"copy.tables filter of {table}: {why} (a filter is one WHERE clause, e.g. region = 'eu')"
    )


def check_filter(engine: str, table: str, where: str) -> str:
    """A filter is exactly one SQL expression, as the engine's own parser reads it
    (PostgreSQL's, through pglast; MySQL's dialect of sqlglot): no second statement, no
    comment, no clause after it, nothing that writes (INSERT/UPDATE/DELETE/MERGE, INTO,
    FOR UPDATE/SHARE) and, for MySQL, no built-in with side effects. Returns the parsed
    expression printed back (deparsed): that text, never the one given, is what runs."""
    if engine == "pg":
        return _pg_filter(table, where)
    if engine == "mysql":
        return _mysql_filter(table, where)[0]
    raise BadInput(f"unsupported engine {engine!r} (supported: {', '.join(ENGINES)})")


def filter_functions(engine: str, table: str, where: str) -> set[str]:
    """Names (lower case) of the functions a MySQL filter calls that the parser does not
    know as built-ins: each may be a stored function of the source, refused then."""
    return _mysql_filter(table, where)[1] if engine == "mysql" else set()


def _pg_filter(table: str, where: str) -> str:
    from pglast import ast, parser
    from pglast.enums.parsenodes import SetOperation
    from pglast.stream import RawStream

    text = f"SELECT 1 WHERE (\n{where}\n)"
    try:
        tokens = parser.scan(text)
        statements = parser.parse_sql(text)
    except parser.ParseError as exc:
        reason = re.sub(r", at (index|location) \d+$", "", " ".join(str(exc).split()))
        raise filter_error(table, f"not one SQL expression ({reason})") from None
    if any(t.name in ("SQL_COMMENT", "C_COMMENT") for t in tokens):
        raise filter_error(table, "comments are not allowed")
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.SelectStmt):
        raise filter_error(table, "not one SQL expression")
    select = statements[0].stmt
    if select.whereClause is None or select.op != SetOperation.SETOP_NONE:
        raise filter_error(table, "not one SQL expression")
    expression = RawStream()(select.whereClause)
    if RawStream()(select) != f"SELECT 1 WHERE {expression}":
        raise filter_error(table, "not one SQL expression (a clause follows it)")
    for node in _pg_nodes(select.whereClause):
        if isinstance(node, ast.SelectStmt) and (node.intoClause or node.lockingClause):
            raise filter_error(table, "INTO and FOR UPDATE/SHARE are not allowed")
        if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
            raise filter_error(table, "INSERT, UPDATE, DELETE and MERGE are not allowed")
        if type(node).__name__.endswith("Stmt") and not isinstance(node, ast.SelectStmt):
            raise filter_error(table, f"{type(node).__name__} is not allowed")
    return expression


def _pg_nodes(node: object) -> Iterator[object]:
    """Every node of a pglast tree."""
    from pglast import ast

    if isinstance(node, (list, tuple)):
        for item in node:
            yield from _pg_nodes(item)
    elif isinstance(node, ast.Node):
        yield node
        for attribute in node:
            yield from _pg_nodes(getattr(node, attribute, None))


def _mysql_filter(table: str, where: str) -> tuple[str, set[str]]:
    import sqlglot
    from sqlglot import exp
    from sqlglot.dialects.mysql import MySQL
    from sqlglot.errors import SqlglotError

    text = f"SELECT 1 FROM t WHERE (\n{where}\n)"
    try:
        tokens = MySQL().tokenize(text)
        statements = sqlglot.parse(text, read="mysql")
    except SqlglotError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise filter_error(table, f"not one SQL expression ({reason})") from None
    if any(t.comments for t in tokens):
        raise filter_error(table, "comments are not allowed")
    if len(statements) != 1 or not isinstance(statements[0], exp.Select):
        raise filter_error(table, "not one SQL expression")
    select = statements[0]
    clause = select.args.get("where")
    if not isinstance(clause, exp.Where):
        raise filter_error(table, "not one SQL expression")
    node = clause.this.this if isinstance(clause.this, exp.Paren) else clause.this
    expression = node.sql(dialect="mysql", comments=False)
    if select.sql(dialect="mysql", comments=False) != f"SELECT 1 FROM t WHERE ({expression})":
        raise filter_error(table, "not one SQL expression (a clause follows it)")
    functions: set[str] = set()
    for item in node.walk():
        if isinstance(item, (exp.DML, exp.DDL, exp.Command, exp.Into, exp.Lock, exp.Set)):
            raise filter_error(table, f"{type(item).__name__.upper()} is not allowed")
        if isinstance(item, exp.Select) and (item.args.get("into") or item.args.get("locks")):
            raise filter_error(table, "INTO and FOR UPDATE/SHARE are not allowed")
        if isinstance(item, exp.Dot) and isinstance(item.expression, exp.Func):
            raise filter_error(table, "calls to stored functions are not allowed")
        if isinstance(item, exp.Func):
            name = (item.name if isinstance(item, exp.Anonymous) else item.sql_name()).lower()
            if name in _MYSQL_SIDE_EFFECTS:
                raise filter_error(table, f"{name.upper()}() is not allowed")
            if isinstance(item, exp.Anonymous):
                functions.add(name)
    return expression, functions


# What a name may not be: it reaches client tools' argv and SQL text.
_NAME_LIMITS = {"pg": 63, "mysql": 64}


def check_name(what: str, name: str, engine: str) -> None:
    """A database, table or user name: not empty, no control characters, not starting
    with '-' (never read as an option), within the engine's length (per part of a
    PostgreSQL schema.table). BadInput naming it otherwise."""
    limit = _NAME_LIMITS.get(engine, 64)
    parts = name.split(".", 1) if what == "table" and engine == "pg" else [name]
    why = ""
    if not name or not all(parts):
        why = "is empty"
    elif name.startswith("-"):
        why = "starts with '-'"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        why = "has a control character"
    elif any(len(part.encode()) > limit for part in parts):
        why = f"is longer than {limit} bytes"
    if why:
        raise BadInput(f"{what} name {name!r} {why}: use the name of an existing {what}")


def table_arg(name: str, where: str | None) -> str:
    return f"{name}:{where}" if where else name


@dataclass(frozen=True)
class Plan:
    """One copy, checked: engine, mode, tables and both ends."""

    engine: Engine
    mode: Mode
    source: Conn
    branch: Conn
    tables: dict[str, str | None] = field(default_factory=dict)
    wait: float = 0


def plan(
    engine: str,
    mode: str,
    source: Conn,
    branch: Conn,
    tables: Mapping[str, str | None] | None = None,
    wait: float = 0,
) -> Plan:
    """Check everything that needs no server; the branch database defaults to the source's
    name."""
    if engine not in ENGINES:
        raise BadInput(f"unsupported engine {engine!r} (supported: {', '.join(ENGINES)})")
    if mode not in MODES:
        raise BadInput(f"unsupported copy mode {mode!r} (supported: {', '.join(MODES)})")
    tables = {
        name: (check_filter(engine, name, where) if where else None)
        for name, where in (tables or {}).items()
    }
    for name in tables:
        check_name("table", name, engine)
    if mode == "all" and tables:
        raise BadInput(
            "copy.tables is ignored with copy.mode all: every row of every table is copied "
            "(use mode schema or empty to copy some tables' rows)"
        )
    for end in (source, branch):
        if end.engine != engine:
            raise BadInput(f"a {end.engine} connection given to --engine {engine}")
    if not source.database:
        raise BadInput("the source connection names no database")
    if not branch.database:
        branch = replace(branch, database=source.database)
    for end in (source, branch):
        check_name("database", end.database, engine)
        if end.user:
            check_name("user", end.user, engine)
    if (source.host, source.port, source.database) == (branch.host, branch.port, branch.database):
        raise BadInput(f"source and branch are the same database ({source.where()})")
    if wait < 0:
        raise BadInput("--wait must be 0 or more seconds")
    return Plan(engine, mode, source, branch, tables, wait)  # type: ignore[arg-type]


def job_args(
    engine: str, mode: str, tables: Mapping[str, str | None], wait: int, url_secret: str | None
) -> list[str]:
    """The in-cluster copy Job's argv after `preview-env`: the source and the branch come
    from PREVIEW_ENV_SOURCE_* and PREVIEW_ENV_BRANCH_* variables."""
    argv = ["db", "copy", "--engine", engine, "--from-env", "PREVIEW_ENV_SOURCE"]
    argv += ["--to-env", "PREVIEW_ENV_BRANCH", "--mode", mode]
    for name, where in tables.items():
        argv += ["--table", table_arg(name, where)]
    argv += ["--wait", str(wait)]
    if url_secret:
        argv += ["--write-url-secret", url_secret]
    return argv


def summary(plan: Plan, tables: int, rows: int) -> str:
    return (
        f"copied {tables} tables ({rows} rows) from {plan.engine} {plan.source.where()} "
        f"into {plan.branch.where()} (mode {plan.mode})"
    )


def unknown_table_message(name: str, known: Iterable[str]) -> str:
    return (
        f'copy.tables names "{name}", which is not a table of the source database '
        f"(tables: {', '.join(sorted(known)) or 'none'})"
    )


def resolve_tables(requested: Mapping[str, str | None], known: Iterable[str]) -> dict[str, str]:
    """Requested table names -> source tables (qualified `schema.table` for PostgreSQL; a
    bare name means the table of that name in `public`, or the only one of that name).
    BadInput naming the first unknown table."""
    known = list(known)
    display = sorted({short_name(k) for k in known})
    resolved: dict[str, str] = {}
    for name in requested:
        if name in known:
            resolved[name] = name
            continue
        candidates = [k for k in known if k.split(".", 1)[-1] == name]
        public = [k for k in candidates if k == f"public.{name}"]
        if public or len(candidates) == 1:
            resolved[name] = (public or candidates)[0]
        else:
            raise BadInput(unknown_table_message(name, display))
    return resolved


def short_name(qualified: str) -> str:
    return qualified.removeprefix("public.")


# ------------------------------------------------------------------------- SQL text
def quote_ident(engine: Engine, name: str) -> str:
    if engine == "pg":
        return ".".join('"' + part.replace('"', '""') + '"' for part in name.split(".", 1))
    return "`" + name.replace("`", "``") + "`"


def sql_literal(value: str, engine: Engine = "pg") -> str:
    """A string literal: PostgreSQL (standard_conforming_strings) takes backslashes as
    they are; MySQL's default mode escapes them."""
    if engine == "mysql":
        value = value.replace("\\", "\\\\")
    return "'" + value.replace("'", "''") + "'"


# Every PostgreSQL session on the source: read-only transactions, and strings parsed the
# way pglast (libpg_query) parses filters.
SOURCE_PG_OPTIONS = "-c default_transaction_read_only=on -c standard_conforming_strings=on"


def ignored_source_options(conn: Conn) -> list[str]:
    """The source URL's parameters that preview-env does not apply to its sessions."""
    return [k for k, _ in conn.query if k == "options"] if conn.engine == "pg" else []
