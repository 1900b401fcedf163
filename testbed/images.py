"""Container images for the real node, built without docker and without a registry.

No image registry is reachable from our machines, so the bed builds its images from what
it can reach (Debian's gcc, the Go toolchain, the Kubernetes module in the Go module cache)
and writes the OCI image layout itself: one uncompressed layer tar, a config, a manifest
and an index, packed in one tar that `ctr images import` reads. Each image is cached under
the toolchain cache by a hash of everything that goes into it, and that hash is its tag, so
a changed source gives a new name and a stale image is never used.

`python -m testbed.images` builds them and prints their names.

The `reaper` image (the example CronJob's, built on demand by `reaper()`, not at bed start)
is bigger: the host's own Python interpreter (binary, standard library, the shared libraries
`ldd` reports) at its host prefix, the project installed from its wheel with
requirements.lock as constraints, and the toolchain's pulumi, language host and Kubernetes
provider on PATH, plus the database clients `preview-env db copy` runs (`db_clients()`:
PostgreSQL's psql, pg_dump, pg_restore; MariaDB's mariadb and mariadb-dump, also as mysql
and mysqldump, with /usr/share/mysql/charsets). Its layer is streamed to disk, never held
in memory.

The `traefik` image (built on demand by `traefik()`, for testbed.gateway) is the
toolchain's static Traefik binary alone, as /traefik, run as uid 65532; its tag hashes the
binary's path, size and modification time.

The `broker-client` image (built on demand by `broker_client()`, for testbed.brokers' pod
clients) is the host's Python as in the reaper image with pika and kafka-python (pure
Python, pinned by requirements.lock) and scripts/images/broker-client/client.py as its
entry point, run as uid 65534.

The database images, built on demand like the reaper's by `postgres()` and `mariadb()`, are
the host's Debian packages (system-packages.sh installs them) copied at their own paths:
`preview-env.local/postgres:<hash>` has PostgreSQL 15's server and clients (postgres,
initdb, pg_ctl, psql, pg_dump, pg_restore, pg_isready), its extension modules and
/usr/share/postgresql/15; `preview-env.local/mariadb:<hash>` has mariadbd, the mariadb,
mariadb-admin and mariadb-dump clients and /usr/share/mysql. Both have the shared libraries
`ldd` reports, /usr/share/zoneinfo, Debian's busybox-static as /bin/sh and its applets,
and an entrypoint script (scripts/images/<engine>/entrypoint.sh) that, like the official
images', initialises an empty data directory as uid 999 from POSTGRES_USER /
POSTGRES_PASSWORD / POSTGRES_DB or MARIADB_ROOT_PASSWORD / MARIADB_USER / MARIADB_PASSWORD
/ MARIADB_DATABASE, then runs the server in the foreground on 0.0.0.0 (5432, 3306) with
password authentication; any other command (`psql ...`, `mariadb ...`) runs as given. Their
tag hashes each file's path, size and modification time, so a package upgrade gives a new
name. Run `python -m testbed.images --databases` to build them.
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

from testbed.toolchain import REPO, Toolchain, cache_dir, versions

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


def traefik(binary: Path, cache: Path | None = None) -> Image:
    """The toolchain's Traefik (static, CGO off) as `/traefik`, streamed: it is big."""
    entries = {"/traefik": _Entry(binary, mode=0o755), "/tmp": _Entry(mode=0o1777)}
    config: dict[str, object] = {
        "Entrypoint": ["/traefik"],
        "Env": ["PATH=/"],
        "User": "65532:65532",
    }
    return _host_image(cache, "traefik", entries, config)


