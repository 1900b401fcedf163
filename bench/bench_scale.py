"""Issue 15's benchmarks in one run on a fresh test bed (file backend).

    .venv/bin/python bench/bench_scale.py [--runs 3] [--envs 200]

- `start` of one target (`--routing none`) against a plain Pulumi inline program declaring
  the same Deployment and Service (bench/plain_pulumi.py, stock Automation API, same
  backend), and the kubectl floor; runs interleaved.
- `pulumi` processes each command starts, counted by a logging shim first on PATH.
- `reap --parallel 4` of 10 expired environments against one `clean`.
- With 1 and with --envs environments: `status` (text and `-o json`), the reaper's scan
  (`reap --dry-run`), peak RSS of `status`, and `start` on a new key. The environments are
  made by real `preview-env start`s (targetless, 4 at once): the honest way, and the slow
  part of the run (about 2 s of CPU each).
Prints Markdown rows to paste into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_cli import cli, kubectl_floor, staging_bed  # noqa: E402

PLAIN = [str(REPO / "bench" / "plain_pulumi.py")]
MAKE = ["start", "-t", "targetless", "-n", "staging", "-i"]
START = ["start", "-t", "deployment/users/container/app", "-n", "staging", "--routing", "none"]
START += ["-i", "ghcr.io/acme/users:bench", "-k"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--envs", type=int, default=200)
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []

    def row(what: str, value: str) -> None:
        rows.append((what, value))
        print(f"| {what} | {value} |", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        bed, env, log = staging_bed(Path(tmp))
        try:

            def counted(
                args: list[str], module: list[str] | None = None
            ) -> tuple[float, int, str, int]:
                log.write_text("")
                seconds, peak, out = cli(args, env, module)
                return seconds, peak, out, len(log.read_text().splitlines())

            def start(key: str, *extra: str) -> tuple[float, int, str, int]:
                return counted([*START, key, "-o", "json", *extra])

            # 1. start against plain Pulumi and kubectl, interleaved.
            starts, plains, floors, cleans = [], [], [], []
            counts: dict[str, int] = {}
            for run in range(args.runs):
                floors.append(kubectl_floor(bed, f"floor{run}", routing=False))
                plains.append(counted(["up", f"plain{run}"], PLAIN)[0])
                seconds, _, _, n = start(f"one{run}")
                starts.append(seconds)
                counts["start (new key)"] = n
                again = start(f"one{run}", "--ttl", "2h")
                counts["start (existing key)"] = again[3]
                seconds, _, _, n = counted(["clean", "-k", f"one{run}"])
                cleans.append(seconds)
                counts["clean"] = n
                counted(["destroy", f"plain{run}"], PLAIN)
            start_m, plain_m = statistics.median(starts), statistics.median(plains)
            row("`start`, one target, routing off (median)", f"{start_m:.2f} s")
            row("plain Pulumi inline program, same objects (median)", f"{plain_m:.2f} s")
            row("kubectl apply + rollout status (median)", f"{statistics.median(floors):.2f} s")
            row("ratio start / plain Pulumi (target <= 1.15x)", f"{start_m / plain_m:.2f}x")

            def make(names: list[str], ttl: str) -> None:
                def one(name: str) -> None:
                    cli([*MAKE, f"ghcr.io/acme/{name}:1", "-k", name, "--ttl", ttl], env)

                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(one, names))

            # 2. reap of 10 expired against one clean.
            make([f"exp{i}" for i in range(10)], "1s")
            time.sleep(2)
            seconds, _, out, n = counted(["reap", "--parallel", "4", "-o", "json"])
            reaped = [r for r in json.loads(out)["results"] if r["outcome"] == "reaped"]
            assert len(reaped) == 10, out
            counts["reap of 10 expired"] = n
            clean_m = statistics.median(cleans)
            row("one `clean` (median)", f"{clean_m:.2f} s")
            row("`reap --parallel 4` of 10 expired", f"{seconds:.2f} s")
            row("ratio reap 10 / one clean (target <= 4x)", f"{seconds / clean_m:.2f}x")

            # 3. status, scan and start at 1 and at --envs environments.
            def at_size(size: int) -> None:
                def median_of(measure: Callable[[], tuple[float, int, str, int]]) -> tuple:  # type: ignore[type-arg]
                    got = [measure() for _ in range(args.runs)]
                    return (
                        statistics.median(g[0] for g in got),
                        max(g[1] for g in got),
                        got[-1][2],
                        max(g[3] for g in got),
                    )

                s, peak, _, n = median_of(lambda: counted(["status"]))
                row(
                    f"`status` with {size} env(s), text (median)",
                    f"{s:.2f} s, {n} pulumi, peak RSS {peak / 1024:.0f} MB",
                )
                s, _, out, n = median_of(lambda: counted(["status", "-o", "json"]))
                assert len(json.loads(out)) == size, out[:200]
                row(f"`status -o json` with {size} env(s) (median)", f"{s:.2f} s, {n} pulumi")
                s, _, out, n = median_of(lambda: counted(["reap", "--dry-run", "-o", "json"]))
                assert json.loads(out)["results"] == []
                row(
                    f"reaper scan (`reap --dry-run`) among {size} (median)",
                    f"{s:.2f} s, {n} pulumi",
                )
                times = []
                for run in range(args.runs):
                    times.append(start(f"new{size}x{run}")[0])
                    cli(["clean", "-k", f"new{size}x{run}"], env)
                row(
                    f"`start` on a new key with {size} env(s) (median)",
                    f"{statistics.median(times):.2f} s",
                )

            make(["load0"], "infinite")
            at_size(1)
            began = time.monotonic()
            make([f"load{i}" for i in range(1, args.envs)], "infinite")
            row(
                f"making {args.envs - 1} more environments (4 `start`s at once)",
                f"{time.monotonic() - began:.0f} s",
            )
            at_size(args.envs)

            # 4. The same cluster, two backends: one holding 1 environment, one holding
            # --envs; `start` on a new key alternates between them, so what grows with the
            # backend is separated from what the busier cluster costs.
            small = {**env, "PULUMI_BACKEND_URL": f"file://{Path(tmp) / 'small'}"}
            (Path(tmp) / "small").mkdir()
            cli([*MAKE, "ghcr.io/acme/small0:1", "-k", "small0", "--ttl", "infinite"], small)
            with_one: list[float] = []
            with_all: list[float] = []
            for run in range(args.runs):
                for times, backend in ((with_one, small), (with_all, env)):
                    key = f"alt{run}x{len(times)}{'s' if backend is small else 'b'}"
                    began = time.perf_counter()
                    cli([*START, key, "-o", "json"], backend)
                    times.append(time.perf_counter() - began)
                    cli(["clean", "-k", key], backend)
            one_m, all_m = statistics.median(with_one), statistics.median(with_all)
            row(
                f"`start` on a new key, same cluster, backend with 1 vs {args.envs} (medians)",
                f"{one_m:.2f} s vs {all_m:.2f} s: {all_m / one_m:.2f}x",
            )
        finally:
            bed.stop()

    print(f"\nmachine: {os.uname().machine}, {os.cpu_count()} cores; runs: {args.runs}\n")
    print("| measurement | value |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |")
    print("\n| command | `pulumi` processes |\n| --- | --- |")
    for what, n in counts.items():
        print(f"| {what} | {n} |")


if __name__ == "__main__":
    main()
