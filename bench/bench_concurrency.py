"""Concurrent `preview-env start`s: N on distinct keys and N on one key, against one alone.

    .venv/bin/python bench/bench_concurrency.py [--n 4] [--runs 3] [--backend file|postgres|s3]

Everything on a fresh local test bed in one run; targetless previews (each its own image,
so N starts on one key add N different targets). Reports wall time, throughput and p50/p95
latency per shape, and ratios against one start alone measured in the same run. Prints a
Markdown table to paste into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed import Testbed, ensure  # noqa: E402
from testbed.backends import start_shared_backends, stop_shared_backends  # noqa: E402


def start(key: str, name: str, env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cli", "start", "-t", "targetless", "-n", "staging",
         "-i", f"ghcr.io/acme/{name}:1", "-k", key, "--ttl", "infinite", "-o", "json"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"start {key}/{name} failed: {done.stderr}")
    return time.perf_counter() - began


def clean(key: str, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "cli", "clean", "-k", key],
        cwd=REPO, env=env, capture_output=True, check=True,
    )  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
    return ordered[index]


def burst(jobs: list[tuple[str, str]], env: dict[str, str]) -> tuple[float, list[float]]:
    began = time.perf_counter()
    with ThreadPoolExecutor(len(jobs)) as pool:
        latencies = list(pool.map(lambda job: start(job[0], job[1], env), jobs))
    return time.perf_counter() - began, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", choices=("file", "postgres", "s3"), default="file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bed = Testbed(Path(tmp) / "bed", ensure())
        bed.start()
        shared = None
        try:
            env = {**os.environ, **bed.environment(), "PYTHONPATH": str(REPO)}
            if args.backend != "file":
                shared = start_shared_backends(bed)
                env["PULUMI_BACKEND_URL"] = shared.urls()[args.backend]
                env.update(shared.s3_env)
            bed.kubectl("apply", "-f", str(REPO / "examples" / "staging" / "00-namespace.yaml"))
            alone, distinct, same = [], [], []
            distinct_lat: list[float] = []
            same_lat: list[float] = []
            for run in range(args.runs):
                alone.append(start(f"solo{run}", "solo", env))
                clean(f"solo{run}", env)
                wall, lat = burst([(f"d{run}x{i}", "svc") for i in range(args.n)], env)
                distinct.append(wall)
                distinct_lat += lat
                for i in range(args.n):
                    clean(f"d{run}x{i}", env)
                wall, lat = burst([(f"same{run}", f"svc{i}") for i in range(args.n)], env)
                same.append(wall)
                same_lat += lat
                clean(f"same{run}", env)
        finally:
            if shared is not None:
                stop_shared_backends(shared)
            bed.stop()

    one = statistics.median(alone)
    print(f"\nmachine: {os.uname().machine}, {os.cpu_count()} cores; backend: {args.backend}; "
          f"N={args.n}; runs: {args.runs}\n")  # fmt: skip
    print("| shape | wall (median) | throughput | p50 latency | p95 latency | vs one alone |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| one start alone | {one:.2f} s | {1 / one:.2f}/s | {one:.2f} s | {one:.2f} s | 1.00x |"
    )
    for label, walls, lat in (
        (f"{args.n} starts, distinct keys", distinct, distinct_lat),
        (f"{args.n} starts, one key", same, same_lat),
    ):
        wall = statistics.median(walls)
        print(
            f"| {label} | {wall:.2f} s | {args.n / wall:.2f}/s | "
            f"{percentile(lat, 0.5):.2f} s | {percentile(lat, 0.95):.2f} s | "
            f"wall {wall / one:.2f}x, throughput {(args.n / wall) * one:.2f}x |"
        )


if __name__ == "__main__":
    main()
