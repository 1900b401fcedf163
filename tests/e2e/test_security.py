"""A shared staging cluster, reviewed as an attacker and as a namespace-scoped developer
would try it: planted records, stored values, restricted identities with their own tokens,
and a reaper the cluster itself keeps to preview-env's objects."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from preview_stack import naming
from testbed import Testbed
from tests.e2e.conftest import EXAMPLES, REPO, Cli, Kube, Result, cli_argv, cli_env
from tests.e2e.test_start_status_clean import objects_of
from tests.support import wait_until

pytestmark = pytest.mark.cluster
REAPER = "system:serviceaccount:preview-env-system:preview-env-reaper"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def apply(testbed: Testbed, items: list[dict[str, Any]]) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": items}
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(listing))


def token_kubeconfig(
    testbed: Testbed, tmp_path: Path, namespace: str, account: str, default_ns: str
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `namespace/account` with its token."""
    token = testbed.kubectl("-n", namespace, "create", "token", account).strip()
    config = json.loads(testbed.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    config["contexts"][0]["context"].update({"user": account, "namespace": default_ns})
    path = tmp_path / f"kubeconfig-{account}"
    path.write_text(json.dumps(config))
    return path


def write_config(tmp_path: Path, name: str, doc: dict[str, Any]) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def deployments_with_image(kube: Kube, image: str) -> list[str]:
    return [
        f"{d.metadata.namespace}/{d.metadata.name}"
        for d in kube.apps.list_deployment_for_all_namespaces().items
        if any(c.image == image for c in d.spec.template.spec.containers)
    ]


# ------------------------------------------------------------------ records are hints
def test_planted_records_never_steer_start_status_or_reap(
    cli: Cli, kube: Kube, staging: str, testbed: Testbed, tmp_path: Path
) -> None:
    key = "sec-plant"
    users = write_config(tmp_path, "users", {"target": {"path": "deployment/users"}})
    first = cli("start", "-f", users, "-n", "staging", "-i", "users:plant", "-k", key)
    assert first.code == 0, first.stderr
    genuine = kube.core.read_namespaced_config_map(naming.record_name(key), "staging")
    # An attacker with a namespace of their own plants records for the key: one naming
    # another team's target with their image and a past expiry, one malformed.
    evil_spec = {
        "key": key,
        "owner": "mallory",
        "created_at": "2020-01-01T00:00:00Z",
        "expires_at": "2020-01-01T00:00:00Z",
        "ttl_seconds": 60,
        "services": [
            {
                "target": {"kind": "deployment", "name": "frontend"},
                "namespace": "staging",
                "image": "evil:1",
            }
        ],
    }
    planted = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.record_name(key),
            "namespace": "default",
            "labels": dict(genuine.metadata.labels),  # the stack label is copied too
            "annotations": {naming.ANNOTATION_EXPIRES_AT: "2020-01-01T00:00:00Z"},
        },
        "data": {naming.RECORD_DATA_KEY: json.dumps(evil_spec)},
    }
    malformed = json.loads(json.dumps(planted))
    malformed["metadata"]["name"] = "malformed-record"
    malformed["metadata"]["annotations"] = {naming.ANNOTATION_EXPIRES_AT: "2020-01-01T00:00"}
    malformed["data"] = {naming.RECORD_DATA_KEY: "{not json"}
    apply(testbed, [planted, malformed])
    try:
        orders = write_config(tmp_path, "orders", {"target": {"path": "deployment/orders"}})
        second = cli(
            "start", "-f", orders, "-n", "staging", "-i", "orders:plant", "-k", key, "-o", "json"
        )
        assert second.code == 0, second.stderr
        images = sorted(p["image"] for p in second.json()["pods"])
        assert images == ["orders:plant", "users:plant"]
        assert deployments_with_image(kube, "evil:1") == []

        shown = cli("status", "-k", key, "-o", "json")
        assert shown.code == 0, shown.stderr
        (env,) = shown.json()
        assert sorted(p["image"] for p in env["pods"]) == ["orders:plant", "users:plant"]
        assert env["owner"] != "mallory" and env["state"] == "live"
        assert f"ignored record default/{naming.record_name(key)}" in shown.stderr
        assert "ignored record default/malformed-record" in shown.stderr

        reaped = cli("reap", "-o", "json")
        assert reaped.code == 0, reaped.stderr
        assert key not in {r["key"] for r in reaped.json()["results"]}
        assert len([o for o in objects_of(kube, key) if o.startswith("deploy/")]) == 2
    finally:
        testbed.kubectl(
            "delete", "configmap", "-n", "default", naming.record_name(key), "malformed-record"
        )
        assert cli("clean", "-k", key).code == 0