# ------------------------------------------------------------------ the reaper image
# What the reaper's Python does not need from the standard library (and _tkinter would
# drag in X11).
_STDLIB_SKIP = frozenset(
    {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip"}
)
REAPER_UID = "10001"
PROJECT_SOURCES = ("cli", "preview_stack", "adapters", "pyproject.toml", "requirements.lock")


@dataclass(frozen=True)
class _Entry:
    """One layer member: a host file to copy, literal bytes, a symlink, or a directory."""

    source: Path | None = None
    data: bytes | None = None
    link: str | None = None
    mode: int = 0o644


def reaper(toolchain: Toolchain, cache: Path | None = None) -> Image:
    """`preview-env reap` as a container: Python, the project, pulumi and the provider."""
    root = (cache or cache_dir()) / "images"
    binaries = _reaper_binaries(toolchain)
    clients = db_clients()
    key = _key(
        sys.version.encode(),
        sys.base_prefix.encode(),
        *(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode() for p in binaries.values()),
        *(f"{p.relative_to(REPO)}".encode() + p.read_bytes() for p in _project_files()),
        *(_fingerprint(n, e) for n, e in sorted(clients.items())),
    )
    tag = key[:16]
    name = f"{REGISTRY}/reaper:{tag}"
    archive = root / f"reaper-{tag}.tar"
    if archive.exists():
        return Image(name, archive)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp)
        site = _install_project(work)
        entries = _python_runtime()
        site_dir = Path(sys.base_prefix) / "lib" / f"python{_pyver()}" / "site-packages"
        for path in sorted(site.rglob("*")):
            if (
                path.is_file()
                and not path.is_symlink()
                and path.relative_to(site).parts[0] != "bin"
            ):
                entries[str(site_dir / path.relative_to(site))] = _Entry(path, mode=_mode(path))
        for target, source in binaries.items():
            entries[f"/usr/local/bin/{target}"] = _Entry(source, mode=0o755)
        python = f"{sys.base_prefix}/bin/python{_pyver()}"
        for alias in ("python", "python3"):
            entries[f"/usr/local/bin/{alias}"] = _Entry(link=python)
        env_binary = Path("/usr/bin/env")  # pulumi-language-python-exec's shebang
        entries["/usr/bin/env"] = _Entry(env_binary, mode=0o755)
        entries.update(clients)  # `preview-env db copy`'s client tools
        client_elf = [str(e.source) for e in clients.values() if e.mode == 0o755 and e.source]
        entries.update(
            _shared_libraries([python, str(env_binary), *client_elf, *_elf_files(entries)])
        )
        entries["/etc/passwd"] = _Entry(
            data=f"root:x:0:0:root:/root:/bin/sh\nreaper:x:{REAPER_UID}:{REAPER_UID}:"
            "preview-env reaper:/tmp:/bin/sh\n".encode()
        )
        entries["/etc/group"] = _Entry(data=f"root:x:0:\nreaper:x:{REAPER_UID}:\n".encode())
        entries["/tmp"] = _Entry(mode=0o1777)
        layer = work / "layer.tar"
        _write_layer(layer, entries)
        config: dict[str, object] = {
            "Entrypoint": ["/usr/local/bin/python3", "-m", "cli"],
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "HOME=/tmp",
                "PULUMI_HOME=/tmp/pulumi-home",
                "PULUMI_SKIP_UPDATE_CHECK=true",
                "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true",
                "PYTHONDONTWRITEBYTECODE=1",
                "PYTHONUNBUFFERED=1",
            ],
            "User": f"{REAPER_UID}:{REAPER_UID}",
            "WorkingDir": "/tmp",
        }
        partial = work / "image.tar"
        _write_oci(partial, name, layer, config)
        os.replace(partial, archive)
    return Image(name, archive)


# ------------------------------------------------------------- the broker client image
BROKER_CLIENT_SOURCE = REPO / "scripts" / "images" / "broker-client" / "client.py"
BROKER_CLIENT_PACKAGES = ("pika", "kafka-python")  # pinned by requirements.lock
BROKER_CLIENT_SCRIPT = "/usr/local/lib/broker-client/client.py"


