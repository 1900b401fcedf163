"""One real node beside the kwok ones: containerd + runc + bridge CNI + kubelet + kube-proxy.

Everything of the node lives in `<bed state>/node` and in one network namespace named after
the state directory (see testbed.netns for why). The node is the same Kubernetes build as
the control plane; its images are the bed's own (testbed.images), imported into its
containerd, so pods use `imagePullPolicy: Never` or `IfNotPresent`.

How tests choose it: the node carries the label `preview-env.dev/node=real` and the taint
`preview-env.dev/real-node=true:NoSchedule`, so nothing lands there unless it says so (a
toleration plus a nodeSelector, see `pod_placement`); kwok nodes carry
`preview-env.dev/node=kwok`.

The API server dials a node's InternalIP, which a kubelet refuses to set to loopback
itself; so the kubelet runs with `--cloud-provider=external` and the bed, playing the cloud
controller, sets the address to 127.0.0.1 (where the relay forwards the kubelet's port).

`cleanup(state_dir)` works from the state directory alone (`make testbed-down` runs in
another process): it deletes every task through containerd, falls back to runc and to the
shims' PIDs, unmounts what is mounted under the state directory and deletes the namespace,
which takes the bridge, the pods' interfaces and kube-proxy's iptables rules with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from testbed.certs import KeyPair, Pki, kubeconfig_yaml
from testbed.images import Image
from testbed.netns import socket_in

NAME = "real-node-0"
LABEL = "preview-env.dev/node"
TAINT = "preview-env.dev/real-node"
POD_CIDR = "10.88.0.0/16"
GATEWAY = "10.88.0.1"
SERVICE_CIDR = "10.96.0.0/16"  # the API server's --service-cluster-ip-range
BRIDGE = "pe-br0"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CNI_BIN = Path("/usr/lib/cni")
_MNT_DETACH = 2


def pod_placement() -> dict[str, object]:
    """Pod spec fields that put a pod on the real node (merge into `spec`)."""
    return {
        "nodeSelector": {LABEL: "real"},
        "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
    }


class Bed(Protocol):
    """What the node needs from the Testbed that starts it."""

    state_dir: Path
    apiserver_port: int

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None: ...
    def _wait(self, name: str, deadline: float, ready: Callable[[], bool]) -> None: ...
    def kubectl(self, *args: str, input_text: str | None = None) -> str: ...


@dataclass(frozen=True)
class Paths:
    """Where the node keeps its state, derived from the bed's state directory only."""

    root: Path
    netns_name: str

    @classmethod
    def of(cls, state_dir: Path) -> Paths:
        digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
        return cls(state_dir.resolve() / "node", f"preview-env-{digest}")

    @property
    def netns(self) -> Path:
        return Path("/run/netns") / self.netns_name

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.root / "runc"


def start(
    bed: Bed,
    pki: Pki,
    images: dict[str, Image],
    deadline: float,
    *,
    kubelet: Path,
    kube_proxy: Path,
    python: str,
    free_port: Callable[[], int],
) -> None:
    """Start the node's processes through `bed` and wait until the Node is Ready."""
    paths = Paths.of(bed.state_dir)
    for d in ("containerd", "cni", "kubelet", "kube-proxy", "pod-logs", "ipam"):
        (paths.root / d).mkdir(parents=True, exist_ok=True)
    _network(paths)
    kubelet_port = free_port()
    relay = [python, "-m", "testbed.netns", f"--netns={paths.netns}"]
    # The API server also on the gateway: the `kubernetes` Service's endpoint for pods.
    relay += [f"--in={bed.apiserver_port}", f"--out={kubelet_port}", f"--bind={GATEWAY}"]
    bed._spawn(
        "node-relay",
        relay,
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    bed._wait("node-relay", deadline, lambda: _connectable(kubelet_port))
    _containerd(bed, paths, images, deadline)
    server = f"https://127.0.0.1:{bed.apiserver_port}"  # the relay's end in the namespace
    _kubelet(bed, paths, pki, server, kubelet, kubelet_port)
    proxy_client = pki.issue("kube-proxy", "system:kube-proxy")
    kubeconfig = paths.root / "kube-proxy" / "kubeconfig"
    kubeconfig.write_text(_kubeconfig(server, pki.ca.cert, proxy_client))
    proxy_conf = paths.root / "kube-proxy" / "config.json"
    proxy_conf.write_text(json.dumps(_kube_proxy_config(kubeconfig)))
    bed._spawn("kube-proxy", _nsenter(paths, [str(kube_proxy), f"--config={proxy_conf}"]), _env())
    _initialize(bed, deadline)
    _kubernetes_endpoint(bed)


def _kubernetes_endpoint(bed: Bed) -> None:
    """Give the `kubernetes` Service (10.96.0.1:443, in the serving certificate) the relay's
    end on the bridge gateway as its endpoint, so pods use the in-cluster configuration
    through kube-proxy. The API server keeps no endpoints itself here
    (--endpoint-reconciler-type=none: it advertises 127.0.0.1, which pods cannot reach)."""
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "testbed.preview-env.dev",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [GATEWAY], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": bed.apiserver_port, "protocol": "TCP"}],
    }
    bed.kubectl("apply", "-f", "-", input_text=json.dumps(slice_))


