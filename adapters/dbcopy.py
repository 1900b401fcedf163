"""`preview-env db copy`: copy a database (or part of it) into a branch database server.

The same code runs on a laptop and in the branch's copy Job, with the engine's own client
tools: pg_dump/pg_restore/psql for PostgreSQL, mariadb-dump/mariadb (or mysqldump/mysql)
for MySQL and MariaDB.

Planning (URL parsing, table filters, the rewritten branch URL, the Job's argv) is pure;
`run_copy` is the thin edge that starts the client processes. Passwords reach the clients
only through PGPASSWORD / MYSQL_PWD in their environment, never their argv.

Modes:
- `empty`: an empty database; with `tables`, only those tables are created (with their
  sequences, indexes and constraints) and filled with their filtered rows. A foreign key
  from a listed table to a table that is not listed is dropped, with a warning (the
  referenced table does not exist in the branch).
- `schema`: every table's and view's schema, no rows; with `tables`, those tables' rows
  (all, or those matching their filter).
- `all`: schema and every row; `tables` are refused (bad input).

A table filter is parsed by the engine's own grammar as exactly one expression
(`check_filter`: pglast for PostgreSQL, sqlglot for MySQL) and the parsed expression,
printed back, is what runs. PostgreSQL rows are read in process (`PgReader`): one
read-only transaction, one statement per protocol message, session settings that a URL
cannot override. Names never reach an argv where they could be read as options.

Sequence and AUTO_INCREMENT positions are the source's whenever a schema is copied, so new
rows in the branch never collide with ids the source already handed out. Rows are loaded
with foreign-key checks off: filtered rows may reference rows that were not copied.

The branch database must be empty (it is created when missing): a copy never overwrites
or merges. PostgreSQL loads in one transaction (a failed copy leaves nothing behind);
MySQL cannot roll DDL back, so a failed copy drops the database it created.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Literal, get_args
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from preview_stack.errors import BadInput, PreviewError

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
TERMINATION_LOG_ENV = "PREVIEW_ENV_TERMINATION_LOG"

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


class CopyFailed(PreviewError):
    """A step of the copy failed; the message names the step and the engine's error."""


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


def _filter_error(table: str, why: str) -> BadInput:
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
        raise _filter_error(table, f"not one SQL expression ({reason})") from None
    if any(t.name in ("SQL_COMMENT", "C_COMMENT") for t in tokens):
        raise _filter_error(table, "comments are not allowed")
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.SelectStmt):
        raise _filter_error(table, "not one SQL expression")
    select = statements[0].stmt
    if select.whereClause is None or select.op != SetOperation.SETOP_NONE:
        raise _filter_error(table, "not one SQL expression")
    expression = RawStream()(select.whereClause)
    if RawStream()(select) != f"SELECT 1 WHERE {expression}":
        raise _filter_error(table, "not one SQL expression (a clause follows it)")
    for node in _pg_nodes(select.whereClause):
        if isinstance(node, ast.SelectStmt) and (node.intoClause or node.lockingClause):
            raise _filter_error(table, "INTO and FOR UPDATE/SHARE are not allowed")
        if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
            raise _filter_error(table, "INSERT, UPDATE, DELETE and MERGE are not allowed")
        if type(node).__name__.endswith("Stmt") and not isinstance(node, ast.SelectStmt):
            raise _filter_error(table, f"{type(node).__name__} is not allowed")
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
        raise _filter_error(table, f"not one SQL expression ({reason})") from None
    if any(t.comments for t in tokens):
        raise _filter_error(table, "comments are not allowed")
    if len(statements) != 1 or not isinstance(statements[0], exp.Select):
        raise _filter_error(table, "not one SQL expression")
    select = statements[0]
    clause = select.args.get("where")
    if not isinstance(clause, exp.Where):
        raise _filter_error(table, "not one SQL expression")
    node = clause.this.this if isinstance(clause.this, exp.Paren) else clause.this
    expression = node.sql(dialect="mysql", comments=False)
    if select.sql(dialect="mysql", comments=False) != f"SELECT 1 FROM t WHERE ({expression})":
        raise _filter_error(table, "not one SQL expression (a clause follows it)")
    functions: set[str] = set()
    for item in node.walk():
        if isinstance(item, (exp.DML, exp.DDL, exp.Command, exp.Into, exp.Lock, exp.Set)):
            raise _filter_error(table, f"{type(item).__name__.upper()} is not allowed")
        if isinstance(item, exp.Select) and (item.args.get("into") or item.args.get("locks")):
            raise _filter_error(table, "INTO and FOR UPDATE/SHARE are not allowed")
        if isinstance(item, exp.Dot) and isinstance(item.expression, exp.Func):
            raise _filter_error(table, "calls to stored functions are not allowed")
        if isinstance(item, exp.Func):
            name = (item.name if isinstance(item, exp.Anonymous) else item.sql_name()).lower()
            if name in _MYSQL_SIDE_EFFECTS:
                raise _filter_error(table, f"{name.upper()}() is not allowed")
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
    display = sorted({_short(k) for k in known})
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


