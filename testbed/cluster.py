"""A loopback Kubernetes control plane for tests: kine, kube-apiserver, controller-manager,
scheduler and kwok, each a child process recorded by PID in one state directory, plus one
real node (testbed.node: containerd, kubelet, kube-proxy) unless PREVIEW_ENV_REAL_NODE=0,
and on that node, when asked (`gateway=True`), a Gateway API data plane (testbed.gateway);
when asked (`brokers=True` or `start_brokers()`), RabbitMQ and Kafka (testbed.brokers).

One implementation serves the pytest session fixture and `make testbed-up/down`. Every
listener binds 127.0.0.1 on a port picked free; logs stay in `<state>/logs`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from testbed import brokers as broker_processes
from testbed import gateway, node
from testbed.certs import Pki, kubeconfig_yaml
from testbed.images import Image, build_all, traefik
from testbed.toolchain import Toolchain

LOOPBACK = "127.0.0.1"
FAKE_NODES = ("kwok-node-0", "kwok-node-1")
# Components the controller-manager runs: what Deployments, Services, namespaces and
# Pulumi's foreground deletes need, plus jobs/cronjobs for the reaper's manifests.
CONTROLLERS = (
    "garbage-collector-controller,namespace-controller,deployment-controller,endpoints-controller,"
    "replicaset-controller,statefulset-controller,endpointslice-controller,"
    "endpointslice-mirroring-controller,serviceaccount-controller,"
    "root-ca-certificate-publisher-controller,job-controller,cronjob-controller,"
    # Claims bind to volumes (no provisioner: static ones) and are freed once unused.
    "persistentvolume-binder-controller,persistentvolume-protection-controller,"
    "persistentvolumeclaim-protection-controller,"
    "clusterrole-aggregation-controller"  # fills the built-in admin/edit/view roles
)
# The default StorageClass: Kubernetes' in-tree hostPath provisioner (run by the
# persistentvolume-binder controller with --enable-hostpath-provisioner) makes a directory
# under /tmp/hostpath_pv/ per claim, as a cluster's default class would make a disk; the
# real node mounts it, kwok's pods pretend to.
STORAGE_CLASS = "standard"
PROVISIONED_UNDER = "/tmp/hostpath_pv/"
_STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {
        "name": STORAGE_CLASS,
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    },
    "provisioner": "kubernetes.io/host-path",
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}
_PR_SET_PDEATHSIG = 1


class TestbedError(RuntimeError):
    """The control plane did not come up; the message names the component and its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL the child when the test process dies (kill -9 included)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Process:
    name: str
    argv: list[str]
    log: Path
    pid: int = 0
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
            # A bed started by another process (make testbed-up) is reparented to init; a
            # zombie that init has not reaped yet has exited all the same.
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def log_tail(self, lines: int = 12, width: int = 300) -> str:
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
            return "\n".join(line[:width] for line in tail)
        except OSError:
            return "(no log)"