def relay_to_pods(bed: Bed, port: int, deadline: float) -> str:
    """Carry host 127.0.0.1:`port` (a shared backend) to the bridge gateway, where pods on
    the real node reach it; returns that `host:port`. One relay process per port, stopped
    with the bed."""
    paths = Paths.of(bed.state_dir)
    argv = [sys.executable, "-m", "testbed.netns", f"--netns={paths.netns}"]
    argv += [f"--in={port}", f"--bind={GATEWAY}"]
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    bed._spawn(f"relay-{port}", argv, env=env)
    bed._wait(f"relay-{port}", deadline, lambda: _connectable_in(paths.netns, GATEWAY, port))
    return f"{GATEWAY}:{port}"


def import_image(state_dir: Path, image: Image) -> None:
    """Import an image built after the node started (testbed.images.reaper) into it."""
    _ctr(Paths.of(state_dir), "images", "import", str(image.archive))


def _network(paths: Paths) -> None:
    _run(["ip", "netns", "add", paths.netns_name])
    _in_netns(paths, ["ip", "link", "set", "lo", "up"])
    # The CNI bridge made in advance (the plugin adopts it), so the Service range can be
    # routed to it before the first pod: a process in the namespace then reaches
    # ClusterIPs, which kube-proxy's OUTPUT rules translate to pod addresses.
    _in_netns(paths, ["ip", "link", "add", BRIDGE, "type", "bridge"])
    _in_netns(paths, ["ip", "addr", "add", f"{GATEWAY}/16", "dev", BRIDGE])
    _in_netns(paths, ["ip", "link", "set", BRIDGE, "up"])
    _in_netns(paths, ["ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE])
    # Pod to Service to pod on the same bridge needs bridged traffic to see iptables.
    _in_netns(paths, ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"])
    (paths.root / "cni" / "10-preview-env.conflist").write_text(json.dumps(_cni_config(paths)))


def _containerd(bed: Bed, paths: Paths, images: dict[str, Image], deadline: float) -> None:
    config = paths.root / "containerd.toml"
    config.write_text(_containerd_config(paths, images["pause"].name))
    bed._spawn("containerd", _nsenter(paths, ["containerd", f"--config={config}"]), _env())
    bed._wait("containerd", deadline, lambda: _ctr_ok(paths))
    for image in images.values():
        _ctr(paths, "images", "import", str(image.archive))


def _kubelet(bed: Bed, paths: Paths, pki: Pki, server: str, kubelet: Path, port: int) -> None:
    client = pki.issue("kubelet-client", f"system:node:{NAME}", groups=("system:nodes",))
    serving = pki.issue("kubelet-serving", NAME, server=True, hosts=("127.0.0.1", NAME))
    root = paths.root / "kubelet"
    (root / "config.json").write_text(
        json.dumps(_kubelet_config(paths, port, pki.ca.cert, serving), indent=1)
    )
    (root / "kubeconfig").write_text(_kubeconfig(server, pki.ca.cert, client))
    argv = [
        str(kubelet),
        f"--config={root / 'config.json'}",
        f"--kubeconfig={root / 'kubeconfig'}",
        f"--root-dir={root}",
        f"--hostname-override={NAME}",
        "--cloud-provider=external",  # see the module docstring: the bed sets the address
        f"--node-labels={LABEL}=real",
    ]
    bed._spawn("kubelet", _nsenter(paths, argv), _env())


def _initialize(bed: Bed, deadline: float) -> None:
    """The cloud controller's part: the address the API server dials; then lift the taints
    that wait for it and for the (absent) node lifecycle controller."""
    bed._wait(f"node {NAME} registered", deadline, lambda: _node_exists(bed))
    addresses = [
        {"type": "InternalIP", "address": "127.0.0.1"},
        {"type": "Hostname", "address": NAME},
    ]
    patch = json.dumps({"status": {"addresses": addresses}})
    bed.kubectl("patch", "node", NAME, "--subresource=status", "--type=merge", "-p", patch)
    with contextlib.suppress(RuntimeError):
        bed.kubectl("taint", "nodes", NAME, "node.cloudprovider.kubernetes.io/uninitialized-")
    remaining = max(5, int(deadline - time.monotonic()))
    bed.kubectl("wait", "--for=condition=Ready", "node", NAME, f"--timeout={remaining}s")
    with contextlib.suppress(RuntimeError):
        bed.kubectl("taint", "nodes", NAME, "node.kubernetes.io/not-ready:NoSchedule-")


def http_get(
    netns: Path, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """GET `url` from inside the node's network namespace (pod and ClusterIP addresses)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket_in(netns)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))

    conn = Connection(host, port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def stop_containers(state_dir: Path) -> None:
    """Kill and delete every task through containerd, so shims exit and unmount."""
    paths = Paths.of(state_dir)
    if not paths.socket.exists():
        return
    for line in _ctr(paths, "tasks", "ls", "-q", check=False).splitlines():
        _ctr(paths, "tasks", "delete", "--force", line.strip(), check=False)


def cleanup(state_dir: Path) -> None:
    """Remove what the node leaves outside its processes (after they were stopped)."""
    paths = Paths.of(state_dir)
    if not paths.root.exists() and not paths.netns.exists():
        return  # a bed without a real node
    if paths.runc_root.exists():  # containerd gone before it deleted its tasks
        for ns_root in paths.runc_root.iterdir():
            ids = _run(["runc", f"--root={ns_root}", "list", "-q"], check=False).split()
            for cid in ids:
                _run(["runc", f"--root={ns_root}", "delete", "--force", cid], check=False)
    for pid in shim_pids(state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    unmount_all(state_dir)
    if paths.netns.exists():
        _run(["ip", "netns", "delete", paths.netns_name], check=False)
    _forget_host_traces(state_dir)
    # runc removed each container's cgroup; containerd's parent stays. Remove it when
    # empty only: another bed on this machine may have containers in it right now.
    for parent in Path("/sys/fs/cgroup").glob("*/k8s.io"):
        with contextlib.suppress(OSError):
            parent.rmdir()


def _forget_host_traces(state_dir: Path) -> None:
    """What the kubelet and CNI keep at fixed host paths whatever their configuration:
    log symlinks, CNI result caches, the device-plugin socket."""
    base = str(state_dir.resolve()) + "/"
    for link in Path("/var/log/containers").glob("*.log"):
        with contextlib.suppress(OSError):
            if os.readlink(link).startswith(base):
                link.unlink()
    cri = Paths.of(state_dir).root / "containerd"
    ids = {d.name for d in cri.glob("*/io.containerd.grpc.v1.cri/sandboxes/*")}
    for cached in Path("/var/lib/cni/results").glob("*"):
        if any(f"-{sid}-" in cached.name for sid in ids):
            cached.unlink(missing_ok=True)
    if not _other_kubelets():  # the socket path is shared by every kubelet on the machine
        plugins = Path("/var/lib/kubelet/device-plugins")
        (plugins / "kubelet.sock").unlink(missing_ok=True)
        for empty in (plugins, plugins.parent):
            with contextlib.suppress(OSError):
                empty.rmdir()


def _other_kubelets() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "kubelet":
                return True
    return False


def shim_pids(state_dir: Path) -> list[int]:
    """containerd-shim-runc-v2 processes serving this bed's containerd."""
    address = str(Paths.of(state_dir).socket)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and address.encode() in argv:
            found.append(int(proc.name))
    return found


def mounts_under(state_dir: Path) -> list[Path]:
    """Mount points at or below `state_dir`, deepest first."""
    base = str(state_dir.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == base or point.startswith(base + "/"):
            points.append(Path(point))
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def unmount_all(state_dir: Path) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for _ in range(5):  # a bind mount can hide another one below it
        points = mounts_under(state_dir)
        if not points:
            return
        for point in points:
            libc.umount2(str(point).encode(), _MNT_DETACH)


# ------------------------------------------------------------------ configurations
def _containerd_config(paths: Paths, pause_image: str) -> str:
    root = paths.root
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root / "containerd" / "root"}"
state = "{root / "containerd" / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{paths.socket}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "containerd" / "opt"}"
[{cri}]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  BinaryName = "runc"
  Root = "{paths.runc_root}"
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{root / "cni"}"
"""


def _cni_config(paths: Paths) -> dict[str, object]:
    return {
        "cniVersion": "0.4.0",
        "name": "preview-env",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # nothing leaves the namespace
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.root / "ipam"),
                },
            }
        ],
    }


def _kubelet_config(paths: Paths, port: int, ca: Path, serving: KeyPair) -> dict[str, object]:
    resolv = paths.root / "resolv.conf"
    resolv.write_text("")
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        # Only the API server's client certificate (or an admin's) gets past x509 above.
        "authorization": {"mode": "AlwaysAllow"},
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "podLogsDir": str(paths.root / "pod-logs"),
        "resolvConf": str(resolv),
        # cgroup v1 (hybrid) inside a container, no systemd, swap possibly on.
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "failCgroupV1": False,
        # The machine's disk is not the node's business: never evict, never GC images.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1Mi",
            "imagefs.available": "1Mi",
            "nodefs.inodesFree": "1",
        },
        "registerWithTaints": [{"key": TAINT, "value": "true", "effect": "NoSchedule"}],
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "0s",
        "localStorageCapacityIsolation": False,
    }


def _kube_proxy_config(kubeconfig: Path) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NAME,
        "clusterCIDR": POD_CIDR,
        "bindAddress": "127.0.0.1",
        "nodePortAddresses": [POD_CIDR],
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # conntrack tables are the machine's: leave their limits alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def _kubeconfig(server: str, ca: Path, client: KeyPair) -> str:
    return kubeconfig_yaml(server, ca, "node", client)


# ------------------------------------------------------------------------- helpers
def _nsenter(paths: Paths, argv: list[str]) -> list[str]:
    """Enter the node's network namespace only: mounts stay shared with the host, so
    containerd sees the kubelet's volume mounts and the bed can unmount them."""
    return ["nsenter", f"--net={paths.netns}", "--", *argv]


def _in_netns(paths: Paths, argv: list[str]) -> None:
    _run(_nsenter(paths, argv))


def _ctr(paths: Paths, *args: str, check: bool = True) -> str:
    return _run(["ctr", f"--address={paths.socket}", "--namespace=k8s.io", *args], check=check)


def _ctr_ok(paths: Paths) -> bool:
    if not paths.socket.exists():
        return False
    try:
        _ctr(paths, "version")
    except RuntimeError:
        return False
    return True


def _node_exists(bed: Bed) -> bool:
    try:
        bed.kubectl("get", "node", NAME)
    except RuntimeError:
        return False
    return True


def _connectable_in(netns: Path, host: str, port: int) -> bool:
    with socket_in(netns) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _connectable(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _path() -> str:
    return SYSTEM_PATH + os.pathsep + os.environ.get("PATH", "")


def _env() -> dict[str, str]:
    """For the node's processes: runc, the shim, iptables and conntrack live in sbin dirs."""
    return {"PATH": _path()}


def _run(argv: list[str], *, check: bool = True) -> str:
    env = {**os.environ, "PATH": _path()}
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()[-1500:]}")
    return result.stdout


def _unescape(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
