"""Previews on the real node, through the CLI: the derived pod really starts (volumes, env
expansion, probes), serves requests, stays out of the target's Service, and failures say
why with the container's own last words."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import Testbed
from testbed import node as real_node
from tests.support.cli import Cli, spawn_cli
from tests.support.kube import Kube, apply
from tests.support.polling import wait_until
from tests.support.workloads import deployment, deployment_and_service

pytestmark = pytest.mark.cluster


@pytest.fixture
def shop(testbed: Testbed, namespace: str) -> str:
    """The target below applied and rolled out on the real node; returns the echo image."""
    image = os.environ["PREVIEW_ENV_ECHO_IMAGE"]
    apply(testbed, *_shop(namespace, image))
    testbed.kubectl("rollout", "status", "deployment/shop", "-n", namespace, "--timeout=90s")
    return image


def _shop(namespace: str, image: str) -> list[dict[str, Any]]:
    """A target with ConfigMap and Secret volumes, envFrom, $(VAR) and a readiness probe."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "shop-files", "namespace": namespace},
            "data": {"greeting": "hello"},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "shop-env", "namespace": namespace},
            "data": {"REGION": "eu", "FEATURE_X": "on"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "shop-secret", "namespace": namespace},
            "stringData": {"token": "t0k"},
        },
        *deployment_and_service(
            "shop",
            namespace,
            [
                {
                    "name": "shop",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "envFrom": [{"configMapRef": {"name": "shop-env"}}],
                    "env": [
                        {"name": "DB_HOST", "value": "db.staging"},
                        {"name": "DATABASE_URL", "value": "postgres://$(DB_HOST)/app"},
                        {"name": "DROP_ME", "value": "1"},
                    ],
                    "volumeMounts": [
                        {"name": "files", "mountPath": "/etc/shop"},
                        {"name": "secret", "mountPath": "/etc/secret"},
                    ],
                    "readinessProbe": {
                        "httpGet": {"path": "/ready", "port": "http"},
                        "periodSeconds": 1,
                    },
                }
            ],
            [{"name": "http", "port": 80, "targetPort": "http"}],
            replicas=2,
            pod={
                **real_node.pod_placement(),
                "terminationGracePeriodSeconds": 1,
                "volumes": [
                    {"name": "files", "configMap": {"name": "shop-files"}},
                    {"name": "secret", "secret": {"secretName": "shop-secret"}},
                ],
            },
        ),
    ]


def _config(tmp_path: Path, namespace: str, override: dict[str, str]) -> str:
    path = tmp_path / "mirrord.json"
    path.write_text(
        json.dumps(
            {
                "target": {"path": "deployment/shop/container/shop", "namespace": namespace},
                "feature": {
                    "preview": {"creation_timeout_secs": 45},
                    "env": {"exclude": ["DROP_ME"], "override": override},
                },
            }
        )
    )
    return str(path)


def _answers(testbed: Testbed, ip: str, count: int) -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = []

    def ask() -> bool:
        try:
            status, body = real_node.http_get(testbed.node_netns, f"http://{ip}/")
        except OSError:
            return False
        if status == 200:
            replies.append(json.loads(body))
        return len(replies) >= count

    assert wait_until(ask, timeout=45), f"{len(replies)} answers from {ip}"
    return replies


def _pod_names(kube: Kube, namespace: str, selector: str) -> set[str]:
    pods = kube.core.list_namespaced_pod(namespace, label_selector=selector).items
    return {p.metadata.name for p in pods if p.metadata.deletion_timestamp is None}