def _short(qualified: str) -> str:
    return qualified.removeprefix("public.")


# ------------------------------------------------------------------------ the edge
Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def find_tool(*names: str) -> str:
    """A client binary: PostgreSQL's newest /usr/lib/postgresql/N/bin first (Debian's
    /usr/bin ones are wrapper scripts), then PATH."""
    for name in names:
        versions = sorted(
            Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
            reverse=True,
        )
        if versions:
            return str(versions[0])
        found = shutil.which(name)
        if found:
            return found
    raise CopyFailed(f"{' or '.join(names)} not found (install the engine's client tools)")


def _engine_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if re.search(r"\b(ERROR|FATAL|error|fatal)\b", line):
            return line
    return lines[-1] if lines else "no error output"


class _Client:
    """How to run one engine's tools against one connection."""

    def __init__(self, conn: Conn, database: str | None = None, read_only: bool = False) -> None:
        self.conn = conn
        self.database = conn.database if database is None else database
        self.read_only = read_only

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("PGPASSWORD", "MYSQL_PWD", "PGSERVICE", "PGPASSFILE", "PGOPTIONS"):
            env.pop(var, None)
        if self.conn.engine == "pg":
            env["PGPASSWORD"] = self.conn.password
            env.setdefault("PGCONNECT_TIMEOUT", "10")
        else:
            env["MYSQL_PWD"] = self.conn.password
        return env

    # PostgreSQL: a libpq keyword/value string (the password only when asked: for the
    # in-process reader, never for a command line). The source's sessions are read-only
    # and parse strings as the filter parser does: its `options` are preview-env's own,
    # the URL's are dropped (see `ignored_source_options`).
    def conninfo(self, with_password: bool = False) -> str:
        def q(value: str) -> str:
            return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

        c = self.conn
        words = [f"host={q(c.host)}", f"port={c.port}", f"dbname={q(self.database)}"]
        if c.user:
            words.append(f"user={q(c.user)}")
        if with_password:
            words.append(f"password={q(c.password)}")
        if self.read_only:
            words += [f"{k}={q(v)}" for k, v in c.query if k in LIBPQ_OPTIONS - {"options"}]
            words.append(f"options={q(SOURCE_PG_OPTIONS)}")
        else:
            words += [f"{k}={q(v)}" for k, v in c.query if k in LIBPQ_OPTIONS]
        return " ".join(words)

    # MySQL: options (never the password); names only in --opt=VALUE form.
    def my_options(self) -> list[str]:
        c = self.conn
        opts = ["--no-defaults", f"--host={c.host}", f"--port={c.port}", "--protocol=TCP"]
        if c.user:
            opts.append(f"--user={c.user}")
        return [*opts, "--default-character-set=utf8mb4"]

    def query(self, sql: str, step: str) -> list[list[str]]:
        """Rows of a query, tab-separated text."""
        if self.conn.engine == "pg":
            argv = [find_tool("psql"), "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1"]
            argv += ["-d", self.conninfo(), "-c", sql]
        else:
            argv = [find_tool("mariadb", "mysql"), *self.my_options(), "-N", "-B", "-e", sql]
            if self.database:
                argv.append(f"--database={self.database}")
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env(), check=False)
        if done.returncode != 0:
            raise CopyFailed(f"{step}: {_engine_error(done.stderr)}")
        return [line.split("\t") for line in done.stdout.splitlines() if line]


