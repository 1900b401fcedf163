"""The reaper runs for real as the example CronJob: its image (testbed.images.reaper, the
local twin of the Containerfile) on the real node, its ServiceAccount's rights only
(in-cluster configuration through the `kubernetes` Service), and a shared PostgreSQL
backend reached through the relay on the node's bridge gateway."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from testbed import images, node
from testbed.backends import SharedBackends
from tests.support.cli import Cli
from tests.support.kube import Kube, apply, documents, job_state, objects_of
from tests.support.paths import EXAMPLES
from tests.support.polling import wait_until
from tests.support.teams import Backend

pytestmark = pytest.mark.cluster
NS = "preview-env-system"
PASSPHRASE = "reaper-secret"


def _pod_report(testbed: Any, job: str) -> str:
    parts = []
    for args in (
        ("get", "pods", "-l", f"job-name={job}", "-o", "wide"),
        ("describe", "pods", "-l", f"job-name={job}"),
        ("logs", f"job/{job}", "--tail=80"),
    ):
        try:
            parts.append(testbed.kubectl("-n", NS, *args))
        except RuntimeError as exc:
            parts.append(str(exc))
    return "\n".join(parts)


def test_the_example_cronjob_reaps_an_expired_environment(
    testbed: Any,
    shared_backends: SharedBackends,
    cli: Cli,
    kube: Kube,
    staging: str,
    tmp_path: Path,
) -> None:
    if not testbed.real_node:
        pytest.skip("needs the real node (PREVIEW_ENV_REAL_NODE=0)")
    started = time.monotonic()
    image = images.reaper(testbed.toolchain)
    node.import_image(testbed.state_dir, image)
    built = time.monotonic() - started

    # The shared backend as the host sees it, and as pods see it (the relay's end).
    host_url = shared_backends.postgres_url
    port = urlsplit(host_url).port
    assert port is not None
    pod_address = node.relay_to_pods(testbed, port, time.monotonic() + 30)
    pod_url = host_url.replace(f"127.0.0.1:{port}", pod_address)
    backend = Backend("postgres", host_url, {"PULUMI_CONFIG_PASSPHRASE": PASSPHRASE})

    key = "cronjob-reaped"
    home = tmp_path / "home"
    home.mkdir()
    # Secret mounts and a database branch: Secrets the reaper may not even read (Pulumi
    # retains them; their owners' deletion takes them).
    config = tmp_path / "mirrord.json"
    config.write_text(
        json.dumps(
            {
                "target": {"path": "deployment/users/container/app", "namespace": staging},
                "feature": {
                    "preview": {
                        "secret_mounts": [{"path": "/run/secrets/token", "text": "t0k"}],
                        "config_mounts": [{"path": "/etc/app.conf", "text": "x"}],
                    },
                    "db_branches": [
                        {
                            "type": "pg",
                            "connection": {"url": {"type": "env", "variable": "DATABASE_URL"}},
                        }
                    ],
                },
            }
        )
    )
    started_env = cli(
        *("start", "-f", str(config), "-i", f"acme/{key}:1", "-k", key),
        *("--routing", "none", "--ttl", "2s", "--output", "json"),
        env={
            "PULUMI_BACKEND_URL": host_url,
            "PULUMI_HOME": str(home / ".pulumi"),
            **backend.env,
        },
    )
    assert started_env.code == 0, started_env.stderr
    created = time.monotonic()
    assert objects_of(kube, key) != []
    assert key in backend.stack_keys()

    # The example's RBAC and admission policy as they are; the Secret and CronJob adapted.
    testbed.kubectl("apply", "-f", str(EXAMPLES / "kubernetes" / "namespace.yaml"))
    docs = documents(EXAMPLES / "kubernetes" / "reaper.yaml")
    kept = [d for d in docs if d["kind"] not in ("Secret", "CronJob")]
    assert {d["kind"] for d in kept} >= {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    apply(testbed, *kept)
    secret = copy.deepcopy(next(d for d in docs if d["kind"] == "Secret"))
    secret["stringData"] = {"PULUMI_BACKEND_URL": pod_url, "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE}
    cronjob = copy.deepcopy(next(d for d in docs if d["kind"] == "CronJob"))
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod.update(node.pod_placement())
    (container,) = pod["containers"]
    container["image"] = image.name
    container["imagePullPolicy"] = "Never"
    assert pod["serviceAccountName"] == "preview-env-reaper"
    assert not any("KUBECONFIG" in str(e) for e in container.get("env", []))
    apply(testbed, secret, cronjob)

    job = "reap-now"
    time.sleep(max(0.0, 3 - (time.monotonic() - created)))  # the 2s TTL is over
    testbed.kubectl("-n", NS, "create", "job", job, "--from=cronjob/preview-env-reaper")
    triggered = time.monotonic()
    try:
        assert wait_until(lambda: job_state(testbed, NS, job) != "Running", timeout=300), (
            _pod_report(testbed, job)
        )
        assert job_state(testbed, NS, job) == "Complete", _pod_report(testbed, job)
        logs = testbed.kubectl("-n", NS, "logs", f"job/{job}")
        assert f"reaped     {key}" in logs, logs
        assert "reaped 1," in logs and "failed 0" in logs, logs
        assert key not in backend.stack_keys()
        assert wait_until(lambda: objects_of(kube, key) == []), objects_of(kube, key)
        kinds = (
            "deployments,services,secrets,configmaps,jobs,pods,serviceaccounts,roles,rolebindings"
        )

        def left() -> list[str]:
            listed = testbed.kubectl(
                "get", kinds, "-A", "-o", "name", "-l", f"app.kubernetes.io/part-of={key}"
            )
            return listed.split()

        assert wait_until(lambda: left() == []), left()
        ran = time.monotonic() - triggered
    finally:
        testbed.kubectl("-n", NS, "delete", "job", job, "--ignore-not-found", "--wait=false")
        testbed.kubectl(
            "-n",
            NS,
            "delete",
            "cronjob,secret",
            "preview-env-reaper",
            "preview-env-backend",
            "--ignore-not-found",
        )
    print(f"\nreaper image {image.name}: built (or found) and imported in {built:.0f}s;")
    print(f"job created to environment gone: {ran:.0f}s; the pod's log:\n{logs}")
