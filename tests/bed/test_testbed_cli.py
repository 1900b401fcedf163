"""`python -m testbed up|down` (what `make testbed-up/down` run) in a shell's terms."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed import locate
from testbed import node as real_node
from testbed.images import build_all
from tests.support.bed import gone, testbed_cli

pytestmark = pytest.mark.cluster


def listeners(pids: set[int]) -> list[str]:
    """Local addresses that these processes listen on (TCP)."""
    if shutil.which("ss") is None:
        pytest.fail("ss (iproute2) is needed to check listeners")
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.append(line.split()[3])
    return found


def test_up_env_file_and_down(tmp_path: Path, testbed: object) -> None:
    state = tmp_path / "bed"
    up = testbed_cli("up", "--state", str(state), timeout=300)
    assert up.returncode == 0, up.stderr
    pids = {p["pid"] for p in json.loads((state / "pids.json").read_text())}
    try:
        # kine, apiserver, controller-manager, scheduler, kwok; relay, containerd, kubelet,
        # kube-proxy (these three listen inside the node's namespace only).
        assert len(pids) == 9
        addresses = listeners(pids)
        assert addresses, "the control plane listens somewhere"
        assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
        shell = (
            f"source {state}/env && kubectl get nodes --no-headers && pulumi version && "
            "echo BACKEND=$PULUMI_BACKEND_URL"
        )
        out = subprocess.run(
            ["bash", "-c", shell],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
            check=False,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.count(" Ready ") == 3
        assert locate().pulumi_version in out.stdout
        assert f"BACKEND=file://{state}/state" in out.stdout
        _run_a_real_pod(state)  # so that down has shims, mounts and a pod netns to remove
        assert real_node.shim_pids(state)
        assert real_node.mounts_under(state)
    finally:
        down = testbed_cli("down", "--state", str(state), timeout=120)
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    assert all(gone(pid) for pid in pids), pids
    netns = real_node.Paths.of(state)
    assert real_node.shim_pids(state) == []
    assert real_node.mounts_under(state) == []
    assert not netns.netns.exists(), "the node's network namespace (bridge, iptables) is left"
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True)
    assert real_node.BRIDGE not in links.stdout
    assert not [
        link
        for link in Path("/var/log/containers").glob("*.log")
        if str(state) in os.readlink(link)
    ]


def _run_a_real_pod(state: Path) -> None:
    image = build_all()["echo"].name  # cached: the name `up` imported
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {
            **real_node.pod_placement(),
            "containers": [{"name": "echo", "image": image, "imagePullPolicy": "Never"}],
        },
    }
    kubectl = [str(locate().kubectl), "--kubeconfig", str(state / "kubeconfig")]
    subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(pod), text=True, check=True)
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Ready", "pod/echo", "--timeout=90s"], check=True
    )