class Testbed:
    """The control plane in `state_dir`. `start()` waits until it is healthy."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        state_dir: Path,
        toolchain: Toolchain,
        *,
        detached: bool = False,
        real_node: bool | None = None,
        gateway: bool = False,
        brokers: bool = False,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.toolchain = toolchain
        self.detached = detached  # survive the starting process (make testbed-up)
        if real_node is None:
            real_node = os.environ.get("PREVIEW_ENV_REAL_NODE", "1") not in {"0", "false", "no"}
        self.real_node = real_node
        self.gateway = gateway and real_node  # Traefik runs on the real node
        self.gateway_port = 0  # host 127.0.0.1 port of the Gateway's listener, once up
        self.with_brokers = brokers  # RabbitMQ and Kafka at start (or start_brokers() later)
        self.brokers: broker_processes.Brokers | None = None  # where they listen, once up
        self.images: dict[str, Image] = {}  # short name -> image imported into the real node
        self.processes: list[Process] = []
        self.pki_dir = self.state_dir / "pki"
        self.logs = self.state_dir / "logs"
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.pulumi_state = self.state_dir / "state"
        self.pulumi_home = self.state_dir / "pulumi-home"
        self.apiserver_port = 0
        self._pki: Pki | None = None

    # ------------------------------------------------------------------ public API
    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.apiserver_port}"

    def environment(self) -> dict[str, str]:
        """Variables a shell or a test needs to reach this cluster and run pulumi offline."""
        path = os.pathsep.join(str(p) for p in self.toolchain.path_dirs)
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{path}{os.pathsep}{os.environ.get('PATH', '')}",
            "PULUMI_BACKEND_URL": f"file://{self.pulumi_state}",
            "PULUMI_CONFIG_PASSPHRASE": "testbed",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_HOME": str(self.pulumi_home),
            **{f"PREVIEW_ENV_{k.upper()}_IMAGE": image.name for k, image in self.images.items()},
            **(
                {"PREVIEW_ENV_NODE_NETNS": node.Paths.of(self.state_dir).netns_name}
                if self.real_node
                else {}
            ),
            **(gateway.environment(self.gateway_port) if self.gateway_port else {}),
            **(self.brokers.environment() if self.brokers else {}),
        }

    @property
    def node_netns(self) -> Path:
        """The real node's network namespace (pod and Service addresses live there)."""
        return node.Paths.of(self.state_dir).netns

    def start(self, *, timeout: float = 120.0) -> None:
        if self.state_dir.exists():
            node.cleanup(self.state_dir)  # a previous bed's mounts must go before rmtree
            shutil.rmtree(self.state_dir)
        for d in (self.pki_dir, self.logs, self.pulumi_state, self.pulumi_home):
            d.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            self._start_all(deadline)
        except BaseException:
            self.stop(keep_state=True)
            raise

    def start_brokers(self, *, timeout: float = 90.0) -> broker_processes.Brokers:
        """RabbitMQ and Kafka as processes of this (running) bed, once (testbed.brokers);
        `environment()` and `<state>/env` then name them."""
        if self.brokers is None:
            try:
                self.brokers = broker_processes.start(
                    self,
                    self.toolchain.kafka_libs,
                    time.monotonic() + timeout,
                    real_node=self.real_node,
                    free_port=free_port,
                )
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                raise TestbedError(
                    f"the brokers did not come up: {exc}\nlogs:\n{self.logs_summary()}"
                ) from exc
            self._write_env_file()
        return self.brokers

    def stop(self, *, keep_state: bool = False) -> None:
        """SIGTERM every process by PID (reverse start order), SIGKILL stragglers."""
        pid_file = self.state_dir / "pids.json"
        if not self.processes and pid_file.exists():
            # Another process started this bed (make testbed-up): its PIDs are on record.
            # A bed we started ourselves is stopped through its Popen handles only, so a
            # reaped PID that the system has reused is never signalled.
            self.processes = [
                Process(entry["name"], [], Path(entry["log"]), pid=entry["pid"])
                for entry in json.loads(pid_file.read_text())
            ]
        provisioned = self._provisioned_paths()
        for proc in reversed(self.processes):
            if proc.name == "containerd" and proc.alive():
                node.stop_containers(self.state_dir)  # kubelet is stopped by now
            # SeaweedFS ignores SIGTERM for long seconds, RabbitMQ's orderly stop takes
            # about 7 s; their data is throwaway.
            grace = {"seaweedfs": 1.0, **broker_processes.STOP_GRACE}.get(proc.name, 10.0)
            _terminate(proc, grace=grace)
        self.processes.clear()
        self.brokers = None
        pid_file.unlink(missing_ok=True)
        node.cleanup(self.state_dir)
        for path in provisioned:  # what the hostPath provisioner made for this bed's claims
            shutil.rmtree(path, ignore_errors=True)
        if not keep_state and self.state_dir.exists():
            if node.mounts_under(self.state_dir):  # never delete through a live mount
                raise TestbedError(f"mounts left under {self.state_dir}; not removing it")
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _provisioned_paths(self) -> list[Path]:
        """The directories of the volumes provisioned for this bed's claims (its API server
        still up), to remove once nothing mounts them."""
        if not self.kubeconfig.exists():
            return []
        try:
            volumes = json.loads(self.kubectl("get", "pv", "-o", "json", "--request-timeout=5s"))
        except (TestbedError, ValueError):
            return []
        paths = [str((v["spec"].get("hostPath") or {}).get("path", "")) for v in volumes["items"]]
        return [Path(p) for p in paths if p.startswith(PROVISIONED_UNDER)]

    def user_kubeconfig(self, user: str, *, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for a restricted user (RBAC applies; no rights until bound)."""
        assert self._pki is not None, "start() first"
        pair = self._pki.issue(f"user-{user}", user, groups=groups)
        path = self.state_dir / f"kubeconfig-{user}"
        path.write_text(kubeconfig_yaml(self.server, self._pki.ca.cert, user, pair))
        return path

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        result = subprocess.run(
            [str(self.toolchain.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise TestbedError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def logs_summary(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log})\n{p.log_tail()}" for p in self.processes)

    # --------------------------------------------------------------- the start-up
    def _start_all(self, deadline: float) -> None:
        tc = self.toolchain
        pki = self._pki = Pki(self.pki_dir)
        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            hosts=(
                LOOPBACK,
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        admin = pki.issue("admin", "testbed-admin", groups=("system:masters",))
        kubelet_client = pki.issue(
            "apiserver-kubelet-client", "kube-apiserver", groups=("system:masters",)
        )
        sa = pki.service_account_keys()

        kine_port = free_port()
        self._spawn(
            "kine",
            [
                str(tc.kine),
                f"--listen-address={LOOPBACK}:{kine_port}",
                "--metrics-bind-address=0",
                # No --endpoint: sqlite at <state>/db/state.db with the driver's own settings
                # (a mattn-style "?_journal=WAL&cache=shared" deadlocks the modernc driver).
            ],
        )
        self._wait("kine", deadline, lambda: _tcp_open(kine_port))

        self.apiserver_port = free_port()
        self._spawn(
            "kube-apiserver",
            [
                str(tc.kube_apiserver),
                f"--etcd-servers=http://{LOOPBACK}:{kine_port}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=Node,RBAC",  # Node: the real kubelet's own rights
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={node.SERVICE_CIDR}",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--watch-cache=true",
                # logs/exec: dial the node's InternalIP (127.0.0.1 for every node here)
                # with a client certificate the real kubelet accepts.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        self._wait("kube-apiserver", deadline, lambda: _https_ok(f"{self.server}/readyz", ctx))
        self.kubeconfig.write_text(
            kubeconfig_yaml(self.server, pki.ca.cert, "testbed-admin", admin)
        )

        kcm_port, sched_port, kwok_port = free_port(), free_port(), free_port()
        self._spawn(
            "kube-controller-manager",
            [
                str(tc.kube_controller_manager),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.state_dir / 'kcm-certs'}",
                "--leader-elect=false",
                f"--controllers={CONTROLLERS}",
                "--enable-hostpath-provisioner",
                f"--root-ca-file={pki.ca.cert}",
                f"--service-account-private-key-file={sa.key}",
                "--concurrent-gc-syncs=5",
                "--profiling=false",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(tc.kube_scheduler),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={sched_port}",
                f"--cert-dir={self.state_dir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        stages = [
            tc.kwok_stages / "node" / "fast" / "node-initialize.yaml",
            tc.kwok_stages / "node" / "heartbeat" / "node-heartbeat.yaml",
            tc.kwok_stages / "pod" / "fast" / "pod-ready.yaml",
            tc.kwok_stages / "pod" / "fast" / "pod-complete.yaml",
            tc.kwok_stages / "pod" / "fast" / "pod-delete.yaml",
        ]
        self._spawn(
            "kwok",
            [
                str(tc.kwok),
                f"--kubeconfig={self.kubeconfig}",
                *[f"--config={s}" for s in stages],
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--server-address={LOOPBACK}:{kwok_port}",
                "--cidr=10.244.0.1/16",
                f"--node-ip={LOOPBACK}",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(
            "kube-controller-manager",
            deadline,
            lambda: _https_ok(f"https://{LOOPBACK}:{kcm_port}/healthz", insecure),
        )
        self._wait(
            "kube-scheduler",
            deadline,
            lambda: _https_ok(f"https://{LOOPBACK}:{sched_port}/healthz", insecure),
        )
        self._wait("kwok", deadline, lambda: _http_ok(f"http://{LOOPBACK}:{kwok_port}/healthz"))

        self.kubectl("apply", "-f", "-", input_text=json.dumps(_fake_nodes()))
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(tc.crds))
        self.kubectl("apply", "-f", "-", input_text=json.dumps(_STORAGE_CLASS))
        remaining = max(5, int(deadline - time.monotonic()))
        self.kubectl(
            "wait", "--for=condition=Ready", "node", *FAKE_NODES, f"--timeout={remaining}s"
        )
        # The API server taints new Nodes not-ready; the node lifecycle controller (not run
        # here: kwok's fake heartbeats do not renew leases) would lift it once Ready.
        for fake in FAKE_NODES:
            with contextlib.suppress(TestbedError):
                self.kubectl("taint", "nodes", fake, "node.kubernetes.io/not-ready:NoSchedule-")
        self.kubectl(
            "wait", "--for=condition=Established", "crd", "--all", f"--timeout={remaining}s"
        )
        self._wait("default service account", deadline, self._default_sa_exists)
        if self.real_node:
            self._start_real_node(pki, deadline)
        if self.gateway:
            self._start_gateway(deadline)
        if self.with_brokers:
            self.start_brokers(timeout=max(30.0, deadline - time.monotonic()))
        self._write_env_file()

    def _start_real_node(self, pki: Pki, deadline: float) -> None:
        tc = self.toolchain
        try:
            self.images = build_all()
            node.start(
                self,
                pki,
                self.images,
                deadline,
                kubelet=tc.kubelet,
                kube_proxy=tc.kube_proxy,
                python=sys.executable,
                free_port=free_port,
            )
        except (RuntimeError, OSError) as exc:  # TestbedError (a RuntimeError) included
            raise TestbedError(
                f"the real node did not come up (it needs root, containerd, runc and the CNI"
                f" plugins: scripts/toolchain/system-packages.sh): {exc}\n"
                f"logs:\n{self.logs_summary()}"
            ) from exc

    def _start_gateway(self, deadline: float) -> None:
        image = traefik(self.toolchain.traefik)
        node.import_image(self.state_dir, image)
        self.images["traefik"] = image
        port = free_port()
        try:
            gateway.start(self, image, port, deadline)
        except TestbedError as exc:
            raise TestbedError(f"the Gateway did not come up: {exc}") from exc
        self.gateway_port = port

    def _default_sa_exists(self) -> bool:
        try:
            self.kubectl("get", "serviceaccount", "default", "-n", "default")
        except TestbedError:
            return False
        return True

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.state_dir,
                start_new_session=True,
                preexec_fn=None if self.detached else _die_with_parent,
                env=None if env is None else {**os.environ, **env},
            )
        proc = Process(name, argv, log, pid=popen.pid, popen=popen)
        self.processes.append(proc)
        (self.state_dir / "pids.json").write_text(
            json.dumps([{"name": p.name, "pid": p.pid, "log": str(p.log)} for p in self.processes])
        )

    def _wait(self, name: str, deadline: float, ready: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            for proc in self.processes:
                if not proc.alive():
                    raise TestbedError(
                        f"{proc.name} exited while waiting for {name}; log {proc.log}:\n"
                        f"{proc.log_tail()}"
                    )
            if ready():
                return
            time.sleep(0.2)
        raise TestbedError(f"{name} not healthy in time; logs:\n{self.logs_summary()}")

    def _write_env_file(self) -> None:
        lines = [
            f"export {k}={_shell_quote(v)}" for k, v in self.environment().items() if k != "PATH"
        ]
        path = os.pathsep.join(str(p) for p in self.toolchain.path_dirs)
        lines.append(f'export PATH={_shell_quote(path)}:"$PATH"')
        (self.state_dir / "env").write_text("\n".join(lines) + "\n")


def _fake_nodes() -> Mapping[str, object]:
    items = []
    for index, name in enumerate(FAKE_NODES):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {
                        "kwok.x-k8s.io/node": "fake",
                        "node.alpha.kubernetes.io/ttl": "0",
                    },
                    "labels": {
                        "type": "kwok",
                        node.LABEL: "kwok",
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        # One zone per node: zone spread constraints mean something here.
                        "topology.kubernetes.io/zone": f"zone-{index}",
                    },
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                },
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _terminate(proc: Process, grace: float = 10.0) -> None:
    if not proc.alive():
        if proc.popen is not None:
            proc.popen.wait()
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if proc.popen is not None:
            if proc.popen.poll() is not None:
                return
        elif not proc.alive():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    if proc.popen is not None:
        proc.popen.wait()


def _tcp_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _https_ok(url: str, ctx: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