def test_a_real_preview_starts_serves_and_stays_isolated(
    cli: Cli,
    kube: Kube,
    testbed: Testbed,
    namespace: str,
    tmp_path: Path,
    shop: str,
) -> None:
    image = shop
    key = "rp-live"
    config = _config(tmp_path, namespace, {"MODE": "preview"})
    started = cli("start", "-f", config, "-i", image, "-k", key, "--routing", "none", "-o", "json")
    assert started.code == 0, started.stderr
    (pod,) = started.json()["pods"]
    assert pod["ready"]
    assert kube.core.read_namespaced_pod(pod["name"], namespace).spec.node_name == real_node.NAME
    try:
        preview_ip = kube.core.read_namespaced_service(f"shop-{key}", namespace).spec.cluster_ip
        target_ip = kube.core.read_namespaced_service("shop", namespace).spec.cluster_ip
        targets = _pod_names(kube, namespace, "app=shop")
        assert pod["name"] not in targets and len(targets) == 2

        replies = _answers(testbed, preview_ip, 6)
        assert {r["hostname"] for r in replies} == {pod["name"]}  # only the preview
        env = replies[0]["env"]
        assert "DROP_ME" not in env  # excluded
        assert env["MODE"] == "preview"  # overridden
        assert env["PREVIEW_ENV_KEY"] == key
        assert env["DATABASE_URL"] == "postgres://db.staging/app"  # $(VAR) still expands
        assert env["REGION"] == "eu"  # envFrom kept

        seen = {r["hostname"] for r in _answers(testbed, target_ip, 12)}
        assert seen <= targets and pod["name"] not in seen  # the target never reaches it

        # `logs`: what the container printed, through the API server and the kubelet.
        prefix = f"[{pod['name']}/shop]"
        got = cli("logs", "-k", key)
        assert got.code == 0, got.stderr
        assert f"{prefix} echo: {pod['name']} listening on :8080" in got.stdout
        assert f"{prefix} echo: GET / from" in got.stdout
        last = cli("logs", "-k", key, "-t", "deployment/shop", "--tail", "1")
        assert last.code == 0 and len(last.stdout.splitlines()) == 1
        unknown = cli("logs", "-k", key, "-t", "deployment/nope")
        assert unknown.code == 2 and "targets: deployment/shop" in unknown.stderr
        _follows_until_interrupted(testbed, key, preview_ip, prefix)
    finally:
        assert cli("clean", "-k", key).code == 0


def test_real_failures_are_named_with_the_containers_last_words(
    cli: Cli,
    kube: Kube,
    testbed: Testbed,
    namespace: str,
    tmp_path: Path,
    shop: str,
) -> None:
    image = shop
    config = _config(tmp_path, namespace, {})
    missing = cli(
        "start",
        "-f",
        config,
        "-i",
        "preview-env.local/missing:1",
        "-k",
        "rp-missing",
        "--timeout",
        "20",
    )
    assert missing.code == 1
    assert "ErrImageNeverPull" in missing.stderr, missing.stderr

    crashing = _config(tmp_path, namespace, {"ECHO_EXIT": "3"})
    crashed = cli("start", "-f", crashing, "-i", image, "-k", "rp-crash", "--timeout", "40")
    assert crashed.code == 1
    assert "CrashLoopBackOff" in crashed.stderr, crashed.stderr
    assert "echo: exiting with code 3 as asked" in crashed.stderr  # its last log lines
    assert "last ended: Error, exit code 3" in crashed.stderr
    assert wait_until(lambda: _pod_names(kube, namespace, "preview-env.dev/key") == set())


def _follows_until_interrupted(testbed: Testbed, key: str, ip: str, prefix: str) -> None:
    """`logs -f` prints a request's line as it happens, and Ctrl-C ends it with exit 0."""
    marker = f"/followed-{uuid.uuid4().hex[:8]}"
    follower = spawn_cli("logs", "-k", key, "-f", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = threading.Event()

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            if line.startswith(prefix) and marker in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert wait_until(
            lambda: (
                real_node.http_get(testbed.node_netns, f"http://{ip}{marker}")[0] == 200
                and seen.wait(1)
            ),
            timeout=30,
        )
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=20) == 0