# Every PostgreSQL session on the source: read-only transactions, and strings parsed the
# way pglast (libpg_query) parses filters.
SOURCE_PG_OPTIONS = "-c default_transaction_read_only=on -c standard_conforming_strings=on"


def ignored_source_options(conn: Conn) -> list[str]:
    """The source URL's parameters that preview-env does not apply to its sessions."""
    return [k for k, _ in conn.query if k == "options"] if conn.engine == "pg" else []


class PgReader:
    """Reads rows from a PostgreSQL source in process (libpq through psycopg's `pq`): one
    connection, one REPEATABLE READ, READ ONLY transaction, and every statement sent alone
    with the extended query protocol, which refuses a second statement in one message. So
    whatever text reaches it, nothing can end the transaction or write."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def __enter__(self) -> PgReader:
        try:
            from psycopg import pq
        except ImportError as exc:
            raise CopyFailed(f"read the source: libpq is not usable ({exc})") from None
        self._pq = pq
        info = _Client(self.conn, read_only=True).conninfo(with_password=True)
        if "connect_timeout=" not in info:
            info += " connect_timeout=10"
        self.pg = pq.PGconn.connect(info.encode())
        if self.pg.status != pq.ConnStatus.OK:
            message = _engine_error(self.pg.get_error_message())
            self.pg.finish()
            raise CopyFailed(f"connect to the source: {message}")
        self._command("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", "begin reading")
        return self

    def __exit__(self, *exc: object) -> None:
        self.pg.finish()

    def _error(self, result: object) -> str:
        message = getattr(result, "error_message", b"") or self.pg.error_message
        return _engine_error(bytes(message).decode(errors="replace"))

    def _command(self, sql: str, step: str) -> None:
        result = self.pg.exec_params(sql.encode(), None)
        if result.status != self._pq.ExecStatus.COMMAND_OK:
            raise CopyFailed(f"{step}: {self._error(result)}")

    def copy_out(self, sql: str, sink: IO[bytes], step: str) -> None:
        """Run one `COPY (...) TO STDOUT` and write its data into `sink`."""
        pq = self._pq
        result = self.pg.exec_params(sql.encode(), None)
        if result.status != pq.ExecStatus.COPY_OUT:
            raise CopyFailed(f"{step}: {self._error(result)}")
        from psycopg import OperationalError

        while True:
            try:
                size, data = self.pg.get_copy_data(0)
            except OperationalError as exc:
                raise CopyFailed(f"{step}: {_engine_error(str(exc))}") from None
            if size < 0:
                break
            sink.write(bytes(data))
        failed = ""
        while (final := self.pg.get_result()) is not None:
            if final.status != pq.ExecStatus.COMMAND_OK:
                failed = failed or self._error(final)
        if failed:
            raise CopyFailed(f"{step}: {failed}")


def wait_for(client: _Client, seconds: float, what: str, progress: Progress) -> None:
    """Until the server accepts a connection (one try when `seconds` is 0)."""
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    last_report = -1.0
    while True:
        try:
            client.query("SELECT 1", f"connect to {what}")
            return
        except CopyFailed:
            now = time.monotonic()
            if now >= deadline:
                raise
            if now - last_report >= 5:
                progress(
                    f"waiting for {what} {client.conn.host}:{client.conn.port} "
                    f"({int(now - started)}s of {int(seconds)}s)"
                )
                last_report = now
            time.sleep(1)


def _quote_ident(engine: Engine, name: str) -> str:
    if engine == "pg":
        return ".".join('"' + part.replace('"', '""') + '"' for part in name.split(".", 1))
    return "`" + name.replace("`", "``") + "`"


def _literal(value: str, engine: Engine = "pg") -> str:
    """A string literal: PostgreSQL (standard_conforming_strings) takes backslashes as
    they are; MySQL's default mode escapes them."""
    if engine == "mysql":
        value = value.replace("\\", "\\\\")
    return "'" + value.replace("'", "''") + "'"


