"""Benchmarks for `preview-env start` and `status` on a fresh local test bed.

    .venv/bin/python bench/bench_cli.py [--runs 3] [--envs 1,10,50]

Measures, in one run on one machine:
- `start` wall time against the floor of `kubectl apply` + `kubectl rollout status` for the
  very same derived manifests (ratio start / floor);
- `status` wall time with 1, 10 and 50 environments, and how many `pulumi` processes it
  spawns (counted through a logging shim placed first on PATH);
- peak RSS of the `preview-env` process during `start` (VmHWM, sampled until exit).
Prints a Markdown table to paste into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
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

from adapters.k8s.cluster import Cluster, ClusterTarget  # noqa: E402
from preview_stack.config import TargetPath  # noqa: E402
from preview_stack.objects import manifests_for  # noqa: E402
from preview_stack.spec import EnvironmentSpec, ServiceSpec  # noqa: E402
from testbed import Testbed, ensure  # noqa: E402


def cli(
    args: list[str], env: dict[str, str], module: list[str] | None = None
) -> tuple[float, int, str]:
    """Run preview-env; return (seconds, peak RSS in kB, stdout).

    Output goes to files, not pipes: this loop polls the process instead of reading, and
    a pipe would block a command whose output outgrows its buffer (status -o json at 200).
    """
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, *(module or ["-m", "cli"]), *args],
            cwd=REPO,
            env=env,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        peak = 0
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{module or 'preview-env'} {' '.join(args)} failed: {err}")
    return seconds, peak, out


def bench_spec(key: str, routing: bool = True) -> EnvironmentSpec:
    """The environment `start` of the users target in `staging` declares."""
    service = ServiceSpec(
        target=TargetPath.parse("deployment/users/container/app"),
        namespace="staging",
        image="ghcr.io/acme/users:bench",
        routing=routing,
    )
    return EnvironmentSpec(
        key=key,
        owner="bench",
        created_at="2026-01-01T00:00:00Z",
        expires_at=None,
        ttl_seconds=None,
        services=[service],
    )


def kubectl_floor(bed: Testbed, key: str, routing: bool = True) -> float:
    """kubectl apply + rollout status of the same manifests `start` would declare."""
    cluster = Cluster(ClusterTarget(str(bed.kubeconfig)))
    env = bench_spec(key, routing)

    class Reader:
        def workload(self, spec: ServiceSpec):  # type: ignore[no-untyped-def]
            return cluster.workload(spec)

        def services(self, namespace: str):  # type: ignore[no-untyped-def]
            return cluster.services(namespace)

        def routes_to(self, namespace: str):  # type: ignore[no-untyped-def]
            return []

    docs = manifests_for(env, Reader())
    start = time.perf_counter()
    bed.kubectl(
        "apply",
        "-f",
        "-",
        input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
    )
    bed.kubectl("-n", "staging", "rollout", "status", f"deployment/users-{key}", "--timeout=120s")
    elapsed = time.perf_counter() - start
    bed.kubectl(
        "delete",
        "-f",
        "-",
        "--wait=true",
        input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
    )
    return elapsed


def staging_bed(tmp: Path) -> tuple[Testbed, dict[str, str], Path]:
    """A started test bed in `tmp` with examples/staging applied; the environment to run
    preview-env against it, with a `pulumi` shim first on PATH; the log the shim appends
    each call to (one line a `pulumi` process). The caller stops the bed."""
    bed = Testbed(tmp / "bed", ensure())
    bed.start()
    try:
        shim = tmp / "shim"
        shim.mkdir()
        log = tmp / "pulumi-calls.log"
        (shim / "pulumi").write_text(
            f'#!/bin/sh\necho "$*" >> {log}\nexec {bed.toolchain.pulumi} "$@"\n'
        )
        (shim / "pulumi").chmod(0o755)
        env = {**os.environ, **bed.environment(), "PYTHONPATH": str(REPO)}
        env["PATH"] = f"{shim}:{env['PATH']}"
        bed.kubectl("apply", "-f", str(REPO / "examples" / "staging"))
        bed.kubectl("-n", "staging", "rollout", "status", "deployment/users", "--timeout=90s")
    except BaseException:
        bed.stop()
        raise
    return bed, env, log


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--envs", default="1,10,50")
    args = parser.parse_args()
    counts = [int(n) for n in args.envs.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        bed, env, log = staging_bed(Path(tmp))
        try:
            starts, floors, peaks = [], [], []
            for run in range(args.runs):
                floors.append(kubectl_floor(bed, f"floor{run}"))
                seconds, peak, _ = cli(
                    [
                        "start",
                        "-f",
                        str(REPO / "examples" / "mirrord.json"),
                        "-i",
                        "ghcr.io/acme/users:bench",
                        "-k",
                        f"bench{run}",
                        "--output",
                        "json",
                    ],
                    env,
                )
                starts.append(seconds)
                peaks.append(peak)
                cli(["clean", "-k", f"bench{run}"], env)

            def create(names: list[str], ttl: str) -> None:
                def one(name: str) -> None:
                    cli(
                        [
                            "start",
                            "-t",
                            "targetless",
                            "-n",
                            "staging",
                            "-i",
                            f"ghcr.io/acme/{name}:1",
                            "-k",
                            name,
                            "--ttl",
                            ttl,
                        ],
                        env,
                    )

                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(one, names))

            status_rows = []
            created = 0
            for count in counts:
                create([f"load{i}" for i in range(created, count)], "infinite")
                created = count
                times, spawned = [], []
                for _ in range(args.runs):
                    log.write_text("")
                    seconds, _, out = cli(["status", "--output", "json"], env)
                    assert len(json.loads(out)) == count
                    times.append(seconds)
                    spawned.append(len(log.read_text().splitlines()))
                status_rows.append((count, statistics.median(times), max(spawned)))

            find_times, find_spawned = [], []
            for _ in range(args.runs):
                log.write_text("")
                seconds, _, out = cli(["reap", "--dry-run", "--output", "json"], env)
                assert json.loads(out)["results"] == []
                find_times.append(seconds)
                find_spawned.append(len(log.read_text().splitlines()))

            reap_rows = []
            for parallel in (1, 4):
                names = [f"exp{parallel}x{i}" for i in range(10)]
                create(names, "1s")
                time.sleep(2)
                seconds, _, out = cli(
                    ["reap", "--parallel", str(parallel), "--output", "json"], env
                )
                reaped = [r for r in json.loads(out)["results"] if r["outcome"] == "reaped"]
                assert len(reaped) == 10, out
                reap_rows.append((parallel, seconds))
        finally:
            bed.stop()

    start_median, floor_median = statistics.median(starts), statistics.median(floors)
    print(f"\nmachine: {os.uname().machine}, {os.cpu_count()} cores; runs: {args.runs}\n")
    print("| measurement | value | target |")
    print("| --- | --- | --- |")
    print(f"| `start` wall time (median) | {start_median:.2f} s | |")
    print(f"| kubectl apply + rollout status floor (median) | {floor_median:.2f} s | |")
    print(f"| ratio start / floor | {start_median / floor_median:.2f}x | <= 2x |")
    print(f"| `start` peak RSS (max) | {max(peaks) / 1024:.0f} MB | < 150 MB |")
    for count, seconds, spawned in status_rows:
        print(
            f"| `status` with {count} environments (median) | {seconds:.2f} s, "
            f"{spawned} pulumi process(es) | < 2 s, constant |"
        )
    print(
        f"| `reap --dry-run` among {counts[-1]} unexpired (median) | "
        f"{statistics.median(find_times):.2f} s, {max(find_spawned)} pulumi process(es) | "
        "< 2 s |"
    )
    (_, serial), (_, parallel4) = reap_rows
    print(f"| `reap` 10 expired, `--parallel 1` | {serial:.1f} s | |")
    print(f"| `reap` 10 expired, `--parallel 4` | {parallel4:.1f} s | |")
    print(f"| ratio parallel 1 / parallel 4 | {serial / parallel4:.2f}x | >= 3x |")


if __name__ == "__main__":
    main()
