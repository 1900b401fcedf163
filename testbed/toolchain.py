"""Where the built test bed binaries live, and building them when they are missing."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "toolchain" / "build.sh"
VERSIONS_FILE = REPO / "scripts" / "toolchain" / "versions.env"


# What the real node takes from Debian (scripts/toolchain/system-packages.sh installs it).
NODE_SYSTEM_FILES = tuple(
    Path(p)
    for p in (
        "/usr/bin/containerd",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/bin/ctr",
        "/usr/sbin/runc",
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/usr/lib/cni/loopback",
        "/usr/sbin/iptables",
        "/usr/sbin/conntrack",
        "/usr/bin/nsenter",
        "/usr/bin/gcc",
    )
)


# build.sh's components: the bed itself (a demo needs no more), and what only tests use.
BED = ("kine", "kwok", "crds", "pulumi", "pulumi-kubernetes", "kubernetes", "kubernetes-node")
# Traefik (the Gateway data plane) runs in the pytest bed and in `python -m testbed up --gateway`;
# Kafka's jars (testbed.brokers) in the pytest `brokers` fixture and `up --brokers`.
TESTS_ONLY = ("pulumi-language-python", "actionlint", "seaweedfs", "traefik", "kafka")
ALL = BED + TESTS_ONLY


class ToolchainMissing(RuntimeError):
    """A binary of the test bed is not built and building it was not allowed or failed."""


def versions() -> dict[str, str]:
    result: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            result[name] = value
    return result


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "preview-env-testbed"
    return Path(os.environ.get("PREVIEW_ENV_CACHE", default))


@dataclass(frozen=True)
class Toolchain:
    """Absolute paths of every binary and data directory the test bed uses."""

    pulumi_bin: Path  # directory holding pulumi, pulumi-language-python(-exec)
    kubernetes_provider: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kine: Path
    kwok: Path
    kwok_stages: Path
    crds: Path
    actionlint: Path
    weed: Path  # SeaweedFS: the S3-compatible server of the s3:// backend tests
    kubelet: Path  # the real node (testbed.node), same Kubernetes build
    kube_proxy: Path
    traefik: Path  # the Gateway API data plane (testbed.gateway)
    kafka_libs: Path  # Kafka's jars from Maven Central, a classpath directory (testbed.brokers)
    pulumi_version: str
    kubernetes_provider_version: str
    kubernetes_version: str
    kafka_version: str

    @property
    def pulumi(self) -> Path:
        return self.pulumi_bin / "pulumi"

    @property
    def path_dirs(self) -> list[Path]:
        """Directories to put on PATH: pulumi, the provider, kubectl."""
        return [self.pulumi_bin, self.kubernetes_provider.parent, self.kubectl.parent]

    def files(self, component: str) -> list[Path]:
        """What `scripts/toolchain/build.sh <component>` makes (or the Debian packages)."""
        return {
            "pulumi": [self.pulumi],
            "pulumi-kubernetes": [self.kubernetes_provider],
            "kubernetes": [
                self.kube_apiserver,
                self.kube_controller_manager,
                self.kube_scheduler,
                self.kubectl,
            ],
            "kine": [self.kine],
            "kwok": [self.kwok, self.kwok_stages],
            "crds": [self.crds],
            "actionlint": [self.actionlint],
            "seaweedfs": [self.weed],
            "traefik": [self.traefik],
            "kafka": [self.kafka_jar],
            "pulumi-language-python": [
                self.pulumi_bin / "pulumi-language-python",
                self.pulumi_bin / "pulumi-language-python-exec",
            ],
            "kubernetes-node": [self.kubelet, self.kube_proxy, *NODE_SYSTEM_FILES],
        }[component]

    @property
    def kafka_jar(self) -> Path:
        """The broker's own jar: build.sh moves the directory into place whole, last."""
        return self.kafka_libs / f"kafka_2.13-{self.kafka_version}.jar"

    def missing(self, components: tuple[str, ...] = ALL) -> list[Path]:
        return [p for c in components for p in self.files(c) if not p.exists()]


def locate() -> Toolchain:
    v = versions()
    cache = cache_dir()
    kube = cache / f"kubernetes-{v['KUBERNETES_VERSION']}" / "bin"
    kwok = cache / f"kwok-{v['KWOK_VERSION']}"
    return Toolchain(
        pulumi_bin=cache / f"pulumi-{v['PULUMI_VERSION']}" / "bin",
        kubernetes_provider=cache
        / f"pulumi-kubernetes-{v['PULUMI_KUBERNETES_VERSION']}"
        / "bin"
        / "pulumi-resource-kubernetes",
        kube_apiserver=kube / "kube-apiserver",
        kube_controller_manager=kube / "kube-controller-manager",
        kube_scheduler=kube / "kube-scheduler",
        kubectl=kube / "kubectl",
        kine=cache / f"kine-{v['KINE_VERSION']}" / "bin" / "kine",
        kwok=kwok / "bin" / "kwok",
        kwok_stages=kwok / "stages",
        crds=cache
        / f"crds-gateway-{v['GATEWAY_API_VERSION']}-rollouts-{v['ARGO_ROLLOUTS_VERSION']}",
        actionlint=cache / f"actionlint-{v['ACTIONLINT_VERSION']}" / "bin" / "actionlint",
        weed=cache / f"seaweedfs-{v['SEAWEEDFS_VERSION']}" / "bin" / "weed",
        kubelet=cache / f"kubernetes-node-{v['KUBERNETES_VERSION']}" / "bin" / "kubelet",
        kube_proxy=cache / f"kubernetes-node-{v['KUBERNETES_VERSION']}" / "bin" / "kube-proxy",
        traefik=cache / f"traefik-{v['TRAEFIK_VERSION']}" / "bin" / "traefik",
        kafka_libs=cache / f"kafka-{v['KAFKA_VERSION']}" / "libs",
        pulumi_version=v["PULUMI_VERSION"],
        kubernetes_provider_version=v["PULUMI_KUBERNETES_VERSION"],
        kubernetes_version=v["KUBERNETES_VERSION"],
        kafka_version=v["KAFKA_VERSION"],
    )


def ensure(*, build: bool = True, components: tuple[str, ...] = ALL) -> Toolchain:
    """Return the toolchain, building the missing ones of `components` when `build` is
    true (a demo builds the bed alone; the tests build everything)."""
    toolchain = locate()
    wanted = [c for c in components if toolchain.missing((c,))]
    if wanted and build:
        subprocess.run(["bash", str(BUILD_SCRIPT), *wanted], check=False)
    missing = toolchain.missing(components)
    if missing:
        listing = ", ".join(str(p) for p in missing)
        raise ToolchainMissing(
            f"test bed binaries missing: {listing}; run scripts/toolchain/system-packages.sh"
            " (Debian packages, as root) and scripts/toolchain/build.sh"
        )
    return toolchain


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server binaries (initdb, postgres), newest major first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    return found[0].parent if found else None
