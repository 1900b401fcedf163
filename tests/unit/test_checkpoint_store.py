"""Listing and reading checkpoints straight from a backend (adapters.backend.stores)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

import pytest

from adapters.backend.checkpoints import UnknownStackFile
from adapters.backend.files import FileStore
from adapters.backend.s3 import S3Store, region
from adapters.backend.stores import open_checkpoints
from preview_stack import backends
from preview_stack.backends import Backend

CREDS = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}


def open_store(url: str, project: str, env: dict[str, str]) -> object:
    return open_checkpoints(Backend.parse(url), project, env)


@pytest.mark.parametrize(
    "url, env",
    [
        ("s3://b?endpoint=http://h:1&region=r", CREDS),  # virtual-hosted: not read here
        ("s3://b?use_path_style=true&region=r", CREDS),  # AWS without endpoint
        ("s3://b?endpoint=http://h:1&use_path_style=true", CREDS),  # no region
        ("s3://b?endpoint=http://h:1&use_path_style=true&region=r&profile=p", CREDS),
        ("s3://b?endpoint=http://h:1&use_path_style=true&region=r", {"AWS_PROFILE": "p"}),
        ("gs://b", CREDS),
        ("postgres://u@h/db", CREDS),
    ],
)
def test_s3_urls_this_client_does_not_read_go_to_pulumi(url: str, env: dict[str, str]) -> None:
    assert open_store(url, "preview-env", env) is None


def test_s3_url_parts() -> None:
    env = {**CREDS, "AWS_REGION": "eu-west-1"}
    location = Backend.parse("s3://bkt/some/prefix?endpoint=http://h:9&use_path_style=true").s3
    assert location is not None
    store = S3Store(location, "p", env)
    assert store.direct
    endpoint = ("https://" if location.secure else "http://") + location.endpoint
    assert (endpoint, store.bucket, region(location, env)) == ("http://h:9", "bkt", "eu-west-1")
    assert store.prefix + backends.stacks_folder("p") + "/" == "some/prefix/.pulumi/stacks/p/"
    assert (
        store.prefix + backends.locks_folder("p") + "/"
        == "some/prefix/.pulumi/locks/organization/p/"
    )


class FakeS3(BaseHTTPRequestHandler):
    objects: ClassVar[dict[str, tuple[str, bytes]]] = {}  # key -> (LastModified, body)
    page = 2

    def do_GET(self) -> None:
        assert self.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=id/")
        url = urlparse(self.path)
        bucket, _, key = unquote(url.path).lstrip("/").partition("/")
        assert bucket == "bkt"
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if not key and query.get("list-type") == "2":
            names = sorted(k for k in self.objects if k.startswith(query.get("prefix", "")))
            start = int(query.get("continuation-token", "0"))
            chunk, more = names[start : start + self.page], start + self.page < len(names)
            items = "".join(
                f"<Contents><Key>{escape(k)}</Key>"
                f"<LastModified>{self.objects[k][0]}</LastModified></Contents>"
                for k in chunk
            )
            token = f"<NextContinuationToken>{start + self.page}</NextContinuationToken>"
            body = (
                '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                "<Name>bkt</Name>"
                f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{items}"
                f"{token if more else ''}</ListBucketResult>"
            ).encode()
        elif key in self.objects:
            body = self.objects[key][1]
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_s3() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_s3_store_lists_pages_and_reads_the_newer_checkpoint(fake_s3: str) -> None:
    s = ".pulumi/stacks/preview-env/"
    FakeS3.objects = {
        ".pulumi/meta.yaml": ("2026-01-01T00:00:00.000Z", b"version: 1\n"),
        f"{s}a.json": ("2026-01-01T00:00:00.000Z", b"A"),
        f"{s}a.json.bak": ("2026-01-01T00:00:00.000Z", b"backup"),
        f"{s}ab.json": ("2026-01-01T00:00:00.000Z", b"AB"),
        f"{s}b.json": ("2026-01-01T00:00:00.000Z", b"old"),
        f"{s}b.json.gz": ("2026-01-02T00:00:00.000Z", b"new"),
        f"{s}c.json.gz": ("2026-01-01T00:00:00.000Z", b"C"),
        f"{s}z.json.zst": ("2026-01-01T00:00:00.000Z", b"Z"),
        f"{s}z.json.zst.bak": ("2026-01-01T00:00:00.000Z", b"backup"),
        ".pulumi/stacks/other/x.json": ("2026-01-01T00:00:00.000Z", b"X"),
        ".pulumi/locks/organization/preview-env/b/1234.json": ("2026-01-01T00:00:00.000Z", b"{}"),
        ".pulumi/history/preview-env/a/a-1.history.json": ("2026-01-01T00:00:00.000Z", b"{}"),
    }
    url = f"s3://bkt?endpoint={fake_s3}&use_path_style=true&region=us-east-1"
    store = open_store(url, "preview-env", CREDS)
    assert isinstance(store, S3Store)
    assert store.stacks() == {"a": False, "ab": False, "b": True, "c": False, "z": False}
    assert store.read("z") == b"Z"
    assert store.read("a") == b"A"
    assert store.read("b") == b"new"
    assert store.read("c") == b"C"
    assert store.read("nope") is None


def test_no_store_without_a_known_meta_yaml(fake_s3: str, tmp_path: Any) -> None:
    url = f"s3://bkt?endpoint={fake_s3}&use_path_style=true&region=us-east-1"
    FakeS3.objects = {}
    assert open_store(url, "preview-env", CREDS) is None
    FakeS3.objects = {".pulumi/meta.yaml": ("2026-01-01T00:00:00.000Z", b"version: 2\n")}
    assert open_store(url, "preview-env", CREDS) is None
    assert open_store(f"file://{tmp_path}", "preview-env", {}) is None
    (tmp_path / ".pulumi").mkdir()
    (tmp_path / ".pulumi" / "meta.yaml").write_text("version: 1\n")
    assert isinstance(open_store(f"file://{tmp_path}", "preview-env", {}), FileStore)


def test_an_unreachable_s3_gives_no_store() -> None:
    url = "s3://bkt?endpoint=http://127.0.0.1:9&use_path_style=true&region=us-east-1"
    assert open_store(url, "preview-env", CREDS) is None


def test_s3_store_refuses_to_list_past_an_unknown_stack_file(fake_s3: str) -> None:
    s = ".pulumi/stacks/preview-env/"
    FakeS3.objects = {
        ".pulumi/meta.yaml": ("2026-01-01T00:00:00.000Z", b"version: 1\n"),
        f"{s}a.json": ("2026-01-01T00:00:00.000Z", b"A"),
        f"{s}ghost.json.foo": ("2026-01-01T00:00:00.000Z", b"?"),
    }
    url = f"s3://bkt?endpoint={fake_s3}&use_path_style=true&region=us-east-1"
    store = open_store(url, "preview-env", CREDS)
    assert store is not None
    with pytest.raises(UnknownStackFile, match=r"ghost\.json\.foo"):
        store.stacks()


def test_file_store_lists_zstd_and_refuses_unknown_files(tmp_path: Any) -> None:
    stacks = tmp_path / ".pulumi" / "stacks" / "preview-env"
    stacks.mkdir(parents=True)
    (tmp_path / ".pulumi" / "meta.yaml").write_text("version: 1\n")
    for name in ("a.json", "a.json.bak", "a.json.attrs", "z.json.zst", "z.json.zst.bak"):
        (stacks / name).write_bytes(name.encode())
    store = open_store(f"file://{tmp_path}", "preview-env", {})
    assert isinstance(store, FileStore)
    assert store.stacks() == {"a": False, "z": False}
    assert store.read("z") == b"z.json.zst"
    (stacks / "ghost.json.foo").write_bytes(b"?")
    with pytest.raises(UnknownStackFile, match=r"ghost\.json\.foo"):
        store.stacks()
