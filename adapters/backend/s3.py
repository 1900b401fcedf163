"""An S3 backend's store: checkpoints, lock objects and holder records in its bucket, at
the keys preview_stack.backends names, through the MinIO client (boto3 cannot be installed
beside `kubernetes` >= 37: their `python-dateutil` ranges exclude each other).

Credentials come from the same places the AWS SDK in `pulumi` looks (AWS_* variables, the
shared credentials file and AWS_PROFILE, then the instance or container role). Lock
objects are listed once per stack and read one GET each (there is normally one).
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Mapping

import certifi
import urllib3
from minio import Minio
from minio.credentials.providers import (
    AWSConfigProvider,
    ChainedProvider,
    IamAwsProvider,
    Provider,
    StaticProvider,
)
from minio.error import InvalidResponseError, MinioException, S3Error

from adapters.backend.checkpoints import CheckpointStore, stack_keys
from preview_stack import backends
from preview_stack.backends import S3Location
from preview_stack.checkpoints import layout_is_known

TIMEOUT_SECONDS = 10
MISSING = ("NoSuchKey", "NoSuchObject", "ResourceNotFound")
NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


def _missing(exc: MinioException) -> bool:
    """Whether the error says there is no such object (a 404, with S3's XML body or not)."""
    if isinstance(exc, S3Error):
        return exc.code in MISSING
    return isinstance(exc, InvalidResponseError) and getattr(exc, "_code", None) == 404


def region(location: S3Location, env: Mapping[str, str]) -> str | None:
    """The bucket's region as `pulumi` takes it: the URL's, else the AWS_* variables'."""
    return location.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None


def credentials(location: S3Location, env: Mapping[str, str]) -> Provider:
    """The AWS SDK's order: keys in the environment, the shared files, the role."""
    key = env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY")
    secret = env.get("AWS_SECRET_ACCESS_KEY") or env.get("AWS_SECRET_KEY")
    providers: list[Provider] = []
    if key and secret:
        providers.append(StaticProvider(key, secret, env.get("AWS_SESSION_TOKEN")))
    providers += [AWSConfigProvider(profile=location.profile), IamAwsProvider()]
    return ChainedProvider(providers)


def client(location: S3Location, env: Mapping[str, str]) -> Minio:
    """The one client of the bucket: requests time out after TIMEOUT_SECONDS and are tried
    twice more (a store that fails lets the caller ask `pulumi` instead)."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=TIMEOUT_SECONDS, read=TIMEOUT_SECONDS),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        location.endpoint,
        secure=location.secure,
        region=region(location, env),
        credentials=credentials(location, env),
        http_client=http,
    )


class S3Store:
    """The bucket's objects under the backend's prefix (`s3://bucket/prefix/.pulumi/...`)."""

    def __init__(
        self, location: S3Location, project: str, env: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if env is None else env
        self.client = client(location, env)
        self.bucket, self.prefix, self.project = location.bucket, location.prefix, project
        # Checkpoints are read here only where this client reads the bucket as `pulumi`
        # does: see S3Location.direct; keys from the environment, not profiles or roles.
        self.direct = bool(
            location.direct
            and region(location, env)
            and env.get("AWS_ACCESS_KEY_ID")
            and env.get("AWS_SECRET_ACCESS_KEY")
        )

    def checkpoints(self) -> CheckpointStore | None:
        """This store when checkpoints can be read directly and the bucket's layout is the
        project-scoped one this code reads."""
        if not self.direct:
            return None
        try:
            meta = self.get(backends.META)
        except OSError:
            return None
        return self if layout_is_known(meta) else None

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _list(self, prefix: str) -> list[tuple[str, dt.datetime]]:
        """(name after `prefix`, last modified) of every object whose key (under the
        backend's root) starts with `prefix`."""
        full = f"{self.prefix}{prefix}"
        try:
            return [
                (name[len(full) :], item.last_modified or NEVER)
                for item in self.client.list_objects(self.bucket, prefix=full, recursive=True)
                if (name := item.object_name or "").startswith(full)
            ]
        except (MinioException, urllib3.exceptions.HTTPError, ValueError) as exc:
            raise OSError(f"S3 list {full}: {exc}") from None

    def get(self, key: str) -> bytes | None:
        """Object `key` of the backend; None when there is none; OSError when unreadable."""
        try:
            response = self.client.get_object(self.bucket, f"{self.prefix}{key}")
        except (MinioException, urllib3.exceptions.HTTPError, ValueError) as exc:
            if isinstance(exc, MinioException) and _missing(exc):
                return None
            raise OSError(f"S3 GET {self.prefix}{key}: {exc}") from None
        try:
            return response.data
        finally:
            response.close()
            response.release_conn()

    # ------------------------------------------------------------------ checkpoints
    def stacks(self) -> dict[str, bool]:
        folder = f"{backends.stacks_folder(self.project)}/"
        names = [name for name, _ in self._list(folder) if "/" not in name]
        keys = stack_keys(names, self._where(folder))
        locked = {
            name.split("/", 1)[0]
            for name, _ in self._list(f"{backends.locks_folder(self.project)}/")
            if name.endswith(".json") and "/" in name
        }
        return {key: key in locked for key in sorted(keys)}

    def read(self, key: str) -> bytes | None:
        # One listing names the checkpoint (`.json`, `.json.gz` or `.json.zst`; the newer, as
        # Pulumi picks) and its GET reads it: both fresh, for reads under the lock.
        names = set(backends.checkpoint_keys(self.project, key))
        start = f"{backends.stacks_folder(self.project)}/{key}.json"
        found = [
            (modified, f"{start}{rest}")
            for rest, modified in self._list(start)
            if f"{start}{rest}" in names
        ]
        if not found:
            return None
        return self.get(max(found)[1])

    # ------------------------------------------------------------------ locks
    def _text(self, key: str) -> str | None:
        """Object `key` as text; None when it cannot be read (a lock released while we
        looked). Errors of the connection itself are raised."""
        try:
            response = self.client.get_object(self.bucket, f"{self.prefix}{key}")
        except MinioException:
            return None
        try:
            return response.data.decode("utf-8", "replace")
        finally:
            response.close()
            response.release_conn()

    def locks(self, stack: str) -> list[tuple[str, str, str]]:
        folder = backends.locks_folder(self.project, stack)
        found = []
        for item in self.client.list_objects(self.bucket, prefix=f"{self.prefix}{folder}/"):
            name = (item.object_name or "").rsplit("/", 1)[-1]
            if not (item.object_name or "").endswith(".json"):
                continue
            text = self._text(f"{folder}/{name}")
            if text is not None:
                found.append((name, self._where(f"{folder}/{name}"), text))
        return sorted(found)

    def delete_lock(self, stack: str, name: str) -> None:
        key = f"{backends.locks_folder(self.project, stack)}/{name}"
        self.client.remove_object(self.bucket, f"{self.prefix}{key}")

    def read_holder(self, stack: str, name: str) -> str | None:
        return self._text(f"{backends.holders_folder(self.project, stack)}/{name}")

    def write_holder(self, stack: str, name: str, text: str) -> None:
        key = f"{self.prefix}{backends.holders_folder(self.project, stack)}/{name}"
        data = text.encode()
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))

    def delete_holder(self, stack: str, name: str) -> None:
        key = f"{backends.holders_folder(self.project, stack)}/{name}"
        self.client.remove_object(self.bucket, f"{self.prefix}{key}")
