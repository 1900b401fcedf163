"""How Pulumi's failures become ours (adapters.automation): one line with the cause, and which
backend conditions are momentary (tried again) on file, PostgreSQL and S3 backends."""

from __future__ import annotations

import pytest
from pulumi.automation import CommandResult
from pulumi.automation.errors import create_command_error

from adapters.automation import _summary, _transient

# What `pulumi up` prints when a Deployment never becomes Ready (pulumi-kubernetes joins
# its await errors): the cause is on the bullet lines, not on the `error:` line.
TIMED_OUT = (
    'the Kubernetes API server reported that "staging/branch-db-pr-7" failed to fully '
    "initialize or become live: 'branch-db-pr-7' timed out waiting to be Ready"
)
SEVERAL = f"""Updating (pr-7):
 +  kubernetes:apps/v1:Deployment branch-db-pr-7 creating (0s)
 +  kubernetes:apps/v1:Deployment branch-db-pr-7 creating (600s) error: 3 errors occurred:
Diagnostics:
  kubernetes:apps/v1:Deployment (branch-db-pr-7):
    error: 3 errors occurred:
    \t* {TIMED_OUT}
    \t* [MinimumReplicasUnavailable] Deployment does not have minimum availability.
    \t* [ErrImagePull] pulling image "ghcr.io/acme/branch-server:9": not found

  pulumi:pulumi:Stack (preview-env-pr-7):
    error: update failed

Resources:
    1 unchanged
"""


def _error(stdout: str, stderr: str = "", code: int = 255) -> object:
    return create_command_error(CommandResult(stdout=stdout, stderr=stderr, code=code))


def test_several_errors_give_the_first_one_in_one_line() -> None:
    summary = _summary(_error(SEVERAL))  # type: ignore[arg-type]
    assert "\n" not in summary
    assert "errors occurred" not in summary
    assert summary.startswith(TIMED_OUT), summary
    assert '[ErrImagePull] pulling image "ghcr.io/acme/branch-server:9"' in summary


def test_one_error_occurred_is_unwrapped_too() -> None:
    text = "Diagnostics:\n  x:y:Z (a):\n    error: 1 error occurred:\n    \t* quota exceeded\n"
    assert _summary(_error(text)) == "quota exceeded"  # type: ignore[arg-type]


S3_LOCK_GONE = (
    "error: could not create stack: blob (key "
    '".pulumi/locks/organization/preview-env/sh-s3-both/0f3c2a9e-1b7d-4a8e-9c51-2d4f6b8a7e10.json")'
    " (code=NotFound): operation error S3: GetObject, https response error StatusCode: 404, "
    "RequestID: 1, HostID: 2, NoSuchKey:"
)


@pytest.mark.parametrize(
    "stderr",
    [
        S3_LOCK_GONE,
        # The same lock object read by the PostgreSQL backend after it was released.
        'error: could not create stack: blob (key ".pulumi/locks/organization/preview-env/k/'
        '0f3c.json") (code=NotFound): key not found: sql: no rows in result set',
        # A file backend's lock file removed between listing and reading.
        'error: could not create stack: blob (key ".pulumi/locks/organization/preview-env/k/'
        '0f3c.json") (code=NotFound): open /b/.pulumi/locks/organization/preview-env/k/'
        "0f3c.json: no such file or directory",
    ],
)
def test_a_lock_that_vanished_while_read_is_momentary(stderr: str) -> None:
    assert _transient(_error("", stderr))  # type: ignore[arg-type]


def test_a_missing_stack_is_not_momentary() -> None:
    assert not _transient(_error("", "error: no stack named 'k' found"))  # type: ignore[arg-type]
