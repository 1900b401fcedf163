"""Benchmark for `preview-env db copy --mode all` against the plain `pg_dump | psql` floor.

    .venv/bin/python bench/bench_db_copy.py [--runs 5] [--rows 100000]

Starts two throw-away PostgreSQL servers on 127.0.0.1 (testbed.localdb: a source and a
branch server), fills the source with `--rows` rows (customers, orders referencing them,
a serial, an index, a view), then alternates, each into a new database on the branch
server:
- `python -m cli db copy --engine pg --from URL --to URL --mode all` (the whole command,
  interpreter start-up and imports included);
- the floor: `createdb` + `pg_dump src | psql dst` with the same client binaries.
Prints a Markdown table of medians to paste into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters.dbcopy import find_tool  # noqa: E402
from testbed import localdb  # noqa: E402


def psql(server: localdb.Server, database: str, sql: str) -> str:
    env = {**os.environ, "PGPASSWORD": server.password}
    argv = [find_tool("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"]
    argv += ["-p", str(server.port), "-U", server.user, "-d", database, "-c", sql]
    return subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout


def fill(server: localdb.Server, rows: int) -> None:
    psql(server, "postgres", "CREATE DATABASE shop")
    customers = max(1, rows // 10)
    psql(
        server,
        "shop",
        f"""
        CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, region text);
        CREATE TABLE orders (id serial PRIMARY KEY,
          customer_id int NOT NULL REFERENCES customers (id), item text, total numeric(10, 2),
          created timestamptz NOT NULL DEFAULT now());
        CREATE INDEX orders_customer ON orders (customer_id);
        CREATE VIEW eu_customers AS SELECT * FROM customers WHERE region = 'eu';
        INSERT INTO customers (name, region)
          SELECT 'Zoë ' || i, (ARRAY['eu', 'us', 'apac'])[1 + i % 3]
          FROM generate_series(1, {customers}) i;
        INSERT INTO orders (customer_id, item, total)
          SELECT 1 + i % {customers}, 'item ' || md5(i::text), (i % 10000) / 100.0
          FROM generate_series(1, {rows - customers}) i;
        """,
    )
    psql(server, "shop", "VACUUM ANALYZE")


def timed(argv: list[str], env: dict[str, str], shell: bool = False) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        argv if not shell else " ".join(argv),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        shell=shell,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr[-800:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    source, branch = localdb.start_postgres(), localdb.start_postgres()
    try:
        fill(source, args.rows)
        size = psql(source, "shop", "SELECT pg_size_pretty(pg_database_size('shop'))").strip()
        tool, floor = [], []
        pg_dump, psql_bin = find_tool("pg_dump"), find_tool("psql")
        for run in range(args.runs):
            name = f"tool{run}"
            urls = ["--from", source.url("shop"), "--to", branch.url(name)]
            copy = [sys.executable, "-m", "cli", "db", "copy", "--engine", "pg", *urls]
            tool.append(timed([*copy, "--mode", "all"], dict(os.environ)))
            count = psql(branch, name, "SELECT count(*) FROM orders").strip()
            assert int(count) == args.rows - max(1, args.rows // 10), count
            floor_db = f"floor{run}"
            env = {**os.environ, "PGPASSWORD": source.password}
            start = time.perf_counter()
            psql(branch, "postgres", f"CREATE DATABASE {floor_db}")
            src = f"-h 127.0.0.1 -p {source.port} -U {source.user} -d shop"
            dst = f"-h 127.0.0.1 -p {branch.port} -U {branch.user} -d {floor_db}"
            # Same password on both servers (testbed.localdb), so one PGPASSWORD serves both.
            timed(
                [pg_dump, src, "|", psql_bin, "-X", "-q", "-v", "ON_ERROR_STOP=1", dst],
                env,
                shell=True,
            )
            floor.append(time.perf_counter() - start)
        t, f = statistics.median(tool), statistics.median(floor)
        print(f"source: {args.rows} rows, {size}; {args.runs} runs each, alternating")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.node()}")
        print()
        print("| measurement | median | runs |")
        print("| --- | --- | --- |")
        print(f"| `preview-env db copy --mode all` | {t:.2f} s | {fmt(tool)} |")
        print(f"| floor: `createdb` + `pg_dump \\| psql` | {f:.2f} s | {fmt(floor)} |")
        print(f"| ratio | {t / f:.2f}x | |")
        startup = statistics.median(
            timed([sys.executable, "-m", "cli", "db", "copy", "--help"], dict(os.environ))
            for _ in range(3)
        )
        print(f"| of which `preview-env` start-up (`db copy --help`) | {startup:.2f} s | |")
    finally:
        source.stop()
        branch.stop()


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