def broker_client(cache: Path | None = None) -> Image:
    """The host's Python with pika and kafka-python (pure Python, from PyPI at the
    versions requirements.lock pins) and scripts/images/broker-client/client.py as its
    entry point (testbed.brokers' clients in a pod); uid 65534."""
    root = (cache or cache_dir()) / "images"
    pins = [
        line
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if line.split("==")[0].strip().lower() in BROKER_CLIENT_PACKAGES
    ]
    if len(pins) != len(BROKER_CLIENT_PACKAGES):
        raise RuntimeError(f"requirements.lock must pin {', '.join(BROKER_CLIENT_PACKAGES)}")
    key = _key(
        sys.version.encode(),
        sys.base_prefix.encode(),
        "\n".join(pins).encode(),
        BROKER_CLIENT_SOURCE.read_bytes(),
    )
    tag = key[:16]
    name = f"{REGISTRY}/broker-client:{tag}"
    archive = root / f"broker-client-{tag}.tar"
    if archive.exists():
        return Image(name, archive)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp)
        site = work / "site"
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install"]
        _run([*pip, "--no-deps", "--only-binary=:all:", "--target", str(site), *pins])
        entries = _python_runtime()
        site_dir = Path(sys.base_prefix) / "lib" / f"python{_pyver()}" / "site-packages"
        for path in sorted(site.rglob("*")):
            if path.is_file() and path.relative_to(site).parts[0] != "bin":
                entries[str(site_dir / path.relative_to(site))] = _Entry(path, mode=_mode(path))
        python = f"{sys.base_prefix}/bin/python{_pyver()}"
        for alias in ("python", "python3"):
            entries[f"/usr/local/bin/{alias}"] = _Entry(link=python)
        entries[BROKER_CLIENT_SCRIPT] = _Entry(BROKER_CLIENT_SOURCE, mode=0o644)
        entries.update(_shared_libraries([python, *_elf_files(entries)]))
        entries["/etc/passwd"] = _Entry(
            data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/sh\n"
        )
        entries["/etc/group"] = _Entry(data=b"root:x:0:\nnogroup:x:65534:\n")
        entries["/tmp"] = _Entry(mode=0o1777)
        layer = work / "layer.tar"
        _write_layer(layer, entries)
        config: dict[str, object] = {
            "Entrypoint": ["/usr/local/bin/python3", BROKER_CLIENT_SCRIPT],
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "HOME=/tmp",
                "PYTHONDONTWRITEBYTECODE=1",
                "PYTHONUNBUFFERED=1",
            ],
            "User": "65534:65534",
            "WorkingDir": "/tmp",
        }
        partial = work / "image.tar"
        _write_oci(partial, name, layer, config)
        os.replace(partial, archive)
    return Image(name, archive)


def db_clients() -> dict[str, _Entry]:
    """The database client tools `preview-env db copy` runs (adapters.dbcopy): pg_dump,
    pg_restore and psql at Debian's real paths (its /usr/bin ones are perl wrappers), the
    MariaDB clients (also MySQL's) and their character set files. Their shared libraries
    come with the image's ldd pass."""
    entries: dict[str, _Entry] = {}
    for binary in DB_CLIENT_PG:
        path = PG_PREFIX / "bin" / binary
        entries[str(path)] = _Entry(path, mode=0o755)
    for binary in DB_CLIENT_MARIADB:
        entries[binary] = _Entry(Path(binary), mode=0o755)
    missing = [n for n, e in entries.items() if e.source is None or not e.source.exists()]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} missing: install postgresql-client and mariadb-client "
            "(scripts/toolchain/system-packages.sh)"
        )
    for path in _tree(Path("/usr/share/mysql/charsets")):
        entries[str(path)] = _Entry(path, mode=0o644)
    for alias, target in (("mysql", "mariadb"), ("mysqldump", "mariadb-dump")):
        entries[f"/usr/bin/{alias}"] = _Entry(link=target)
    return entries


def _pyver() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _reaper_binaries(toolchain: Toolchain) -> dict[str, Path]:
    bin_dir = toolchain.pulumi_bin
    return {
        "pulumi": bin_dir / "pulumi",
        "pulumi-language-python": bin_dir / "pulumi-language-python",
        "pulumi-language-python-exec": bin_dir / "pulumi-language-python-exec",
        "pulumi-resource-kubernetes": toolchain.kubernetes_provider,
    }


