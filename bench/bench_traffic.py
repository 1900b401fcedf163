"""Added latency per request through the Gateway and through a waypoint, against the same
request sent straight to the pod (issue 23 item 7), on the test bed's real node.

    .venv/bin/python bench/bench_traffic.py [--requests 2000]

One bed with the Gateway (Traefik on the real node). An echo pod behind Service `echo`
(80 -> 8080), an HTTPRoute on the bed's Gateway to it, then `preview-env waypoint add
bench/echo` (Traefik in front of the Service). Every request is a GET / on a new TCP
connection from inside the node's network namespace (where pods, ClusterIPs and the
Gateway's listener are), so the host's relay is not measured:

- direct: the pod's IP, port 8080 (the baseline);
- ClusterIP: `echo-origin`'s ClusterIP (kube-proxy's DNAT alone, for reference);
- Gateway: 127.0.0.1:<listener> with the route's Host (Traefik, hostNetwork, to the pod);
- waypoint: `echo`'s ClusterIP (kube-proxy to the waypoint's Traefik, then to the pod).

The four paths take turns request by request (round robin, each path first in turn), so
load on the shared machine falls on all of them alike. Prints a Markdown table (p50,
p99, ratio to direct).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed import Testbed, echo, ensure  # noqa: E402
from testbed import node as real_node  # noqa: E402

NAMESPACE = "bench"
HOST = "echo.bench.test"


def objects(image: str, gateway: str) -> list[dict[str, object]]:
    gw_namespace, gw_name = gateway.split("/")
    return [
        *echo.objects(NAMESPACE, "echo", image),
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "echo", "namespace": NAMESPACE},
            "spec": {
                "parentRefs": [{"name": gw_name, "namespace": gw_namespace}],
                "hostnames": [HOST],
                "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}],
            },
        },
    ]


def get(bed: Testbed, name: str, namespace: str = NAMESPACE) -> dict[str, object]:
    doc: dict[str, object] = json.loads(bed.kubectl("get", name, "-n", namespace, "-o", "json"))
    return doc


def timed(bed: Testbed, url: str, headers: dict[str, str]) -> float:
    began = time.perf_counter()
    status, _ = real_node.http_get(bed.node_netns, url, headers)
    elapsed = time.perf_counter() - began
    if status != 200:
        raise RuntimeError(f"{url} answered {status}")
    return elapsed


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    count = parser.parse_args().requests
    with tempfile.TemporaryDirectory() as tmp:
        bed = Testbed(Path(tmp) / "bed", ensure(), gateway=True)
        bed.start()
        try:
            env = {**os.environ, **bed.environment(), "PYTHONPATH": str(REPO)}
            bed.kubectl("create", "namespace", NAMESPACE)
            items = objects(env["PREVIEW_ENV_ECHO_IMAGE"], env["PREVIEW_ENV_GATEWAY"])
            bed.kubectl(
                "apply", "-f", "-", input_text=json.dumps({"kind": "List", "apiVersion": "v1",
                                                          "items": items}),
            )  # fmt: skip
            bed.kubectl("-n", NAMESPACE, "rollout", "status", "deployment/echo", "--timeout=120s")
            added = subprocess.run(
                [
                    sys.executable, "-m", "cli", "waypoint", "add", f"{NAMESPACE}/echo",
                    "--image", bed.images["traefik"].name,
                    "--node-selector", "preview-env.dev/node=real",
                    "--toleration", "preview-env.dev/real-node=true:NoSchedule",
                ],
                env=env, cwd=REPO, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if added.returncode != 0:
                raise SystemExit(f"waypoint add failed: {added.stderr}")
            pods = json.loads(
                bed.kubectl("get", "pods", "-n", NAMESPACE, "-l", "app=echo", "-o", "json")
            )["items"]
            pod_ip = pods[0]["status"]["podIP"]
            waypoint_ip = get(bed, "service/echo")["spec"]["clusterIP"]  # type: ignore[index]
            origin_ip = get(bed, "service/echo-origin")["spec"]["clusterIP"]  # type: ignore[index]
            port = bed.gateway_port
            paths = {
                "direct (pod IP)": (f"http://{pod_ip}:8080/", {}),
                "ClusterIP (kube-proxy)": (f"http://{origin_ip}/", {}),
                "Gateway (Traefik)": (f"http://127.0.0.1:{port}/", {"Host": HOST}),
                "waypoint (ClusterIP + Traefik)": (f"http://{waypoint_ip}/", {}),
            }
            for url, headers in paths.values():  # warm up: connections, Traefik's pools
                for _ in range(50):
                    timed(bed, url, headers)
            samples: dict[str, list[float]] = {name: [] for name in paths}
            names = list(paths)
            for round_ in range(count):  # each path first in turn: no order bias
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    url, headers = paths[name]
                    samples[name].append(timed(bed, url, headers))
        finally:
            bed.stop()
    base50 = percentile(samples["direct (pod IP)"], 50)
    base99 = percentile(samples["direct (pod IP)"], 99)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; {count} requests per path, round robin")  # fmt: skip
    print("| path | p50 | p99 | p50 vs direct | p99 vs direct | added p50 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, values in samples.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(
            f"| {name} | {p50 * 1e3:.2f} ms | {p99 * 1e3:.2f} ms | {p50 / base50:.2f}x | "
            f"{p99 / base99:.2f}x | {(p50 - base50) * 1e3:+.2f} ms |"
        )
    print("mean ms:", {k: round(statistics.mean(v) * 1e3, 2) for k, v in samples.items()})


if __name__ == "__main__":
    main()