# ------------------------------------------------------------------ no plaintext values
def test_override_values_are_secret_everywhere_but_the_pod(
    cli: Cli, kube: Kube, staging: str, tmp_path: Path
) -> None:
    key = "sec-values"
    value = f"tok-{secrets.token_hex(8)}"
    config = write_config(
        tmp_path,
        "m",
        {
            "target": {"path": "deployment/users/container/app", "namespace": "staging"},
            "feature": {"env": {"override": {"API_TOKEN": value}}},
        },
    )
    state = tmp_path / "state"
    env = {"PULUMI_BACKEND_URL": f"file://{state}"}
    started = cli("-v", "start", "-f", config, "-i", "users:values", "-k", key, env=env)
    try:
        assert started.code == 0, started.stderr
        assert value not in started.stdout + started.stderr
        live = kube.apps.read_namespaced_deployment(f"users-{key}", "staging")
        app = next(c for c in live.spec.template.spec.containers if c.name == "app")
        assert {e.name: e.value for e in app.env}["API_TOKEN"] == value  # the pod has it

        record = kube.core.read_namespaced_config_map(naming.record_name(key), "staging")
        assert value not in json.dumps(record.data) and "API_TOKEN" in json.dumps(record.data)
        stored = [p for p in state.rglob("*") if p.is_file()]
        assert stored and not [p for p in stored if value.encode() in p.read_bytes()]
        shown = cli("status", "-k", key, "-o", "json", env=env)
        assert shown.code == 0 and value not in shown.stdout + shown.stderr
        plain = subprocess.run(
            ["pulumi", "stack", "output", "spec", "--stack", f"organization/preview-env/{key}"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            cwd=tmp_path,
            check=False,
        )
        assert plain.stdout.strip() == "[secret]", plain.stderr
    finally:
        assert cli("clean", "-k", key, env=env).code == 0


def test_the_default_local_backend_is_private(kube: Kube, staging: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in cli_env({"HOME": str(home), "PULUMI_HOME": str(home / ".pulumi")}).items()
        if k not in ("PULUMI_BACKEND_URL", "XDG_STATE_HOME")
    }

    def run(*args: str) -> Result:
        done = subprocess.run(
            cli_argv(*args),
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=False,
            preexec_fn=lambda: os.umask(0o022),  # a usual shell umask: we must not rely on it
        )
        return Result(done.returncode, done.stdout, done.stderr)

    key = "sec-private"
    started = run("start", "-t", "deployment/users", "-n", "staging", "-i", "u:1", "-k", key)
    try:
        assert started.code == 0, started.stderr
        root = home / ".local" / "state" / "preview-env"
        readable = [
            str(p) for p in [root, *root.rglob("*")] if stat.S_IMODE(p.stat().st_mode) & 0o077
        ]
        assert readable == []
        assert any(p.name == f"{key}.json" for p in root.rglob("*"))
    finally:
        assert run("clean", "-k", key).code == 0


# ------------------------------------------------------------------ least privilege
TEAM = "team-a"


def _team_namespace(testbed: Testbed) -> None:
    """Namespace team-a with a small target (Deployment + Service with an HTTP port)."""
    app = {"app": "api"}
    apply(
        testbed,
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEAM}},
        ],
    )
    apply(
        testbed,
        [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "api", "namespace": TEAM},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": app},
                    "template": {
                        "metadata": {"labels": app},
                        "spec": {
                            "containers": [
                                {
                                    "name": "api",
                                    "image": "api:1",
                                    "ports": [{"name": "http", "containerPort": 8080}],
                                }
                            ]
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "api", "namespace": TEAM},
                "spec": {
                    "selector": app,
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
            },
            *documents(EXAMPLES / "kubernetes" / "developer.yaml"),
        ],
    )


