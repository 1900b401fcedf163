"""`preview-env start` of a preview that really runs, against the kubectl floor, on the test
bed's real node (kubelet + containerd + runc: image, sandbox, probes for real).

    .venv/bin/python bench/bench_real_node.py [--runs 3]

Per run, in the same bed: the floor is `kubectl apply` + `kubectl rollout status` of the very
manifests `start` declares (derived from the same target), then `preview-env start
--routing none` of the same target, then `clean`. Prints a Markdown table for BENCHMARKS.md.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters.k8s.cluster import Cluster, ClusterTarget  # noqa: E402
from preview_stack.config import TargetPath  # noqa: E402
from preview_stack.objects import manifests_for  # noqa: E402
from preview_stack.spec import EnvironmentSpec, ServiceSpec  # noqa: E402
from testbed import Testbed, echo, ensure  # noqa: E402

NAMESPACE = "bench"


def target(image: str) -> list[dict[str, object]]:
    return list(echo.objects(NAMESPACE, "echo", image))


def floor(bed: Testbed, image: str, key: str) -> float:
    cluster = Cluster(ClusterTarget(str(bed.kubeconfig)))
    service = ServiceSpec(
        target=TargetPath.parse("deployment/echo"), namespace=NAMESPACE, image=image, routing=False
    )
    env = EnvironmentSpec(
        key=key,
        owner="bench",
        created_at="2026-01-01T00:00:00Z",
        expires_at=None,
        ttl_seconds=None,
        services=[service],
    )

    class Reader:
        def workload(self, spec: ServiceSpec):  # type: ignore[no-untyped-def]
            return cluster.workload(spec)

        def services(self, namespace: str):  # type: ignore[no-untyped-def]
            return cluster.services(namespace)

        def routes_to(self, namespace: str):  # type: ignore[no-untyped-def]
            return []

    listing = json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": manifests_for(env, Reader())}
    )
    began = time.perf_counter()
    bed.kubectl("apply", "-f", "-", input_text=listing)
    bed.kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/echo-{key}", "--timeout=120s")
    elapsed = time.perf_counter() - began
    bed.kubectl("delete", "-f", "-", "--wait=true", input_text=listing)
    return elapsed


def start(env: dict[str, str], image: str, key: str) -> float:
    args = ["start", "-t", "deployment/echo", "-n", NAMESPACE, "-i", image, "-k", key]
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args, "--routing", "none", "-o", "json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"start failed: {done.stderr}")
    subprocess.run(
        [sys.executable, "-m", "cli", "clean", "-k", key],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        bed = Testbed(Path(tmp) / "bed", ensure())
        bed.start()
        try:
            env = {**os.environ, **bed.environment(), "PYTHONPATH": str(REPO)}
            image = env["PREVIEW_ENV_ECHO_IMAGE"]
            bed.kubectl("create", "namespace", NAMESPACE)
            bed.kubectl(
                "apply",
                "-f",
                "-",
                input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": target(image)}),
            )
            bed.kubectl("-n", NAMESPACE, "rollout", "status", "deployment/echo", "--timeout=120s")
            floors, starts = [], []
            for run in range(runs):
                floors.append(floor(bed, image, f"floor{run}"))
                starts.append(start(env, image, f"real{run}"))
        finally:
            bed.stop()
    f, s = statistics.median(floors), statistics.median(starts)
    print("| runs | kubectl floor (median) | preview-env start (median) | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| {runs} | {f:.2f} s | {s:.2f} s | {s / f:.2f}x |")
    print("floors:", ", ".join(f"{x:.2f}" for x in floors))
    print("starts:", ", ".join(f"{x:.2f}" for x in starts))


if __name__ == "__main__":
    main()