def test_status_names_real_failures_not_ready(
    cli: Cli,
    kube: Kube,
    testbed: Testbed,
    namespace: str,
    tmp_path: Path,
    shop: str,
) -> None:
    """A kept failed update on the real node: status says not-ready with the kubelet's
    reason (ErrImageNeverPull, then CrashLoopBackOff), never ready."""
    image = shop
    key = "rp-states"
    config = _config(tmp_path, namespace, {})

    def status() -> dict[str, Any]:
        result = cli("status", "-k", key, "-o", "json")
        assert result.code == 0, result.stderr
        envs: list[dict[str, Any]] = result.json()
        return envs[0]

    try:
        assert cli("start", "-f", config, "-i", image, "-k", key, "--timeout", "45").code == 0
        assert status()["state"] == "ready"
        missing = cli(
            "start", "-f", config, "-i", "preview-env.local/missing:1", "-k", key,
            "--timeout", "15", "--keep-on-failure",
        )  # fmt: skip
        assert missing.code == 1, missing.stderr
        env = status()
        assert env["state"] == "not-ready", env
        pulled = [p for p in env["pods"] if p["image"] == "preview-env.local/missing:1"]
        assert pulled and pulled[0]["state"] == "not-ready", env["pods"]
        assert pulled[0]["reason"].startswith("ErrImageNeverPull"), pulled
        assert "ErrImageNeverPull" in env["reason"]

        crashing = _config(tmp_path, namespace, {"ECHO_EXIT": "3"})
        crashed = cli(
            "start", "-f", crashing, "-i", image, "-k", key, "--timeout", "40",
            "--keep-on-failure",
        )  # fmt: skip
        assert crashed.code == 1, crashed.stderr

        def crash_looping() -> bool:
            env = status()
            return env["state"] == "not-ready" and any(
                p["state"] == "not-ready" and p["reason"].startswith("CrashLoopBackOff")
                for p in env["pods"]
            )

        assert wait_until(crash_looping, timeout=60), status()
        text = cli("status", "-k", key)
        assert "not-ready" in text.stdout and "CrashLoopBackOff" in text.stdout
    finally:
        assert cli("clean", "-k", key).code == 0