def _project_files() -> list[Path]:
    files: list[Path] = []
    for name in PROJECT_SOURCES:
        path = REPO / name
        if path.is_dir():
            files += [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        else:
            files.append(path)
    return sorted(files)


def _install_project(work: Path) -> Path:
    """The project's wheel and its dependencies (requirements.lock pins) in `work/site`."""
    wheels, site = work / "wheels", work / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(REPO)])
    wheel = next(wheels.glob("preview_env-*.whl"))
    constraints = ["-c", str(REPO / "requirements.lock")]
    _run([*pip, "install", "--target", str(site), *constraints, str(wheel)])
    return site


def _python_runtime() -> dict[str, _Entry]:
    """This interpreter: its binary, libpython and its standard library (with the
    bytecode already compiled for this version, since the image's root is read-only)."""
    prefix = Path(sys.base_prefix)
    ver = _pyver()
    entries: dict[str, _Entry] = {}
    binary = prefix / "bin" / f"python{ver}"
    entries[str(binary)] = _Entry(binary, mode=0o755)
    for lib in (prefix / "lib").glob(f"libpython{ver}*.so*"):
        entries[str(lib)] = (
            _Entry(link=os.readlink(lib)) if lib.is_symlink() else _Entry(lib, mode=0o755)
        )
    stdlib = prefix / "lib" / f"python{ver}"
    tag = f".cpython-{sys.version_info.major}{sys.version_info.minor}.pyc"
    for path in sorted(stdlib.rglob("*")):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in _STDLIB_SKIP or rel.parts[0].startswith("config-"):
            continue
        if path.is_symlink() or not path.is_file() or "_tkinter" in path.name:
            continue
        if "__pycache__" in rel.parts and not path.name.endswith(tag):
            continue  # optimized (-O) bytecode: never used
        entries[str(path)] = _Entry(path, mode=_mode(path))
    return entries


def _mode(path: Path) -> int:
    return 0o755 if os.access(path, os.X_OK) else 0o644


def _elf_files(entries: dict[str, _Entry]) -> list[str]:
    """Sources of extension modules and shared objects among `entries`."""
    return [
        str(e.source)
        for name, e in entries.items()
        if e.source is not None and (name.endswith(".so") or ".so." in name)
    ]


def _shared_libraries(files: list[str]) -> dict[str, _Entry]:
    """The libraries `ldd` resolves for `files`, at the paths it reports, and the loader."""
    found: set[str] = set()
    for start in range(0, len(files), 200):
        out = subprocess.run(
            ["ldd", *files[start : start + 200]], capture_output=True, text=True, check=False
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                found.add(parts[2])
            elif parts and parts[0].startswith("/") and "ld-linux" in parts[0]:
                found.add(parts[0])
    prefix = sys.base_prefix + "/"
    return {
        lib: _Entry(Path(os.path.realpath(lib)), mode=0o755)
        for lib in sorted(found)
        if not lib.startswith(prefix)  # libpython is already there
    }


def _write_layer(out: Path, entries: dict[str, _Entry]) -> None:
    """A reproducible tar of `entries` (absolute names), streamed to `out`."""
    names = {n.lstrip("/"): e for n, e in entries.items()}
    dirs = sorted({str(p) for n in names for p in Path(n).parents} - {"."} - set(names))
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for n in sorted(names):
            e = names[n]
            info = tarfile.TarInfo(n)
            info.mode = e.mode
            if e.link is not None:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, e.link, 0o777
                tar.addfile(info)
            elif e.data is not None:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            elif e.source is not None:
                info.size = e.source.stat().st_size
                with e.source.open("rb") as f:
                    tar.addfile(info, f)
            else:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _write_oci(out: Path, name: str, layer: Path, image_config: dict[str, object]) -> None:
    """The OCI layout tar of one layer file and its config, streamed to `out`."""
    layer_digest = _file_digest(layer)
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    )
    layer_desc: dict[str, object] = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": layer_digest,
        "size": layer.stat().st_size,
    }
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [layer_desc],
        }
    )
    manifest_desc = _descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest_desc["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
    }
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest_desc],
        }
    )
    small = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        **{f"blobs/sha256/{_digest(b).split(':')[1]}": b for b in (config, manifest)},
    }
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for n, data in sorted(small.items()):
            info = tarfile.TarInfo(n)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(f"blobs/sha256/{layer_digest.split(':')[1]}")
        info.size, info.mode = layer.stat().st_size, 0o644
        with layer.open("rb") as f:
            tar.addfile(info, f)


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


