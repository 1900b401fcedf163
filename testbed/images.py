"""Container images for the real node, built without docker and without a registry.

No image registry is reachable from our machines, so the bed builds its images from what
it can reach (Debian's gcc, the Go toolchain, the Kubernetes module in the Go module cache)
and writes the OCI image layout itself: one uncompressed layer tar, a config, a manifest
and an index, packed in one tar that `ctr images import` reads. Each image is cached under
the toolchain cache by a hash of everything that goes into it, and that hash is its tag, so
a changed source gives a new name and a stale image is never used.

`python -m testbed.images` builds them and prints their names.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from testbed.toolchain import REPO, cache_dir, versions

REGISTRY = "preview-env.local"
ECHO_SOURCE = REPO / "scripts" / "images" / "echo"
# Bump when the layout written below changes: it is part of every cache key.
LAYOUT_VERSION = "1"


@dataclass(frozen=True)
class Image:
    name: str  # preview-env.local/<short>:<content hash>
    archive: Path  # OCI layout tar for `ctr images import`


def build_all(cache: Path | None = None) -> dict[str, Image]:
    """The bed's images by short name (`pause`, `echo`), built when not cached."""
    root = (cache or cache_dir()) / "images"
    return {"pause": pause(root), "echo": echo(root)}


def pause(root: Path) -> Image:
    """Kubernetes' own pause.c from the module cache, compiled `gcc -static`."""
    version = versions()["KUBERNETES_VERSION"]
    source = _module_dir("k8s.io/kubernetes", version) / "build" / "pause" / "linux" / "pause.c"
    key = _key(source.read_bytes(), _tool_version(["gcc", "--version"]))

    def build(out: Path) -> None:
        _run(["gcc", "-Os", "-static", f"-DVERSION={version}", "-o", str(out), str(source)])
        _run(["strip", str(out)])

    return _cached(root, "pause", key, build, user="65535:65535", ports=())


def echo(root: Path) -> Image:
    """The echo server of scripts/images/echo: a static Go binary (CGO off)."""
    sources = sorted(p for p in ECHO_SOURCE.iterdir() if p.is_file())
    key = _key(
        *(p.name.encode() + p.read_bytes() for p in sources), _tool_version(["go", "version"])
    )

    def build(out: Path) -> None:
        env = {
            **os.environ,
            "CGO_ENABLED": "0",
            "GOTOOLCHAIN": "local",
            "GOFLAGS": "-buildvcs=false",
        }
        _run(
            ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out), "."],
            cwd=ECHO_SOURCE,
            env=env,
        )

    return _cached(root, "echo", key, build, user="65534:65534", ports=("8080/tcp",))


def _cached(
    root: Path,
    short: str,
    key: str,
    build: Callable[[Path], None],
    *,
    user: str,
    ports: tuple[str, ...],
) -> Image:
    tag = key[:16]
    name = f"{REGISTRY}/{short}:{tag}"
    archive = root / f"{short}-{tag}.tar"
    if archive.exists():
        return Image(name, archive)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        binary = Path(tmp) / short
        build(binary)
        partial = Path(tmp) / "image.tar"
        partial.write_bytes(oci_archive(name, f"/{short}", binary.read_bytes(), user, ports))
        os.replace(partial, archive)  # atomic: a concurrent build writes the same bytes
    return Image(name, archive)


def oci_archive(name: str, path: str, binary: bytes, user: str, ports: tuple[str, ...]) -> bytes:
    """An OCI image layout (as a tar) of one static binary at `path`, its entrypoint."""
    layer = _tar({path.lstrip("/"): (binary, 0o755)})
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": [path],
                "Env": ["PATH=/"],
                "User": user,
                "ExposedPorts": {p: {} for p in ports},
            },
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
        }
    )
    manifest_desc = _descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest_desc["annotations"] = {
        "io.containerd.image.name": name,  # the full name ctr import gives the image
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
    }
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest_desc],
        }
    )
    files: dict[str, tuple[bytes, int]] = {
        "oci-layout": (_json({"imageLayoutVersion": "1.0.0"}), 0o644),
        "index.json": (index, 0o644),
    }
    for blob in (layer, config, manifest):
        files[f"blobs/sha256/{_digest(blob).split(':')[1]}"] = (blob, 0o644)
    return _tar(files)


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A reproducible tar: fixed owner and times, parents listed, sorted names."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(p) for n in files for p in Path(n).parents} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for n in sorted(files):
            data, mode = files[n]
            info = tarfile.TarInfo(n)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": _digest(blob), "size": len(blob)}


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _key(*parts: bytes) -> str:
    h = hashlib.sha256(LAYOUT_VERSION.encode())
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _tool_version(argv: list[str]) -> bytes:
    return subprocess.run(argv, capture_output=True, check=True).stdout


def _module_dir(module: str, version: str) -> Path:
    """The module's directory in the Go module cache (downloaded if absent)."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
        cwd=tempfile.gettempdir(),
    ).stdout
    return Path(json.loads(out)["Dir"])


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()[-2000:]}")


if __name__ == "__main__":
    if shutil.which("go") is None:
        sys.exit("go not found on PATH")
    for short, image in build_all().items():
        print(f"{short}\t{image.name}\t{image.archive}")