def source_tables(client: _Client) -> list[str]:
    """Base tables of the source database (PostgreSQL: schema-qualified, system schemas
    left out)."""
    if client.conn.engine == "pg":
        rows = client.query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
            "ORDER BY 1",
            "list the source's tables",
        )
    else:
        rows = client.query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1",
            "list the source's tables",
        )
    return [r[0] for r in rows]


def _dangling_foreign_keys(client: _Client, tables: list[str]) -> list[tuple[str, str, str]]:
    """(table, constraint, referenced table) for foreign keys from `tables` to tables that
    are not among them."""
    if client.conn.engine == "pg":
        rows = client.query(
            "SELECT n.nspname || '.' || t.relname, c.conname, rn.nspname || '.' || r.relname "
            "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "JOIN pg_class r ON r.oid = c.confrelid "
            "JOIN pg_namespace rn ON rn.oid = r.relnamespace "
            "WHERE c.contype = 'f' ORDER BY 1, 2",
            "list the source's foreign keys",
        )
    else:
        rows = client.query(
            "SELECT table_name, constraint_name, referenced_table_name "
            "FROM information_schema.referential_constraints "
            "WHERE constraint_schema = DATABASE() ORDER BY 1, 2",
            "list the source's foreign keys",
        )
    chosen = set(tables)
    return [(t, c, r) for t, c, r in rows if t in chosen and r not in chosen]


