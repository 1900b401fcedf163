"""Requests to echo pods on the real node, through the bed's Gateway or a ClusterIP, and a
steady request loop that counts every answer (who answered, through what)."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from testbed import Testbed, echo
from testbed import node as real_node
from tests.support.kube import apply


def echo_target(testbed: Testbed, namespace: str, name: str, replicas: int = 1) -> None:
    """Echo pods `app=<name>` on the real node behind Service `<name>` (80 -> 8080)."""
    image = os.environ["PREVIEW_ENV_ECHO_IMAGE"]
    apply(testbed, *echo.objects(namespace, name, image, replicas=replicas))
    testbed.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=90s")


def pod_names(testbed: Testbed, namespace: str, selector: str) -> set[str]:
    listed = json.loads(
        testbed.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    )
    return {
        p["metadata"]["name"] for p in listed["items"] if "deletionTimestamp" not in p["metadata"]
    }


@dataclass(frozen=True)
class Answer:
    """One request's outcome: HTTP status (0: no answer), the pod that answered and the
    Traefik that forwarded it (`X-Forwarded-Server`, empty when none did)."""

    status: int
    pod: str = ""
    via: str = ""
    error: str = ""


def _answer(status: int, body: bytes) -> Answer:
    try:
        reply: dict[str, Any] = json.loads(body)
    except ValueError:
        return Answer(status, error=body[:80].decode(errors="replace"))
    headers = {k.lower(): v for k, v in (reply.get("headers") or {}).items()}
    via = headers.get("x-forwarded-server", "")
    return Answer(status, str(reply.get("hostname", "")), via if isinstance(via, str) else via[0])


def via_cluster_ip(testbed: Testbed, address: str, headers: dict[str, str] | None = None) -> Answer:
    """GET http://ADDRESS/ from the real node's network namespace (kube-proxy's rules)."""
    try:
        status, body = real_node.http_get(testbed.node_netns, f"http://{address}/", headers)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(0, error=str(exc))
    return _answer(status, body)


def via_gateway(host: str, headers: dict[str, str] | None = None) -> Answer:
    """GET / with `Host: host` through the bed's Gateway ($PREVIEW_ENV_GATEWAY_URL)."""
    parts = urllib.parse.urlsplit(os.environ["PREVIEW_ENV_GATEWAY_URL"])
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return _answer(response.status, response.read())
    except (OSError, http.client.HTTPException) as exc:
        return Answer(0, error=str(exc))
    finally:
        conn.close()


@dataclass
class RequestLoop:
    """Requests to a ClusterIP one after the other (a new connection each) from a thread
    until stopped; every answer is kept, in order."""

    testbed: Testbed
    address: str
    headers: dict[str, str] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RequestLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.answers.append(self.request())
            time.sleep(0.02)

    def request(self) -> Answer:
        return via_cluster_ip(self.testbed, self.address, self.headers)

    def mark(self) -> int:
        """The number of answers so far (to split the stream into phases)."""
        return len(self.answers)

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    def sides(self, start: int = 0, end: int | None = None) -> Counter[tuple[str, bool]]:
        """(pod, through a waypoint) -> count, for answers start..end."""
        return Counter((a.pod, bool(a.via)) for a in self.answers[start:end])


class GatewayLoop(RequestLoop):
    """The same loop through the bed's Gateway, with `Host: host`."""

    def __init__(self, host: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(testbed=None, address=host, headers=dict(headers or {}))  # type: ignore[arg-type]

    def request(self) -> Answer:
        return via_gateway(self.address, self.headers)
