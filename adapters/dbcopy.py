"""The database copy's runner: runs a checked `Plan` (preview_stack.copy_plan) with the
engine's own client tools: pg_dump/pg_restore/psql for PostgreSQL, mariadb-dump/mariadb
(or mysqldump/mysql) for MySQL and MariaDB. The same code runs on a laptop and in the
branch's copy Job. Passwords reach the clients only through PGPASSWORD / MYSQL_PWD in
their environment, never their argv.

PostgreSQL rows are read in process (`PgReader`): one read-only transaction, one statement
per protocol message, session settings that a URL cannot override.

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from preview_stack.copy_plan import (
    LIBPQ_OPTIONS,
    SOURCE_PG_OPTIONS,
    Conn,
    Plan,
    filter_error,
    filter_functions,
    ignored_source_options,
    quote_ident,
    resolve_tables,
    short_name,
    sql_literal,
    summary,
)
from preview_stack.errors import PreviewError

TERMINATION_LOG_ENV = "PREVIEW_ENV_TERMINATION_LOG"


class CopyFailed(PreviewError):
    """A step of the copy failed; the message names the step and the engine's error."""


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
                    f"DROP DATABASE {quote_ident('mysql', branch.database)}",
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
            raise filter_error(
                table, f"{', '.join(found)} is a stored function of the source (not allowed)"
            )


def _ensure_database(maintenance: _Client, branch: _Client, progress: Progress) -> bool:
    """Create the branch database when missing (True); refuse one that has tables."""
    name = branch.database
    engine = branch.conn.engine
    if engine == "pg":
        exists = maintenance.query(
            f"SELECT 1 FROM pg_database WHERE datname = {sql_literal(name)}",
            "look for the branch database",
        )
    else:
        exists = maintenance.query(
            "SELECT 1 FROM information_schema.schemata "
            f"WHERE schema_name = {sql_literal(name, 'mysql')}",
            "look for the branch database",
        )
    if not exists:
        progress(f"creating database {name} on the branch server")
        create = f"CREATE DATABASE {quote_ident(engine, name)}"
        if engine == "mysql":
            create += " CHARACTER SET utf8mb4"
        maintenance.query(create, "create the branch database")
        return True
    present = source_tables(branch)
    if present:
        shown = ", ".join(short_name(t) for t in present[:5]) + (
            ", ..." if len(present) > 5 else ""
        )
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
    total = " + ".join(f"(SELECT count(*) FROM {quote_ident(engine, t)})" for t in tables)
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
            argv += ["-t", quote_ident("pg", table)]
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
                f"warning: dropping foreign key {constraint} of {short_name(table)}: it references "
                f"{short_name(referenced)}, which is not copied"
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
            f"{sql_literal(quote_ident('pg', table))}::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            f"list the columns of {short_name(table)}",
        )
        cols = ", ".join(quote_ident("pg", c[0]) for c in columns)
        select = f"SELECT {cols} FROM {quote_ident('pg', table)}"
        if where:
            select += f" WHERE {where}"
        progress(f"copying rows of {short_name(table)}" + (f" where {where}" if where else ""))
        sink.write(f"COPY {quote_ident('pg', table)} ({cols}) FROM stdin;\n".encode())
        reader.copy_out(f"COPY ({select}) TO STDOUT", sink, f"read the rows of {short_name(table)}")
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
        name = sql_literal(quote_ident("pg", sequence))
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
                        f"ALTER TABLE {quote_ident('mysql', table)} DROP FOREIGN KEY "
                        f"{quote_ident('mysql', constraint)};\n".encode()
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
