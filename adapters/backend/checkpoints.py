"""Where a self-managed backend keeps its stacks' checkpoints, listed and read directly.

One listing and one read per stack in this process replace `pulumi stack ls` and one
`pulumi stack output` per stack (a second each on a loaded machine). Only layouts checked
against Pulumi v3.274 are read: `file://` directories, and S3 buckets named with an
explicit `endpoint` and `use_path_style=true` read with the AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY of the environment. `open_store` gives None for anything else (AWS
profiles, instance roles, virtual-hosted buckets, other query parameters, other backends)
and the caller keeps asking `pulumi`; a store that fails mid-way raises OSError and the
caller asks `pulumi` for that read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, quote, urlparse
from xml.etree import ElementTree

import yaml

from preview_stack import backends
from preview_stack.checkpoints import STACK_SUFFIXES, Unknown, stack_file_key

ORGANIZATION = "organization"  # the only organization of a DIY backend
SUFFIXES = STACK_SUFFIXES


class UnknownStackFile(OSError):
    """The stacks folder holds a file this code cannot tell the stack of (a format newer
    than this code): the listing must come from `pulumi`, never skip it."""


def _stack_keys(names: list[str], where: str) -> set[str]:
    keys = set()
    for name in names:
        found = stack_file_key(name)
        if isinstance(found, Unknown):
            raise UnknownStackFile(
                f"unknown file {name!r} in {where}: not a checkpoint name this version of "
                "preview-env reads (.json, .json.gz, .json.zst)"
            )
        if found is not None:
            keys.add(found)
    return keys


class CheckpointStore(Protocol):
    def stacks(self) -> dict[str, bool]:
        """Every stack of the project, mapped to whether its lock is held."""
        ...

    def read(self, key: str) -> bytes | None:
        """The checkpoint bytes of stack `key`; None when it has none."""
        ...


class FileStore:
    """A `file://` backend: `.pulumi/stacks/<project>/<stack>.json[.gz|.zst]`, locks under
    `.pulumi/locks/<org>/<project>/<stack>/`."""

    def __init__(self, root: Path, project: str) -> None:
        self.stacks_dir = root / ".pulumi" / "stacks" / project
        self.locks_dir = root / ".pulumi" / "locks" / ORGANIZATION / project

    def stacks(self) -> dict[str, bool]:
        try:
            # Pulumi lists files only (a folder here is too deep to be a stack).
            names = [p.name for p in self.stacks_dir.iterdir() if not p.is_dir()]
        except FileNotFoundError:
            return {}
        keys = _stack_keys(names, str(self.stacks_dir))
        try:
            locked = {p.name for p in self.locks_dir.iterdir() if any(p.glob("*.json"))}
        except FileNotFoundError:
            locked = set()
        return {key: key in locked for key in sorted(keys)}

    def read(self, key: str) -> bytes | None:
        found = []
        for suffix in SUFFIXES:
            path = self.stacks_dir / f"{key}{suffix}"
            try:
                found.append((path.stat().st_mtime_ns, path.read_bytes()))
            except FileNotFoundError:
                continue
        return max(found)[1] if found else None  # Pulumi writes one; the newer if both


S3_TIMEOUT_SECONDS = 10
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Query parameters of Pulumi's s3:// URLs (gocloud.dev s3blob) this client honours.
S3_PARAMS = {"endpoint", "region", "use_path_style", "s3ForcePathStyle"}


class S3Store:
    """An `s3://bucket[/prefix]?endpoint=...&use_path_style=true` backend: the same layout
    as FileStore under the bucket's prefix, read over HTTP with AWS Signature V4 (GET and
    ListObjectsV2 only; nothing here ever writes)."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        prefix: str,
        region: str,
        creds: Mapping[str, str],
        project: str,
    ) -> None:
        self.endpoint, self.bucket, self.region = endpoint.rstrip("/"), bucket, region
        self.creds = creds
        base = f"{prefix}/" if prefix else ""
        self.meta_key = f"{base}.pulumi/meta.yaml"
        self.stacks_prefix = f"{base}.pulumi/stacks/{project}/"
        self.locks_prefix = f"{base}.pulumi/locks/{ORGANIZATION}/{project}/"

    def stacks(self) -> dict[str, bool]:
        names = [name for name, _ in self._list(self.stacks_prefix) if "/" not in name]
        keys = _stack_keys(names, f"s3://{self.bucket}/{self.stacks_prefix}")
        locked = {
            name.split("/", 1)[0]
            for name, _ in self._list(self.locks_prefix)
            if name.endswith(".json") and "/" in name
        }
        return {key: key in locked for key in sorted(keys)}

    def read(self, key: str) -> bytes | None:
        # One listing names the checkpoint (`.json`, `.json.gz` or `.json.zst`; the newer, as
        # Pulumi picks) and its GET reads it: both fresh, for reads under the lock.
        names = {f"{key}{suffix}" for suffix in SUFFIXES}
        found = [
            (modified, f"{key}.json{rest}")
            for rest, modified in self._list(f"{self.stacks_prefix}{key}.json")
            if f"{key}.json{rest}" in names
        ]
        if not found:
            return None
        return self.get(self.stacks_prefix + max(found)[1])

    def get(self, object_key: str) -> bytes | None:
        try:
            return self._request(object_key, {})
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise OSError(f"S3 GET {object_key}: HTTP {exc.code}") from None

    def _list(self, prefix: str) -> list[tuple[str, str]]:
        """(name after `prefix`, LastModified) of every object under `prefix`."""
        found: list[tuple[str, str]] = []
        token = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            try:
                body = self._request("", query)
            except urllib.error.HTTPError as exc:
                raise OSError(f"S3 list {prefix}: HTTP {exc.code}") from None
            try:
                root = ElementTree.fromstring(body)
            except ElementTree.ParseError as exc:
                raise OSError(f"S3 list {prefix}: {exc}") from None
            for item in root.iter(f"{S3_NS}Contents"):
                name = item.findtext(f"{S3_NS}Key") or ""
                if name.startswith(prefix):
                    found.append((name[len(prefix) :], item.findtext(f"{S3_NS}LastModified") or ""))
            if root.findtext(f"{S3_NS}IsTruncated") != "true":
                return found
            token = root.findtext(f"{S3_NS}NextContinuationToken")
            if not token:
                raise OSError(f"S3 list {prefix}: truncated without a continuation token")

    def _request(self, object_key: str, query: dict[str, str]) -> bytes:
        """A signed GET of `object_key` (the bucket itself when empty) with `query`."""
        parsed = urlparse(self.endpoint)
        path = "/" + quote(self.bucket, safe="") + "/" + quote(object_key, safe="/~")
        canonical_query = "&".join(
            f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted(query.items())
        )
        now = dt.datetime.now(dt.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        headers = {
            "host": parsed.netloc,
            "x-amz-content-sha256": EMPTY_SHA256,
            "x-amz-date": amz_date,
        }
        if self.creds.get("AWS_SESSION_TOKEN"):
            headers["x-amz-security-token"] = self.creds["AWS_SESSION_TOKEN"]
        scope, signed, signature = sigv4(
            path, canonical_query, headers, self.creds["AWS_SECRET_ACCESS_KEY"], self.region
        )
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.creds['AWS_ACCESS_KEY_ID']}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        url = f"{self.endpoint}{path}" + (f"?{canonical_query}" if canonical_query else "")
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=S3_TIMEOUT_SECONDS) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, TimeoutError) as exc:
            raise OSError(f"S3 {self.endpoint}: {exc}") from None


