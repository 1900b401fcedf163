"""The CI and scheduling examples: lint-clean workflows, valid manifests, and a reaper whose
least-privilege RBAC is enough to reap."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli
from tests.support.kube import Kube, apply, documents, objects_of
from tests.support.paths import EXAMPLES
from tests.support.polling import wait_until
from tests.support.stacks import stack_names

pytestmark = pytest.mark.cluster
SA = "system:serviceaccount:preview-env-system:preview-env-reaper"


def test_github_workflows_pass_actionlint(testbed: Any) -> None:
    workflows = sorted((EXAMPLES / "github").glob("*.yml"))
    assert len(workflows) == 2
    result = subprocess.run(
        [str(testbed.toolchain.actionlint), *map(str, workflows)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_reaper_manifests_pass_a_server_side_dry_run(testbed: Any) -> None:
    testbed.kubectl("apply", "-f", str(EXAMPLES / "kubernetes" / "namespace.yaml"))
    out = testbed.kubectl(
        "apply", "--dry-run=server", "-f", str(EXAMPLES / "kubernetes" / "reaper.yaml")
    )
    assert "cronjob.batch/preview-env-reaper created (server dry run)" in out


def test_reaper_rbac_is_least_privilege_and_enough(
    cli: Cli, kube: Kube, staging: str, testbed: Any, tmp_path: Path
) -> None:
    manifests = [
        d
        for d in documents(EXAMPLES / "kubernetes" / "reaper.yaml")
        if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
    ]
    testbed.kubectl("apply", "-f", str(EXAMPLES / "kubernetes" / "namespace.yaml"))
    apply(testbed, *manifests)
    for verb, resource, allowed in [
        ("list", "configmaps", "yes"),
        ("delete", "deployments.apps", "yes"),
        ("get", "secrets", "no"),  # no Secret at all: ours go with their owners
        ("list", "secrets", "no"),
        ("watch", "secrets", "no"),
        ("delete", "secrets", "no"),  # the garbage collector removes ours
        ("delete", "persistentvolumeclaims", "yes"),
        ("delete", "cronjobs.batch", "yes"),
        ("delete", "jobs.batch", "yes"),
        ("create", "secrets", "no"),
        ("create", "deployments.apps", "no"),
        ("patch", "services", "no"),
    ]:
        out = subprocess.run(
            [
                str(testbed.toolchain.kubectl),
                "--kubeconfig",
                str(testbed.kubeconfig),
                "auth",
                "can-i",
                verb,
                resource,
                "-A",
                f"--as={SA}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.stdout.strip() == allowed, (verb, resource, out.stdout, out.stderr)
    # Issue 21: not even one Secret whose name it knows, in any namespace.
    for namespace in ("kube-system", "staging", "preview-env-system"):
        out = subprocess.run(
            [
                *(str(testbed.toolchain.kubectl), "--kubeconfig", str(testbed.kubeconfig)),
                *("auth", "can-i", "get", "secret/x", "-n", namespace, f"--as={SA}"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.stdout.strip() == "no", (namespace, out.stdout, out.stderr)

    token = testbed.kubectl(
        "-n", "preview-env-system", "create", "token", "preview-env-reaper"
    ).strip()
    admin = json.loads(testbed.kubeconfig.read_text())
    admin["users"] = [{"name": "reaper", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "reaper"
    reaper_kubeconfig = tmp_path / "reaper-kubeconfig"
    reaper_kubeconfig.write_text(json.dumps(admin))

    # With files and a database branch: their Secrets go too, though the reaper may not
    # read a Secret (Pulumi retains them; the files ConfigMap and the branch Service own
    # them, so the garbage collector deletes them).
    config = json.loads((EXAMPLES / "mirrord.json").read_text())
    config["feature"]["preview"]["secret_mounts"] = [{"path": "/run/secrets/t", "text": "x"}]
    config["feature"]["preview"]["config_mounts"] = [{"path": "/etc/app.conf", "text": "y"}]
    config["feature"]["db_branches"] = [
        {"type": "pg", "connection": {"url": {"type": "env", "variable": "DATABASE_URL"}}}
    ]
    (tmp_path / "mirrord.json").write_text(json.dumps(config))
    started = cli(
        "start",
        "-f",
        str(tmp_path / "mirrord.json"),
        "-i",
        "users:rbac",
        "-k",
        "rbac-reap",
        "--ttl",
        "2s",
    )
    assert started.code == 0, started.stderr
    time.sleep(3)
    reaped = cli(
        "--kubeconfig",
        str(reaper_kubeconfig),
        "reap",
        "--output",
        "json",
        env={"KUBECONFIG": str(reaper_kubeconfig)},
    )
    assert reaped.code == 0, reaped.stderr
    assert {r["key"]: r["outcome"] for r in reaped.json()["results"]} == {"rbac-reap": "reaped"}
    assert "rbac-reap" not in stack_names()
    assert wait_until(lambda: objects_of(kube, "rbac-reap") == [])

    def left() -> list[str]:
        kinds = (
            "deployments,services,secrets,configmaps,jobs,pods,serviceaccounts,roles,rolebindings"
        )
        found = testbed.kubectl(
            "get", kinds, "-A", "-o", "name", "-l", "app.kubernetes.io/part-of=rbac-reap"
        )
        return found.split()

    assert wait_until(lambda: left() == []), left()
