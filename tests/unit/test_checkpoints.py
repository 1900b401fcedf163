"""Reading stack outputs from a DIY backend's checkpoint (preview_stack.checkpoints)."""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import pytest
import zstandard

from preview_stack import checkpoints
from preview_stack.config import TargetPath
from preview_stack.derive import redacted
from preview_stack.spec import EnvironmentSpec, EnvRules, ServiceSpec

SECRET = {checkpoints.SECRET_SIG: "1b47061264138c4ac30d75fd1eb44270", "ciphertext": "v1:x"}


def _env(override: dict[str, str] | None = None) -> EnvironmentSpec:
    service = ServiceSpec(
        target=TargetPath.parse("deployment/users/container/app"),
        namespace="staging",
        image="ghcr.io/acme/users:1",
        env=EnvRules(override=override or {}),
    )
    return EnvironmentSpec(
        key="pr-1",
        owner="me",
        created_at="2026-01-01T00:00:00Z",
        expires_at="2026-01-01T01:00:00Z",
        ttl_seconds=3600,
        services=[service],
    )


def _checkpoint(outputs: dict[str, Any] | None, version: int = 3) -> bytes:
    resources = None
    if outputs is not None:
        resources = [
            {"type": "pulumi:pulumi:Stack", "urn": "urn:x", "outputs": outputs},
            {"type": "kubernetes:apps/v1:Deployment", "urn": "urn:y", "outputs": {}},
        ]
    latest = {"manifest": {}, "resources": resources}
    return json.dumps({"version": version, "checkpoint": {"stack": "x", "latest": latest}}).encode()


def _outputs(env: EnvironmentSpec) -> dict[str, Any]:
    public = redacted(env)
    return {
        "key": env.key,
        "spec": SECRET,
        checkpoints.PUBLIC_SPEC: json.loads(public.model_dump_json()),
        checkpoints.SPEC_IS_PUBLIC: public == env,
    }


def _zstd_streamed(data: bytes) -> bytes:
    """zstd as Go's encoders write it: streamed, no content size in the frame header."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as writer:
        writer.write(data)
    return out.getvalue()


def test_public_spec_is_read_plain_gzipped_or_zstd() -> None:
    env = _env({"TOKEN": "hunter2"})
    plain = _checkpoint(_outputs(env))
    for raw in (
        plain,
        gzip.compress(plain),
        zstandard.ZstdCompressor().compress(plain),
        _zstd_streamed(plain),
    ):
        outputs = checkpoints.stack_outputs(raw)
        assert isinstance(outputs, dict)
        assert checkpoints.public_spec(outputs) == redacted(env)
        # A secret was redacted: the whole spec needs pulumi.
        assert checkpoints.full_spec(outputs) is checkpoints.UNREADABLE


def test_full_spec_when_nothing_was_redacted() -> None:
    env = _env()
    outputs = checkpoints.stack_outputs(_checkpoint(_outputs(env)))
    assert isinstance(outputs, dict)
    assert checkpoints.full_spec(outputs) == env


def test_empty_and_new_stacks_hold_nothing() -> None:
    assert checkpoints.stack_outputs(_checkpoint(None)) == {}
    emptied = checkpoints.stack_outputs(_checkpoint({"spec": None, "passphraseCheck": SECRET}))
    assert isinstance(emptied, dict)
    assert checkpoints.public_spec(emptied) is None
    assert checkpoints.full_spec(emptied) is None


def test_anything_unknown_falls_back_to_pulumi() -> None:
    env = _env()
    assert checkpoints.stack_outputs(_checkpoint(_outputs(env), version=99)) is (
        checkpoints.UNREADABLE
    )
    assert checkpoints.stack_outputs(b'{"version": 3, "checkp') is checkpoints.UNREADABLE
    older = {"key": env.key, "spec": SECRET}  # made before publicSpec existed
    assert checkpoints.public_spec(older) is checkpoints.UNREADABLE
    forged = {**_outputs(env), checkpoints.PUBLIC_SPEC: {"key": "pr-1"}}  # does not validate
    assert checkpoints.public_spec(forged) is checkpoints.UNREADABLE
    hidden = {**_outputs(env), checkpoints.PUBLIC_SPEC: SECRET}
    assert checkpoints.public_spec(hidden) is checkpoints.UNREADABLE


@pytest.mark.parametrize(
    "name, found",
    [
        ("pr-1.json", "pr-1"),
        ("pr-1.json.gz", "pr-1"),
        ("pr-1.json.zst", "pr-1"),
        ("pr-1.json.bak", None),
        ("pr-1.json.zst.bak", None),
        ("pr-1.json.attrs", None),
        ("pr-1.json.gz.bak.attrs", None),
        ("pr-1.json.1764924000123456789", None),  # PULUMI_RETAIN_CHECKPOINTS
        ("pr-1.json.zst.1764924000123456789", None),
        ("pr-1.json.18a2b3c4d5e6f.tmp", None),  # fileblob's no_tmp_dir writes
    ],
)
def test_stack_file_names_pulumi_writes_are_known(name: str, found: str | None) -> None:
    assert checkpoints.stack_file_key(name) == found


@pytest.mark.parametrize("name", ["pr-1.json.foo", "pr-1.yaml", "pr-1.json.xz", "README"])
def test_a_stack_file_name_nobody_knows_is_unknown(name: str) -> None:
    assert checkpoints.stack_file_key(name) is checkpoints.UNKNOWN