# ------------------------------------------------------------------ the database images
IMAGE_SOURCES = REPO / "scripts" / "images"
DB_UID = "999"
PG_VERSION = "15"
PG_PREFIX = Path("/usr/lib/postgresql") / PG_VERSION
PG_BINARIES = ("postgres", "initdb", "pg_ctl", "psql", "pg_dump", "pg_restore", "pg_isready")
MARIADB_BINARIES = (
    "/usr/sbin/mariadbd",
    "/usr/bin/mariadb",
    "/usr/bin/mariadb-admin",
    "/usr/bin/mariadb-dump",
)
DB_CLIENT_PG = ("psql", "pg_dump", "pg_restore")
DB_CLIENT_MARIADB = ("/usr/bin/mariadb", "/usr/bin/mariadb-dump")
BUSYBOX = Path("/bin/busybox")
ENTRYPOINT = "/usr/local/bin/docker-entrypoint.sh"


def postgres(cache: Path | None = None) -> Image:
    """PostgreSQL 15 from the host's Debian packages: server, clients and entrypoint."""
    entries: dict[str, _Entry] = {}
    for binary in PG_BINARIES:
        path = PG_PREFIX / "bin" / binary
        entries[str(path)] = _Entry(path, mode=0o755)
    # Extension modules; not the JIT (libLLVM alone is >100 MB): without it, jit is off.
    for path in _tree(PG_PREFIX / "lib"):
        if "bitcode" not in path.parts and not path.name.startswith("llvmjit"):
            entries[str(path)] = _Entry(path, mode=_mode(path))
    for path in _tree(Path("/usr/share/postgresql") / PG_VERSION):
        if "man" not in path.parts:
            entries[str(path)] = _Entry(path, mode=0o644)
    entries.update(_database_base("postgres", "/var/lib/postgresql", entries))
    entries["/var/run/postgresql"] = _Entry(mode=0o1777)
    config: dict[str, object] = {
        "Entrypoint": [ENTRYPOINT],
        "Cmd": ["postgres"],
        "Env": [
            f"PATH={PG_PREFIX}/bin:/usr/local/bin:/usr/bin:/bin",
            "PGDATA=/var/lib/postgresql/data",
            "TZ=UTC",
        ],
        "ExposedPorts": {"5432/tcp": {}},
        "StopSignal": "SIGINT",  # fast shutdown, as the official image
    }
    return _host_image(cache, "postgres", entries, config)


def mariadb(cache: Path | None = None) -> Image:
    """MariaDB from the host's Debian packages: mariadbd, the clients and entrypoint."""
    missing = [b for b in MARIADB_BINARIES if not Path(b).exists()]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} missing: install mariadb-server and mariadb-client "
            "(scripts/toolchain/system-packages.sh)"
        )
    entries: dict[str, _Entry] = {b: _Entry(Path(b), mode=0o755) for b in MARIADB_BINARIES}
    for path in _tree(Path("/usr/share/mysql")):
        if path.suffix in (".sys", ".xml", ".sql"):
            entries[str(path)] = _Entry(path, mode=0o644)
    entries.update(_database_base("mysql", "/var/lib/mysql", entries))
    config: dict[str, object] = {
        "Entrypoint": [ENTRYPOINT],
        "Cmd": ["mariadbd"],
        "Env": ["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/bin", "TZ=UTC"],
        "ExposedPorts": {"3306/tcp": {}},
    }
    return _host_image(cache, "mariadb", entries, config)