def test_a_namespace_scoped_developer_can_do_everything_in_their_namespace(
    cli: Cli, kube: Kube, staging: str, testbed: Testbed, tmp_path: Path
) -> None:
    _team_namespace(testbed)
    kubeconfig = token_kubeconfig(testbed, tmp_path, TEAM, "preview-env-ci", TEAM)
    can = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "auth", "can-i", "list", "pods", "-A"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert can.stdout.strip() == "no"  # really namespace-scoped
    env = {"KUBECONFIG": str(kubeconfig), "PULUMI_BACKEND_URL": f"file://{tmp_path / 'be'}"}
    config = write_config(
        tmp_path,
        "api",
        {
            "target": "deployment/api",
            "feature": {"network": {"incoming": {"mode": "steal"}}},
        },
    )
    key = "sec-dev"
    started = cli("start", "-f", config, "-i", "api:dev", "-k", key, "-o", "json", env=env)
    try:
        assert started.code == 0, started.stderr
        assert [p["namespace"] for p in started.json()["pods"]] == [TEAM]
        assert any(o.startswith("httproute/") for o in objects_of(kube, key))
        for args in (("status", "-n", TEAM), ("status",)):
            shown = cli(*args, "-o", "json", env=env)
            assert shown.code == 0, shown.stderr
            (summary,) = [s for s in shown.json() if s["key"] == key]
            assert summary["state"] == "live" and len(summary["pods"]) == 1
        extended = cli("extend", "-k", key, "--by", "10m", env=env)
        assert extended.code == 0, extended.stderr
    finally:
        cleaned = cli("clean", "-k", key, env=env)
        assert cleaned.code == 0, cleaned.stderr
    assert wait_until(lambda: objects_of(kube, key) == [])


def test_the_cluster_keeps_the_reaper_to_preview_env_objects(
    cli: Cli, kube: Kube, staging: str, testbed: Testbed, tmp_path: Path
) -> None:
    testbed.kubectl("apply", "-f", str(EXAMPLES / "kubernetes" / "namespace.yaml"))
    apply(
        testbed,
        [
            d
            for d in documents(EXAMPLES / "kubernetes" / "reaper.yaml")
            if d["kind"] not in ("Secret", "CronJob")
        ],
    )
    reaper = token_kubeconfig(testbed, tmp_path, "preview-env-system", "preview-env-reaper", "x")

    def refused_to_delete_frontend() -> bool:
        done = subprocess.run(
            [
                *("kubectl", "--kubeconfig", str(reaper), "-n", "staging", "delete"),
                *("--dry-run=server", "deployment", "frontend"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.returncode != 0 and "preview-env manages" in done.stderr

    # RBAC lets the reaper delete Deployments; the admission policy refuses this one.
    assert wait_until(refused_to_delete_frontend, timeout=30)

    # A stack that lists an object preview-env does not manage (the label is gone): the
    # reaper's destroy is refused by the cluster, reported, and the object stays.
    key = "sec-deputy"
    started = cli("start", "-t", "deployment/users", "-n", "staging", "-i", "u:2", "-k", key)
    assert started.code == 0, started.stderr
    name = f"users-{key}"
    testbed.kubectl("-n", "staging", "label", "deployment", name, f"{naming.LABEL_MANAGED_BY}-")
    assert cli("extend", "-k", key, "--ttl", "1s").code == 0
    try:
        reaped = cli(
            "--kubeconfig", str(reaper), "reap", "-o", "json", env={"KUBECONFIG": str(reaper)}
        )
        assert reaped.code == 1
        outcome = {r["key"]: r for r in reaped.json()["results"]}[key]
        assert outcome["outcome"] == "failed" and "preview-env manages" in outcome["reason"]
        assert kube.apps.read_namespaced_deployment(name, "staging").metadata.name == name
    finally:
        testbed.kubectl(
            "-n", "staging", "label", "deployment", name, f"{naming.LABEL_MANAGED_BY}=preview-env"
        )
        assert cli("clean", "-k", key).code == 0
    with pytest.raises(ApiException):
        kube.apps.read_namespaced_deployment(name, "staging")