@dataclass
class _Procs:
    """Child processes of one pipeline, killed if the copy is abandoned."""

    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, argv: list[str], env: dict[str, str], **kw: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, env=env, **kw)  # type: ignore[call-overload]
        self.running.append(proc)
        return proc

    def kill(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextmanager
def _loading(argv: list[str], env: dict[str, str], step: str) -> Iterator[IO[bytes]]:
    """A loader reading SQL on its stdin: yields that stdin. On leaving, closes it and
    fails with the loader's own error if it did not succeed; killed if the copy is abandoned.
    A loader that quit early shows as a broken pipe while writing: its error says why."""
    procs = _Procs()
    with tempfile.TemporaryFile() as err:
        loader = procs.start(
            argv, env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err
        )
        sink = loader.stdin
        assert sink is not None
        try:
            yield sink
            sink.close()
        except BrokenPipeError:
            pass
        except BaseException:
            procs.kill()
            raise
        if loader.wait() != 0:
            err.seek(0)
            message = _engine_error(err.read().decode(errors="replace"))
            raise CopyFailed(f"{step}: {message}")


def _stream(
    source: _Client, argv: list[str], sink: IO[bytes], step: str, edit: Callable[[bytes], bytes]
) -> None:
    """Run a source-side tool and copy its stdout into `sink` (through `edit`)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=source.env())
        out = proc.stdout
        assert out is not None
        read: Callable[[], bytes] = (lambda: out.read(1 << 16)) if edit is _same else out.readline
        try:
            for chunk in iter(read, b""):
                sink.write(edit(chunk))
        except BrokenPipeError:
            proc.kill()
            proc.wait()
            raise
        finally:
            out.close()
        if proc.wait() != 0:
            err.seek(0)
            raise CopyFailed(f"{step}: {_engine_error(err.read().decode(errors='replace'))}")


def _same(chunk: bytes) -> bytes:
    return chunk


_DEFINER = re.compile(rb"DEFINER=`(?:[^`]|``)*`@`(?:[^`]|``)*`\s*")


def _strip_definer(chunk: bytes) -> bytes:
    """Views and routines run as the branch's user: the source's definer does not exist."""
    if b"DEFINER=" not in chunk or chunk.startswith(b"INSERT INTO"):
        return chunk
    return _DEFINER.sub(b"", chunk)


@dataclass(frozen=True)
class Result:
    tables: int
    rows: int
    summary: str


def run_copy(p: Plan, progress: Progress = _stderr) -> Result:
    """Check the source, prepare the branch database, copy. Raises BadInput (nothing was
    written) or CopyFailed."""
    source = _Client(p.source, read_only=True)
    maintenance = _Client(p.branch, "postgres" if p.engine == "pg" else "")
    branch = _Client(p.branch)
    progress(f"source: {p.engine} {p.source.where()}; branch: {p.branch.where()}; mode {p.mode}")
    for option in ignored_source_options(p.source):
        progress(
            f"warning: ignoring the source URL's {option} parameter: source sessions are "
            f"read-only with preview-env's own settings"
        )
    known = source_tables(source)
    resolved = resolve_tables(p.tables, known)
    listed = {resolved[name]: where for name, where in p.tables.items()}
    progress(f"source has {len(known)} tables")
    if p.engine == "mysql":
        _refuse_stored_functions(source, p.tables)
    wait_for(maintenance, p.wait, "the branch server", progress)
    created = _ensure_database(maintenance, branch, progress)
    try:
        if p.engine == "pg":
            _copy_pg(p, source, branch, listed, progress)
        else:
            _copy_mysql(p, source, branch, listed, progress)
    except BaseException:
        if created and p.engine == "mysql":
            with contextlib.suppress(CopyFailed):
                maintenance.query(
                    f"DROP DATABASE {_quote_ident('mysql', branch.database)}",
                    "drop the half-copied branch database",
                )
        raise
    tables, rows = _count(branch)
    line = summary(p, tables, rows)
    return Result(tables, rows, line)


def _refuse_stored_functions(source: _Client, tables: Mapping[str, str | None]) -> None:
    """A MySQL filter may not call the source's stored functions: they can write, and
    mariadb-dump's transaction is not read-only. BadInput before anything is created."""
    called = {
        name: filter_functions("mysql", name, where) for name, where in tables.items() if where
    }
    if not any(called.values()):
        return
    stored = {
        row[0].lower()
        for row in source.query(
            "SELECT routine_name FROM information_schema.routines "
            "WHERE routine_schema = DATABASE() AND routine_type = 'FUNCTION'",
            "list the source's stored functions",
        )
    }
    for table, names in called.items():
        found = sorted(names & stored)
        if found:
            raise _filter_error(
                table, f"{', '.join(found)} is a stored function of the source (not allowed)"
            )


def _ensure_database(maintenance: _Client, branch: _Client, progress: Progress) -> bool:
    """Create the branch database when missing (True); refuse one that has tables."""
    name = branch.database
    engine = branch.conn.engine
    if engine == "pg":
        exists = maintenance.query(
            f"SELECT 1 FROM pg_database WHERE datname = {_literal(name)}",
            "look for the branch database",
        )
    else:
        exists = maintenance.query(
            "SELECT 1 FROM information_schema.schemata "
            f"WHERE schema_name = {_literal(name, 'mysql')}",
            "look for the branch database",
        )
    if not exists:
        progress(f"creating database {name} on the branch server")
        create = f"CREATE DATABASE {_quote_ident(engine, name)}"
        if engine == "mysql":
            create += " CHARACTER SET utf8mb4"
        maintenance.query(create, "create the branch database")
        return True
    present = source_tables(branch)
    if present:
        shown = ", ".join(_short(t) for t in present[:5]) + (", ..." if len(present) > 5 else "")
        raise CopyFailed(
            f"prepare the branch database: {name} on {branch.conn.host}:{branch.conn.port} "
            f"already has tables ({shown}); a copy only goes into an empty database"
        )
    return False


def _count(branch: _Client) -> tuple[int, int]:
    tables = source_tables(branch)
    if not tables:
        return 0, 0
    engine = branch.conn.engine
    total = " + ".join(f"(SELECT count(*) FROM {_quote_ident(engine, t)})" for t in tables)
    rows = branch.query(f"SELECT {total}", "count the branch's rows")
    return len(tables), int(rows[0][0] or 0)


# ---------------------------------------------------------------------- PostgreSQL
def _copy_pg(
    p: Plan, source: _Client, branch: _Client, listed: dict[str, str | None], progress: Progress
) -> None:
    """One psql session loads everything in one transaction: schema, then each listed
    table's rows with triggers (and so foreign-key checks) off, then sequence positions."""
    pg_dump = find_tool("pg_dump")
    base = [pg_dump, "--no-owner", "--no-privileges", "-d", source.conninfo()]
    psql = [find_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
    loader = [*psql, "-d", branch.conninfo(), "-o", os.devnull]
    with _loading(loader, branch.env(), "load into the branch (psql)") as sink:
        if p.mode == "all":
            progress("copying schema and rows (pg_dump)")
            _stream(source, base, sink, "dump the source (pg_dump)", _same)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                _pg_schema(p, source, base, listed, Path(tmp), sink, progress)
            _pg_rows(source, listed, sink, progress)
            _pg_sequences(p, source, listed, sink)


def _pg_schema(
    p: Plan,
    source: _Client,
    base: list[str],
    listed: dict[str, str | None],
    tmp: Path,
    sink: IO[bytes],
    progress: Progress,
) -> None:
    archive = tmp / "schema.dump"
    argv = [*base, "--schema-only", "--format=custom", "-f", str(archive)]
    if p.mode == "empty":
        if not listed:
            progress("mode empty without tables: nothing to copy")
            return
        argv.append("--strict-names")
        for table in listed:
            argv += ["-t", _quote_ident("pg", table)]
    progress("copying the schema (pg_dump --schema-only)")
    done = subprocess.run(argv, capture_output=True, text=True, env=source.env(), check=False)
    if done.returncode != 0:
        raise CopyFailed(f"dump the source's schema (pg_dump): {_engine_error(done.stderr)}")
    pg_restore = find_tool("pg_restore")
    toc = subprocess.run(
        [pg_restore, "-l", str(archive)], capture_output=True, text=True, check=False
    )
    if toc.returncode != 0:
        raise CopyFailed(f"read the schema dump (pg_restore -l): {_engine_error(toc.stderr)}")
    lines = toc.stdout.splitlines()
    if p.mode == "empty":
        for table, constraint, referenced in _dangling_foreign_keys(source, list(listed)):
            schema, name = table.split(".", 1)
            entry = f" FK CONSTRAINT {schema} {name} {constraint} "
            lines = [";" + line if entry in line + " " else line for line in lines]
            progress(
                f"warning: dropping foreign key {constraint} of {_short(table)}: it references "
                f"{_short(referenced)}, which is not copied"
            )
    listing = tmp / "schema.list"
    listing.write_text("\n".join(lines) + "\n")
    restore = [pg_restore, "--no-owner", "--no-privileges", "-L", str(listing), "-f", "-"]
    _stream(source, [*restore, str(archive)], sink, "read the schema dump (pg_restore)", _same)


def _pg_rows(
    source: _Client, listed: dict[str, str | None], sink: IO[bytes], progress: Progress
) -> None:
    if not listed:
        return
    sink.write(b"\nSET session_replication_role = replica;\n")
    with PgReader(source.conn) as reader:
        _pg_read_rows(source, reader, listed, sink, progress)
    sink.write(b"SET session_replication_role = DEFAULT;\n")


def _pg_read_rows(
    source: _Client,
    reader: PgReader,
    listed: dict[str, str | None],
    sink: IO[bytes],
    progress: Progress,
) -> None:
    for table, where in listed.items():
        columns = source.query(
            "SELECT attname FROM pg_attribute WHERE attrelid = "
            f"{_literal(_quote_ident('pg', table))}::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            f"list the columns of {_short(table)}",
        )
        cols = ", ".join(_quote_ident("pg", c[0]) for c in columns)
        select = f"SELECT {cols} FROM {_quote_ident('pg', table)}"
        if where:
            select += f" WHERE {where}"
        progress(f"copying rows of {_short(table)}" + (f" where {where}" if where else ""))
        sink.write(f"COPY {_quote_ident('pg', table)} ({cols}) FROM stdin;\n".encode())
        reader.copy_out(f"COPY ({select}) TO STDOUT", sink, f"read the rows of {_short(table)}")
        sink.write(b"\\.\n")


def _pg_sequences(p: Plan, source: _Client, listed: dict[str, str | None], sink: IO[bytes]) -> None:
    """The source's sequence positions (pg_dump --schema-only leaves them out): all of
    them with `schema`; with `empty`, those owned by the listed tables."""
    rows = source.query(
        "SELECT s.schemaname || '.' || s.sequencename, s.last_value, "
        "tn.nspname || '.' || t.relname FROM pg_sequences s "
        "JOIN pg_namespace sn ON sn.nspname = s.schemaname "
        "JOIN pg_class sc ON sc.relname = s.sequencename AND sc.relnamespace = sn.oid "
        "LEFT JOIN pg_depend d ON d.objid = sc.oid AND d.classid = 'pg_class'::regclass "
        "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
        "LEFT JOIN pg_class t ON t.oid = d.refobjid "
        "LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace "
        "WHERE s.last_value IS NOT NULL ORDER BY 1",
        "read the source's sequence positions",
    )
    for sequence, value, owner in rows:
        if p.mode == "empty" and owner not in listed:
            continue
        name = _literal(_quote_ident("pg", sequence))
        sink.write(f"SELECT pg_catalog.setval({name}, {int(value)}, true);\n".encode())


# --------------------------------------------------------------------------- MySQL
def _copy_mysql(
    p: Plan, source: _Client, branch: _Client, listed: dict[str, str | None], progress: Progress
) -> None:
    """One mariadb session loads the dumps (their headers turn FOREIGN_KEY_CHECKS off);
    CREATE TABLE keeps AUTO_INCREMENT positions."""
    dump = [
        find_tool("mariadb-dump", "mysqldump"),
        *source.my_options(),
        "--single-transaction",
        "--skip-lock-tables",
        "--no-tablespaces",
        "--skip-comments",
    ]
    loader = [find_tool("mariadb", "mysql"), *branch.my_options(), f"--database={branch.database}"]
    with _loading(loader, branch.env(), "load into the branch (mariadb)") as sink:
        sink.write(b"SET FOREIGN_KEY_CHECKS = 0;\n")
        if p.mode == "all":
            progress("copying schema and rows (mariadb-dump)")
            argv = [*dump, "--routines", "--triggers", "--", source.database]
            _stream(source, argv, sink, "dump the source", _strip_definer)
        elif p.mode == "schema" or listed:
            progress("copying the schema (mariadb-dump --no-data)")
            if p.mode == "schema":
                argv = [*dump, "--no-data", "--routines", "--triggers", "--", source.database]
            else:
                argv = [*dump, "--no-data", "--triggers", "--", source.database, *listed]
            _stream(source, argv, sink, "dump the source's schema", _strip_definer)
            for table, where in listed.items():
                progress(f"copying rows of {table}" + (f" where {where}" if where else ""))
                argv = [*dump, "--no-create-info", "--skip-triggers"]
                if where:
                    argv.append(f"--where={where}")
                argv += ["--", source.database, table]
                _stream(source, argv, sink, f"read the rows of {table}", _same)
            if p.mode == "empty":
                for table, constraint, referenced in _dangling_foreign_keys(source, list(listed)):
                    progress(
                        f"warning: dropping foreign key {constraint} of {table}: it "
                        f"references {referenced}, which is not copied"
                    )
                    sink.write(
                        f"ALTER TABLE {_quote_ident('mysql', table)} DROP FOREIGN KEY "
                        f"{_quote_ident('mysql', constraint)};\n".encode()
                    )
        else:
            progress("mode empty without tables: nothing to copy")


# ------------------------------------------------------------------ the outcome line
def write_termination_log(line: str, env: Mapping[str, str] | None = None) -> None:
    """The final one-line outcome where the Job's container reports it (best effort)."""
    path = (os.environ if env is None else env).get(TERMINATION_LOG_ENV, "")
    if path:
        with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as f:
            f.write(line + "\n")