def test_start_judges_the_new_template_not_the_old_ready_pod(
    cli: Cli,
    kube: Kube,
    testbed: Testbed,
    namespace: str,
    tmp_path: Path,
    shop: str,
) -> None:
    """An update whose new pod can never be Ready fails, even when Pulumi's Deployment
    await reports it done: the old pod (previous ReplicaSet, Ready throughout the rolling
    update) is not the environment being ready.

    The await (pulumi-kubernetes 4.25) passes its "controller has reconciled" gate on any
    status whose observedGeneration equals the generation, then judges the conditions and
    the ReplicaSet of the revision that status names. A status for the new generation that
    still describes the old rollout (what a stale watch event shows it) makes it declare
    the update done at once. Here that status is made deterministic: the bed's
    controller-manager is paused while the update is applied, the status is written as
    that stale event shows it, and the controller is resumed once Pulumi said done. It then
    rolls out the new template for real: its pod fails with ErrImageNeverPull."""
    key = "rp-stale"
    config = _config(tmp_path, namespace, {})
    name = f"shop-{key}"
    try:
        assert cli("start", "-f", config, "-i", shop, "-k", key, "--timeout", "45").code == 0
        with _controllers_paused(testbed):
            update = spawn_cli(
                "start", "-f", config, "-i", "preview-env.local/missing:1", "-k", key,
                "--timeout", "20", "--keep-on-failure",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            said_done = threading.Event()
            err: list[str] = []

            def read() -> None:
                assert update.stderr is not None
                for line in update.stderr:
                    err.append(line)
                    if f"deployment {namespace}/{name}: done" in line:
                        said_done.set()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()

            def applied() -> bool:
                found = kube.apps.read_namespaced_deployment(name, namespace)
                return bool(found.metadata.generation > found.status.observed_generation)

            assert wait_until(applied, timeout=60), "".join(err)
            generation = kube.apps.read_namespaced_deployment(name, namespace).metadata.generation
            kube.apps.patch_namespaced_deployment_status(
                name, namespace, {"status": {"observedGeneration": generation}}
            )
            # Pulumi's await takes that status for the rollout's end (a provider that is
            # not fooled times out instead: the verdict below holds either way).
            said_done.wait(30)
        assert update.stdout is not None
        out = update.stdout.read()  # stderr is the reader's alone
        assert update.wait(timeout=120) == 1, out + "".join(err)
        reader.join(timeout=10)
        stderr = "".join(err)
        assert "Preview environment is live!" not in out
        assert "ErrImageNeverPull" in stderr, stderr

        result = cli("status", "-k", key, "-o", "json")
        assert result.code == 0, result.stderr
        (env,) = result.json()
        assert env["state"] == "not-ready", env
        assert "ErrImageNeverPull" in env["reason"], env
        current = [p for p in env["pods"] if not p["outdated"]]
        assert [p["image"] for p in current] == ["preview-env.local/missing:1"], env["pods"]
        old = [p for p in env["pods"] if p["outdated"]]
        assert old and all(p["state"] == "ready" for p in old), env["pods"]
    finally:
        assert cli("clean", "-k", key).code == 0


@contextlib.contextmanager
def _controllers_paused(testbed: Testbed) -> Iterator[None]:
    """The bed's kube-controller-manager stopped (SIGSTOP) for the block, then resumed."""
    (manager,) = [p for p in testbed.processes if p.name == "kube-controller-manager"]
    os.kill(manager.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(manager.pid, signal.SIGCONT)


def test_a_host_path_of_the_target_is_not_the_previews(
    cli: Cli, kube: Kube, testbed: Testbed, namespace: str, tmp_path: Path
) -> None:
    """The target writes into a hostPath on the real node; its preview, Ready (so its own
    write succeeded), wrote into an emptyDir: the host directory never sees the preview's
    file. Named in feature.preview.shared_volumes, the same preview writes there."""
    image = os.environ["PREVIEW_ENV_ECHO_IMAGE"]
    host_dir = Path(f"/tmp/preview-env-uploads-{uuid.uuid4().hex[:8]}")
    host_dir.mkdir()
    host_dir.chmod(0o777)  # the echo image runs as nobody
    uploader = {
        "name": "uploader",
        "image": image,
        "imagePullPolicy": "Never",
        "env": [{"name": "ECHO_WRITE", "value": "/uploads/from-target"}],
        "volumeMounts": [{"name": "uploads", "mountPath": "/uploads"}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    }
    target = deployment(
        "uploader",
        namespace,
        [uploader],
        pod={
            **real_node.pod_placement(),
            "terminationGracePeriodSeconds": 1,
            "volumes": [
                {"name": "uploads", "hostPath": {"path": str(host_dir), "type": "Directory"}}
            ],
        },
    )
    try:
        testbed.kubectl("apply", "-f", "-", input_text=json.dumps(target))
        testbed.kubectl(
            "rollout", "status", "deployment/uploader", "-n", namespace, "--timeout=90s"
        )
        assert sorted(p.name for p in host_dir.iterdir()) == ["from-target"]

        def start(key: str, shared: list[str]) -> Any:
            config = tmp_path / f"{key}.json"
            preview: dict[str, Any] = {"creation_timeout_secs": 45}
            if shared:
                preview["shared_volumes"] = shared
            config.write_text(
                json.dumps(
                    {
                        "target": {"path": "deployment/uploader", "namespace": namespace},
                        "feature": {
                            "preview": preview,
                            "env": {"override": {"ECHO_WRITE": f"/uploads/from-{key}"}},
                        },
                    }
                )
            )
            return cli(
                "start", "-f", str(config), "-i", image, "-k", key, "--routing", "none",
                "-o", "json",
            )  # fmt: skip

        key = "rp-hostpath"
        started = start(key, [])
        try:
            assert started.code == 0, started.stderr
            (pod,) = started.json()["pods"]
            assert pod["ready"]
            live = kube.core.read_namespaced_pod(pod["name"], namespace)
            assert live.spec.node_name == real_node.NAME
            (uploads,) = [v for v in live.spec.volumes if v.name == "uploads"]
            assert uploads.host_path is None and uploads.empty_dir is not None
            assert any(
                c.startswith(f"volume uploads: hostPath {host_dir} replaced by an emptyDir")
                for c in started.json()["changes"]
            ), started.json()["changes"]
            got = cli("logs", "-k", key)
            assert f"echo: wrote /uploads/from-{key}" in got.stdout, got.stdout + got.stderr
            assert sorted(p.name for p in host_dir.iterdir()) == ["from-target"]  # untouched
        finally:
            assert cli("clean", "-k", key).code == 0

        key = "rp-hostpath-shared"
        started = start(key, ["uploads"])
        try:
            assert started.code == 0, started.stderr
            assert "is shared with deployment/uploader" in started.stderr
            assert sorted(p.name for p in host_dir.iterdir()) == [
                "from-rp-hostpath-shared",
                "from-target",
            ]
        finally:
            assert cli("clean", "-k", key).code == 0
    finally:
        testbed.kubectl("delete", "deployment", "uploader", "-n", namespace, "--wait=true")
        for leftover in host_dir.iterdir():
            leftover.unlink()
        host_dir.rmdir()


def test_logs_name_a_pod_whose_kubelet_cannot_be_reached_and_print_the_others(
    cli: Cli, kube: Kube, testbed: Testbed, namespace: str, tmp_path: Path, shop: str
) -> None:
    """Issue 21 item 8: one environment, a pod on the real node and one on a kwok node,
    whose kubelet API nobody serves (the API server answers 500): `logs` prints the real
    pod's lines, one line naming the other pod, the status and the API server's message,
    and exits 1, without a traceback."""
    ghost = deployment(
        "ghost",
        namespace,
        [{"name": "ghost", "image": "ghost:1"}],
        replicas=0,
        pod={"nodeSelector": {real_node.LABEL: "kwok"}},
    )
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(ghost))
    key = "rp-logs-ghost"
    config = _config(tmp_path, namespace, {})
    try:
        real = cli("start", "-f", config, "-i", shop, "-k", key, "--routing", "none", "-o", "json")
        assert real.code == 0, real.stderr
        (pod,) = real.json()["pods"]
        kwok = cli(
            "start", "-t", "deployment/ghost", "-n", namespace, "-i", "ghost:pr", "-k", key,
            "--routing", "none", "-o", "json",
        )  # fmt: skip
        assert kwok.code == 0, kwok.stderr
        (ghost_pod,) = [p for p in kwok.json()["pods"] if p["target"] == "deployment/ghost"]
        got = cli("logs", "-k", key)
        assert got.code == 1, (got.stdout, got.stderr)
        assert "Traceback" not in got.stderr, got.stderr
        (line,) = got.stderr.strip().splitlines()
        assert line.startswith(
            f"error: cannot read the logs of pod {namespace}/{ghost_pod['name']} "
            "(container ghost): HTTP 500"
        ), line
        assert f"[{pod['name']}/shop] echo: {pod['name']} listening on :8080" in got.stdout
        followed = cli("logs", "-k", key, "-t", "deployment/ghost", "-f")
        assert followed.code == 1 and "Traceback" not in followed.stderr, followed.stderr
        (followed_line,) = followed.stderr.strip().splitlines()
        assert followed_line.startswith(line.split(": HTTP 500")[0] + ": HTTP 500"), followed_line
    finally:
        assert cli("clean", "-k", key).code == 0
