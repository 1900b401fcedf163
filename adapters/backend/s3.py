"""Pulumi's lock files in an S3 backend's bucket, read without taking or touching them.

Pulumi's diy backends (file and S3 alike, through gocloud's blob API) keep a held stack
lock as `.pulumi/locks/<org>/<project>/<stack>/<id>.json` holding pid, username, hostname
and timestamp. One listing of that folder plus one GET per lock (there is normally one).
Credentials come from the same places the AWS SDK in `pulumi` looks (AWS_* variables, the
shared credentials file and AWS_PROFILE, then the instance or container role).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from minio import Minio
from minio.credentials.providers import (
    AWSConfigProvider,
    ChainedProvider,
    EnvAWSProvider,
    IamAwsProvider,
)
from minio.error import MinioException

AWS_ENDPOINT = "s3.amazonaws.com"


def client_and_prefix(url: str) -> tuple[Minio, str, str]:
    """The client, bucket and key prefix of an `s3://bucket[/path]?endpoint=...&region=...`
    backend URL (gocloud's s3blob form: `endpoint`, `region`, `prefix`, `disableSSL`)."""
    parsed = urlparse(url)
    params = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    endpoint = params.get("endpoint") or AWS_ENDPOINT
    secure = params.get("disableSSL", params.get("disable_https", "false")).lower() != "true"
    if "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
        secure = scheme.lower() == "https"
    prefix = "/".join(p.strip("/") for p in (parsed.path, params.get("prefix", "")) if p.strip("/"))
    client = Minio(
        endpoint.rstrip("/"),
        secure=secure,
        region=params.get("region") or None,
        credentials=ChainedProvider(
            [EnvAWSProvider(), AWSConfigProvider(profile=params.get("profile")), IamAwsProvider()]
        ),
    )
    return client, parsed.netloc, f"{prefix}/" if prefix else ""


def lock_files(url: str, folder: str) -> list[tuple[str, str]]:
    """(`s3://bucket/key`, text) of each `*.json` lock under `folder` (relative to the
    backend's root); [] when the bucket cannot be read (status then says only "locked")."""
    try:
        client, bucket, prefix = client_and_prefix(url)
        found = []
        listing = client.list_objects(bucket, prefix=f"{prefix}{folder.strip('/')}/")
        for item in listing:
            name = item.object_name or ""
            if not name.endswith(".json"):
                continue
            try:
                response = client.get_object(bucket, name)
            except MinioException:
                continue  # released while we looked
            try:
                found.append((f"s3://{bucket}/{name}", response.data.decode("utf-8", "replace")))
            finally:
                response.close()
                response.release_conn()
        return sorted(found)
    except (MinioException, ValueError, OSError):
        return []