def _tree(top: Path) -> list[Path]:
    """Regular files under `top`, sorted (symlinks and directories left out)."""
    if not top.is_dir():
        raise RuntimeError(f"{top} missing (scripts/toolchain/system-packages.sh installs it)")
    return sorted(p for p in top.rglob("*") if p.is_file() and not p.is_symlink())


def _database_base(user: str, home: str, entries: dict[str, _Entry]) -> dict[str, _Entry]:
    """What both database images share: the shared libraries of `entries`' ELF files,
    busybox as /bin/sh and its applets, zoneinfo, the service user and the entrypoint."""
    if not BUSYBOX.exists():
        raise RuntimeError("/bin/busybox missing: install busybox-static")
    elf = [str(e.source) for e in entries.values() if e.source is not None and _is_elf(e.source)]
    base = _shared_libraries([*elf, str(BUSYBOX)])  # none when static, as Debian's
    base[str(BUSYBOX)] = _Entry(BUSYBOX, mode=0o755)
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and f"/bin/{applet}" not in entries:
            base[f"/bin/{applet}"] = _Entry(link="busybox")
    zoneinfo = Path("/usr/share/zoneinfo")
    for path in sorted(zoneinfo.rglob("*")):
        if path.relative_to(zoneinfo).parts[0] in ("right", "posix"):
            continue
        if path.is_symlink():  # UTC -> Etc/UTC and the like
            base[str(path)] = _Entry(link=os.readlink(path))
        elif path.is_file():
            base[str(path)] = _Entry(path, mode=0o644)
    base["/etc/passwd"] = _Entry(
        data=f"root:x:0:0:root:/root:/bin/sh\n{user}:x:{DB_UID}:{DB_UID}::{home}:/bin/sh\n".encode()
    )
    base["/etc/group"] = _Entry(data=f"root:x:0:\n{user}:x:{DB_UID}:\n".encode())
    base["/tmp"] = _Entry(mode=0o1777)
    base[home] = _Entry(mode=0o755)
    engine = "postgres" if user == "postgres" else "mariadb"
    script = IMAGE_SOURCES / engine / "entrypoint.sh"
    base[ENTRYPOINT] = _Entry(data=script.read_bytes(), mode=0o755)
    return base


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _host_image(
    cache: Path | None, short: str, entries: dict[str, _Entry], config: dict[str, object]
) -> Image:
    """An image of `entries` (host files at their paths), cached by a hash of each entry."""
    root = (cache or cache_dir()) / "images"
    key = _key(_json(config), *(_fingerprint(n, e) for n, e in sorted(entries.items())))
    tag = key[:16]
    name = f"{REGISTRY}/{short}:{tag}"
    archive = root / f"{short}-{tag}.tar"
    if archive.exists():
        return Image(name, archive)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        layer = Path(tmp) / "layer.tar"
        _write_layer(layer, entries)
        partial = Path(tmp) / "image.tar"
        _write_oci(partial, name, layer, config)
        os.replace(partial, archive)
    return Image(name, archive)


def _fingerprint(name: str, e: _Entry) -> bytes:
    if e.source is not None:
        st = e.source.stat()
        what = f"file {e.source}:{st.st_size}:{st.st_mtime_ns}".encode()
    elif e.data is not None:
        what = b"data " + e.data
    elif e.link is not None:
        what = f"link {e.link}".encode()
    else:
        what = b"directory"
    return f"{name} {e.mode:o} ".encode() + what


if __name__ == "__main__":
    if shutil.which("go") is None:
        sys.exit("go not found on PATH")
    for short, image in build_all().items():
        print(f"{short}\t{image.name}\t{image.archive}")
    if "--reaper" in sys.argv[1:]:
        from testbed.toolchain import locate

        image = reaper(locate())
        print(f"reaper\t{image.name}\t{image.archive}")
    if "--databases" in sys.argv[1:]:
        for short, build in (("postgres", postgres), ("mariadb", mariadb)):
            image = build()
            print(f"{short}\t{image.name}\t{image.archive}")
