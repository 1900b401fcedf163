"""The database images' content and cache, without a cluster: what testbed.images.postgres
and .mariadb put in their one layer, and that their tag follows their content."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from testbed import images

SMALL = ("etc/passwd", images.ENTRYPOINT.lstrip("/"))


def _read(archive: Path) -> tuple[dict[str, Any], dict[str, tarfile.TarInfo], dict[str, bytes]]:
    """The image config, the layer's members (by name) and the SMALL files' bytes."""

    def blob(tar: tarfile.TarFile, name: str) -> bytes:
        f = tar.extractfile(name)
        assert f is not None, name
        return f.read()

    with tarfile.open(archive) as outer:
        index = json.loads(blob(outer, "index.json"))
        digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.loads(blob(outer, f"blobs/sha256/{digest}"))
        config = json.loads(
            blob(outer, f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}")
        )
        layer_name = f"blobs/sha256/{manifest['layers'][0]['digest'].split(':')[1]}"
        with tarfile.open(fileobj=outer.extractfile(layer_name)) as layer:
            members = {m.name: m for m in layer.getmembers()}
            small = {n: blob(layer, n) for n in SMALL if n in members}
    return config["config"], members, small


def _needs(*paths: str) -> None:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        message = f"{', '.join(missing)} missing (scripts/toolchain/system-packages.sh)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)  # CI installs them: missing is a failure, never a skip
        pytest.skip(message)


def test_postgres_image_has_server_clients_libraries_and_entrypoint(tmp_path: Path) -> None:
    _needs("/usr/lib/postgresql/15/bin/postgres", "/bin/busybox")
    image = images.postgres(tmp_path)
    assert image.name.startswith("preview-env.local/postgres:")
    config, members, files = _read(image.archive)
    assert config["Entrypoint"] == [images.ENTRYPOINT]
    assert "PGDATA=/var/lib/postgresql/data" in config["Env"]
    assert "5432/tcp" in config["ExposedPorts"]
    for binary in images.PG_BINARIES:
        assert f"usr/lib/postgresql/15/bin/{binary}" in members
    assert "usr/share/postgresql/15/postgres.bki" in members
    assert "usr/lib/postgresql/15/lib/plpgsql.so" in members
    assert not any("llvmjit" in name or "bitcode" in name for name in members)
    assert any(name.rsplit("/", 1)[-1].startswith("libpq.so") for name in members)
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["usr/share/zoneinfo/UTC"].linkname == "Etc/UTC"
    assert members["usr/share/zoneinfo/Etc/UTC"].isfile()
    assert b"postgres:x:999:999:" in files["etc/passwd"]
    assert files[images.ENTRYPOINT.lstrip("/")].startswith(b"#!/bin/sh")
    # Cached: the same content is the same name and archive, built once.
    again = images.postgres(tmp_path)
    assert again == image


def test_mariadb_image_has_server_clients_and_system_tables(tmp_path: Path) -> None:
    _needs("/usr/sbin/mariadbd", "/usr/bin/mariadb", "/bin/busybox")
    image = images.mariadb(tmp_path)
    assert image.name.startswith("preview-env.local/mariadb:")
    config, members, files = _read(image.archive)
    assert config["Cmd"] == ["mariadbd"]
    assert "3306/tcp" in config["ExposedPorts"]
    for binary in images.MARIADB_BINARIES:
        assert binary.lstrip("/") in members
    assert "usr/share/mysql/english/errmsg.sys" in members
    assert "usr/share/mysql/mysql_system_tables.sql" in members
    assert any(name.rsplit("/", 1)[-1] == "libedit.so.2" for name in members)  # the client's
    assert b"mysql:x:999:999:" in files["etc/passwd"]


def test_a_changed_entrypoint_is_a_new_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs("/usr/sbin/mariadbd", "/bin/busybox")
    first = images.mariadb(tmp_path / "cache")
    sources = tmp_path / "images"
    shutil.copytree(images.IMAGE_SOURCES / "mariadb", sources / "mariadb")
    script = sources / "mariadb" / "entrypoint.sh"
    script.write_text(script.read_text() + "# changed\n")
    monkeypatch.setattr(images, "IMAGE_SOURCES", sources)
    second = images.mariadb(tmp_path / "cache")
    assert second.name != first.name
    assert second.archive.exists() and first.archive.exists()


def test_the_preview_env_image_carries_the_db_copy_clients() -> None:
    """What images.reaper adds for `preview-env db copy` (and keys its tag on)."""
    _needs("/usr/lib/postgresql/15/bin/pg_dump", "/usr/bin/mariadb-dump")
    clients = images.db_clients()
    for binary in ("psql", "pg_dump", "pg_restore"):
        assert clients[f"/usr/lib/postgresql/15/bin/{binary}"].mode == 0o755
    assert clients["/usr/bin/mariadb-dump"].source == Path("/usr/bin/mariadb-dump")
    assert clients["/usr/bin/mysql"].link == "mariadb"
    assert "/usr/share/mysql/charsets/Index.xml" in clients
