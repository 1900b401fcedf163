"""Key-scoped traffic: Gateway API routes declared in the stack, accepted by the API server
(the CRDs' own validation runs there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from preview_stack.routing import default_filter
from tests.support.cli import Cli
from tests.support.kube import Kube, objects_of
from tests.support.polling import wait_until
from tests.support.stacks import stack_names

pytestmark = pytest.mark.cluster
GROUP = ("gateway.networking.k8s.io", "v1")


def config(tmp_path: Path, name: str, incoming: dict[str, Any] | None) -> str:
    doc: dict[str, Any] = {
        "target": {"path": "deployment/users/container/app", "namespace": "staging"}
    }
    if incoming is not None:
        doc["feature"] = {"network": {"incoming": incoming}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def routes_of(kube: Kube, key: str) -> dict[str, Any]:
    items = kube.custom.list_namespaced_custom_object(
        *GROUP, "staging", "httproutes", label_selector=f"preview-env.dev/key={key}"
    )["items"]
    return {r["metadata"]["name"]: r["spec"] for r in items}


def start(cli: Cli, path: str, key: str, *extra: str) -> Any:
    result = cli("start", "-f", path, "-i", f"users:{key}", "-k", key, "--output", "json", *extra)
    assert result.code == 0, result.stderr
    return result.json()


ROOT = {"path": {"type": "PathPrefix", "value": "/"}}


@pytest.mark.parametrize(
    ("mode", "incoming", "expected"),
    [
        (
            "steal-custom",
            {"mode": "steal", "http_filter": {"header_filter": "^x-preview: {{ key }}$"}},
            {
                "users-rt-steal-custom": [
                    {
                        "matches": [
                            {
                                **ROOT,
                                "headers": [
                                    {
                                        "type": "Exact",
                                        "name": "x-preview",
                                        "value": "rt-steal-custom",
                                    }
                                ],
                            }
                        ],
                        "backendRefs": [
                            {
                                "group": "",
                                "kind": "Service",
                                "name": "users-rt-steal-custom",
                                "port": 80,
                                "weight": 1,
                            }
                        ],
                    },
                    {
                        "matches": [ROOT],
                        "backendRefs": [
                            {
                                "group": "",
                                "kind": "Service",
                                "name": "users",
                                "port": 80,
                                "weight": 1,
                            }
                        ],
                    },
                ]
            },
        ),
        (
            "steal-default",
            {"mode": "steal"},
            {
                "users-rt-steal-default": [
                    {
                        "matches": [
                            {
                                **ROOT,
                                "headers": [
                                    {
                                        "type": "RegularExpression",
                                        "name": "baggage",
                                        "value": default_filter("rt-steal-default").value,
                                    }
                                ],
                            }
                        ],
                        "backendRefs": [
                            {
                                "group": "",
                                "kind": "Service",
                                "name": "users-rt-steal-default",
                                "port": 80,
                                "weight": 1,
                            }
                        ],
                    },
                    {
                        "matches": [ROOT],
                        "backendRefs": [
                            {
                                "group": "",
                                "kind": "Service",
                                "name": "users",
                                "port": 80,
                                "weight": 1,
                            }
                        ],
                    },
                ]
            },
        ),
        (
            "mirror",
            {"mode": "mirror"},
            {
                "users-rt-mirror": [
                    {
                        "matches": [ROOT],
                        "filters": [
                            {
                                "type": "RequestMirror",
                                "requestMirror": {
                                    "backendRef": {
                                        "group": "",
                                        "kind": "Service",
                                        "name": "users-rt-mirror",
                                        "port": 80,
                                    }
                                },
                            }
                        ],
                        "backendRefs": [
                            {
                                "group": "",
                                "kind": "Service",
                                "name": "users",
                                "port": 80,
                                "weight": 1,
                            }
                        ],
                    }
                ]
            },
        ),
        ("off", {"mode": "off"}, {}),
        ("ports-none-match", {"mode": "steal", "ports": [9999]}, {}),
    ],
)
def test_route_shapes(
    cli: Cli,
    kube: Kube,
    staging: str,
    tmp_path: Path,
    mode: str,
    incoming: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    key = f"rt-{mode}"[:40]
    doc = start(cli, config(tmp_path, mode, incoming), key)
    routes = routes_of(kube, key)
    assert {name: spec["rules"] for name, spec in routes.items()} == expected
    for spec in routes.values():
        assert spec["parentRefs"] == [{"group": "", "kind": "Service", "name": "users", "port": 80}]
    if expected:
        assert doc["pods"][0]["traffic"]
    assert cli("clean", "-k", key).code == 0
    assert wait_until(lambda: objects_of(kube, key) == [])


def test_two_environments_on_one_target_coexist(
    cli: Cli, kube: Kube, staging: str, tmp_path: Path
) -> None:
    path = config(tmp_path, "steal", {"mode": "steal"})
    start(cli, path, "rt-one")
    start(cli, path, "rt-two")
    assert set(routes_of(kube, "rt-one")) == {"users-rt-one"}
    assert set(routes_of(kube, "rt-two")) == {"users-rt-two"}
    assert cli("clean", "-k", "rt-one").code == 0
    assert wait_until(lambda: routes_of(kube, "rt-one") == {})
    assert set(routes_of(kube, "rt-two")) == {"users-rt-two"}
    assert cli("clean", "-k", "rt-two").code == 0


def test_inexpressible_filter_fails_cleanly(
    cli: Cli, kube: Kube, staging: str, tmp_path: Path
) -> None:
    path = config(
        tmp_path, "bad", {"mode": "steal", "http_filter": {"header_filter": "^(x-a|x-b): 1$"}}
    )
    result = cli("start", "-f", path, "-i", "users:x", "-k", "rt-bad")
    assert result.code == 2
    assert "cannot be expressed as a Gateway API header match" in result.stderr
    assert "rt-bad" not in stack_names() and objects_of(kube, "rt-bad") == []


def test_cluster_without_gateway_api(
    cli: Cli, kube: Kube, staging: str, tmp_path: Path, testbed: Any
) -> None:
    crd = next(testbed.toolchain.crds.glob("*httproutes.yaml"))
    testbed.kubectl("delete", "-f", str(crd), "--wait=true")
    try:
        assert wait_until(lambda: not _serves_httproutes(testbed))
        path = config(tmp_path, "nocrd", {"mode": "steal"})
        refused = cli("start", "-f", path, "-i", "users:x", "-k", "rt-nocrd")
        assert refused.code == 2 and "--routing none" in refused.stderr
        assert "rt-nocrd" not in stack_names() and objects_of(kube, "rt-nocrd") == []
        plain = cli("start", "-f", path, "-i", "users:x", "-k", "rt-nocrd", "--routing", "none")
        assert plain.code == 0, plain.stderr
        assert cli("clean", "-k", "rt-nocrd").code == 0
    finally:
        testbed.kubectl("apply", "--server-side", "-f", str(crd))
        testbed.kubectl("wait", "--for=condition=Established", "-f", str(crd), "--timeout=60s")
        assert wait_until(lambda: _serves_httproutes(testbed))


def _serves_httproutes(testbed: Any) -> bool:
    try:
        out = testbed.kubectl(
            "api-resources", "--api-group=gateway.networking.k8s.io", "-o", "name"
        )
    except Exception:
        return False
    return "httproutes" in out