def sigv4(
    path: str, canonical_query: str, headers: Mapping[str, str], secret: str, region: str
) -> tuple[str, str, str]:
    """AWS Signature Version 4 of a GET with an empty body whose `headers` (lower-case
    names, `x-amz-date` among them) are all signed: (scope, signed headers, signature)."""
    amz_date = headers["x-amz-date"]
    day = amz_date[:8]
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            "GET",
            path,
            canonical_query,
            "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
            signed,
            EMPTY_SHA256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return scope, signed, hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def s3_store(backend: str, project: str, env: Mapping[str, str]) -> S3Store | None:
    """The S3Store of an `s3://` URL this client can read as Pulumi would; None otherwise."""
    url = urlparse(backend)
    if url.scheme.lower() != "s3" or not url.netloc:
        return None
    params = parse_qs(url.query)
    if set(params) - S3_PARAMS or any(len(v) != 1 for v in params.values()):
        return None
    one = {name: values[0] for name, values in params.items()}
    path_style = one.get("use_path_style", one.get("s3ForcePathStyle", "")).lower() == "true"
    endpoint = one.get("endpoint", "")
    region = one.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not (path_style and endpoint.startswith(("http://", "https://")) and region):
        return None
    if not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
        return None  # profiles, SSO, instance roles: pulumi resolves those
    creds = {
        k: env[k]
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        if env.get(k)
    }
    return S3Store(endpoint, url.netloc, url.path.strip("/"), region, creds, project)


def open_store(
    backend: str, project: str, env: Mapping[str, str] | None = None
) -> CheckpointStore | None:
    """The store of `backend` when its layout is the project-scoped one this code reads
    (`.pulumi/meta.yaml` version 1); None otherwise."""
    env = os.environ if env is None else env
    root = backends.file_backend_root(backend)
    store: CheckpointStore
    try:
        if root is not None:
            text: str | bytes | None = (root / ".pulumi" / "meta.yaml").read_text()
            store = FileStore(root, project)
        else:
            s3 = s3_store(backend, project, env)
            if s3 is None:
                return None
            text, store = s3.get(s3.meta_key), s3
        meta = yaml.safe_load(text) if text is not None else None
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != 1:
        return None
    return store
