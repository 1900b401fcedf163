"""A real Gateway API data plane on the bed: Traefik v3 on the real node, one Gateway.

Traefik (built from its module by scripts/toolchain/build.sh, packaged by
testbed.images.traefik) runs as a Deployment on the real node with `hostNetwork`, i.e. in
the node's network namespace: it reaches pods and ClusterIPs there, and the API server
through the in-cluster `kubernetes` Service (10.96.0.1, the bed's relay). Its Kubernetes
Gateway provider is the controller of GatewayClass `preview-env-traefik`; the one Gateway
`preview-env-gateway/bed` has an HTTP listener on the port of Traefik's `web` entry point
(Traefik maps listeners to entry points by port). A relay process of the bed carries that
port from inside the namespace to the host's 127.0.0.1 (loopback only), so
`http://127.0.0.1:PORT` with a route's `Host` reaches the route's backends.

Everything here lives in the cluster (gone with the bed's database) or in the node
(containers deleted, namespace removed) or is a process of the bed (the relay), so
`Testbed.stop()` leaves nothing behind.
"""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path
from typing import Any

from preview_stack.waypoints import traefik_rules
from testbed import node
from testbed.images import Image

NAMESPACE = "preview-env-gateway"
NAME = "bed"
CLASS = "preview-env-traefik"
CONTROLLER = "traefik.io/gateway-controller"  # Traefik's fixed controllerName
ENTRY_POINT = "web"
_ACCOUNT = "traefik"
_ROLE = "preview-env-gateway-traefik"
_UID = 65532


def start(bed: node.Bed, image: Image, port: int, deadline: float) -> None:
    """Run Traefik and the Gateway; return once a request to 127.0.0.1:`port` is served
    by Traefik (the Gateway Programmed). `image` is already in the node's containerd."""
    paths = node.Paths.of(bed.state_dir)
    argv = [sys.executable, "-m", "testbed.netns", f"--netns={paths.netns}", f"--out={port}"]
    bed._spawn("gateway-relay", argv, env={"PYTHONPATH": str(Path(__file__).parent.parent)})
    bed.kubectl("apply", "-f", "-", input_text=json.dumps(manifests(image.name, port)))
    bed._wait(f"Gateway {NAMESPACE}/{NAME} programmed", deadline, lambda: _programmed(bed))
    bed._wait(f"Traefik on 127.0.0.1:{port}", deadline, lambda: _answers(port))


def manifests(image: str, port: int) -> dict[str, object]:
    """Namespace, RBAC, Traefik's Deployment, the GatewayClass and the Gateway."""
    labels = {"app.kubernetes.io/name": "traefik"}
    args = [
        f"--entryPoints.{ENTRY_POINT}.address=:{port}",
        "--providers.kubernetesgateway=true",
        # Waypoint classes (preview-env waypoint add) belong to each waypoint's own Traefik.
        "--providers.kubernetesgateway.labelselector=!preview-env.dev/waypoint",
        "--providers.kubernetesgateway.statusaddress.ip=127.0.0.1",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=INFO",
    ]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "traefik", "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # one host port: never two pods at once
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    **node.pod_placement(),
                    "serviceAccountName": _ACCOUNT,
                    "hostNetwork": True,  # the node's namespace, where the relay ends
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsUser": _UID, "runAsNonRoot": True},
                    "containers": [
                        {
                            "name": "traefik",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "args": args,
                            "ports": [{"name": ENTRY_POINT, "containerPort": port}],
                        }
                    ],
                },
            },
        },
    }
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": _ACCOUNT, "namespace": NAMESPACE},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": _ROLE},
            "rules": traefik_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": _ROLE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": _ROLE,
            },
            "subjects": [{"kind": "ServiceAccount", "name": _ACCOUNT, "namespace": NAMESPACE}],
        },
        deployment,
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": CLASS},
            "spec": {"controllerName": CONTROLLER},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {
                "gatewayClassName": CLASS,
                "listeners": [
                    {
                        "name": "http",
                        "protocol": "HTTP",
                        "port": port,
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    }
                ],
            },
        },
    ]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _programmed(bed: node.Bed) -> bool:
    try:
        out = bed.kubectl("get", "gateway", NAME, "-n", NAMESPACE, "-o", "json")
    except RuntimeError:
        return False
    conditions = json.loads(out).get("status", {}).get("conditions", [])
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in conditions)


def _answers(port: int) -> bool:
    """Traefik answers (404 for a host no route names) through the relay."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/", headers={"Host": "gateway-probe.invalid"})
        return conn.getresponse().status == 404
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def environment(port: int) -> dict[str, str]:
    """The variables naming the Gateway and where the host reaches it."""
    return {
        "PREVIEW_ENV_GATEWAY": f"{NAMESPACE}/{NAME}",
        "PREVIEW_ENV_GATEWAY_URL": f"http://127.0.0.1:{port}",
    }
