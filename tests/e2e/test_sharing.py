"""Teams sharing environments: several users, hosts and backends on one cluster.

Every test here runs through the real CLI as separate users (own HOME and PULUMI_HOME, own
host name in a UTS namespace) sharing a file, PostgreSQL or S3 (SeaweedFS) backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pulumi import automation as auto

from preview_stack import naming
from testbed import Testbed
from tests.support.cli import start_argv
from tests.support.kube import Kube, apply, objects_of, previews
from tests.support.polling import wait_until
from tests.support.processes import kill_process_group
from tests.support.teams import Backend, User, make_backend
from tests.support.workloads import apply_unschedulable_target

pytestmark = pytest.mark.cluster
Team = Callable[..., User]


def finish(proc: Any, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_concurrent_first_starts_keep_both_targets_and_teammates_share_the_key(
    team: Team, backend: Backend, kube: Kube, staging: str
) -> None:
    key = f"sh-{backend.kind}-both"
    ann, bob, cy = team("ann"), team("bob"), team("cy")
    # Two first starts on a new key at the same moment, from two hosts.
    procs = [ann.spawn(*start_argv("users", key)), bob.spawn(*start_argv("orders", key))]
    results = [finish(p) for p in procs]
    for code, _out, err in results:
        assert code == 0, err
    assert set(previews(kube, key)) == {f"users-{key}", f"orders-{key}"}
    # What each reported is what happened: the environment holds both.
    assert key in backend.stack_keys()
    shown = cy.run("status", "-k", key, "-o", "json")
    assert shown.code == 0, shown.stderr
    [env] = shown.json()
    assert {p["target"] for p in env["pods"]} == {"deployment/users", "deployment/orders"}

    extended = cy.run("extend", "-k", key, "--by", "30m", "-o", "json")
    assert extended.code == 0, extended.stderr
    removed = bob.run("clean", "-k", key, "-t", "deployment/orders", "-o", "json")
    assert removed.code == 0 and removed.json()["removed"] == ["deployment/orders"]
    assert set(previews(kube, key)) == {f"users-{key}"}
    cleaned = ann.run("clean", "-k", key)
    assert cleaned.code == 0, cleaned.stderr
    assert key not in backend.stack_keys()
    assert wait_until(lambda: objects_of(kube, key) == [])


def test_a_failed_start_undoes_only_itself(
    team: Team, backend: Backend, kube: Kube, staging: str, testbed: Testbed
) -> None:
    key = f"sh-{backend.kind}-undo"
    apply_unschedulable_target(testbed, "never-ready")
    ann, bob = team("ann"), team("bob")
    failing = ann.spawn(*start_argv("never-ready", key, "--timeout", "12"))
    time.sleep(2)
    ok = bob.run(*start_argv("orders", key))  # lands before, during or after the failing one
    code, _out, err = finish(failing)
    assert ok.code == 0, ok.stderr
    assert code == 1 and "never-ready" in err
    # The failing target is gone; the teammate's target and the stack stay.
    assert wait_until(lambda: set(previews(kube, key)) == {f"orders-{key}"})
    assert key in backend.stack_keys()
    assert bob.run("clean", "-k", key).code == 0


def test_a_start_never_shortens_the_environments_life(
    team: Team, kube: Kube, staging: str, backend: Backend
) -> None:
    if backend.kind != "file":
        pytest.skip("expiry arithmetic is backend-independent; covered on file")
    key = "sh-ttl-keep"
    ann, bob = team("ann"), team("bob")
    first = ann.run(*start_argv("users", key, "--ttl", "infinite"))
    assert first.code == 0 and first.json()["expiresAt"] is None, first.stderr
    added = bob.run(*start_argv("orders", key))  # no --ttl: 60 minutes would be shorter
    assert added.code == 0 and added.json()["expiresAt"] is None, added.stderr
    shortened = bob.run("extend", "-k", key, "--ttl", "2h", "-o", "json")  # only extend may
    assert shortened.code == 0 and shortened.json()["expiresAt"] is not None
    assert ann.run("clean", "-k", key).code == 0


def test_another_backends_environment_is_never_touched(
    kube: Kube,
    staging: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    key = "sh-owned"
    mine = make_backend("file", request, tmp_path_factory.mktemp("team-a"))
    theirs = make_backend("postgres", request, tmp_path_factory.mktemp("team-b"))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    ann = User("ann", "ann-host", mine, tmp_path / "a")
    zed = User("zed", "zed-host", theirs, tmp_path / "b")
    started = ann.run(*start_argv("users", key))
    assert started.code == 0, started.stderr
    before = sorted(objects_of(kube, key))

    cleaned = zed.run("clean", "-k", key, "-o", "json")
    assert cleaned.code == 0 and cleaned.json()["cleaned"] is False, cleaned.stderr
    assert "this backend has no environment" in cleaned.json()["message"]
    assert sorted(objects_of(kube, key)) == before

    clash = zed.run(*start_argv("users", key))
    assert clash.code == 1
    lines = clash.stderr.strip().splitlines()
    assert len(lines) == 1 and "another backend" in lines[0] and "ann" in lines[0]
    assert "use another key" in lines[0]
    assert key not in theirs.stack_keys()
    assert sorted(objects_of(kube, key)) == before
    assert ann.run("clean", "-k", key).code == 0


def test_records_are_hints_the_backend_decides(
    team: Team, backend: Backend, kube: Kube, staging: str, testbed: Testbed
) -> None:
    if backend.kind != "file":
        pytest.skip("the reaper's record handling is backend-independent; covered on file")
    ann = team("ann")
    live, lost = "sh-live", "sh-lost"
    assert ann.run(*start_argv("users", live, "--ttl", "1h")).code == 0
    assert ann.run(*start_argv("orders", lost, "--ttl", "3s")).code == 0
    record = kube.core.read_namespaced_config_map(naming.record_name(live), "staging")
    # A forged record with the real labels but a past expiry, in another namespace, and one
    # with a naive timestamp: neither may destroy anything or crash the round.
    forged = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.record_name(live),
            "namespace": "default",
            "labels": dict(record.metadata.labels),
            "annotations": {naming.ANNOTATION_EXPIRES_AT: "2020-01-01T00:00:00Z"},
        },
        "data": {},
    }
    naive = json.loads(json.dumps(forged))
    naive["metadata"]["name"] = "naive-record"
    naive["metadata"]["annotations"] = {naming.ANNOTATION_EXPIRES_AT: "2020-01-01T00:00:00"}
    apply(testbed, forged, naive)
    # The expired environment's record is lost (deleted by hand): the backend still knows.
    kube.core.delete_namespaced_config_map(naming.record_name(lost), "staging")
    time.sleep(4)
    reaped = ann.run("reap", "-o", "json")
    assert reaped.code == 0, reaped.stderr
    outcomes = {r["key"]: r for r in json.loads(reaped.stdout)["results"]}
    assert outcomes[lost]["outcome"] == "reaped"
    assert live not in outcomes  # the backend says it is not due: records are never read
    assert set(previews(kube, live)) == {f"users-{live}"}
    assert lost not in backend.stack_keys() and live in backend.stack_keys()
    assert wait_until(lambda: previews(kube, lost) == {})
    testbed.kubectl(
        "delete", "configmap", "-n", "default", naming.record_name(live), "naive-record"
    )
    assert ann.run("clean", "-k", live).code == 0


def test_a_killed_update_lock_is_taken_over_only_when_provably_stale(
    team: Team, backend: Backend, kube: Kube, staging: str, testbed: Testbed
) -> None:
    key = f"sh-{backend.kind}-lock"
    apply_unschedulable_target(testbed, "hangs-lock")
    bob = team("bob", "bob-host")
    proc = bob.spawn(*start_argv("hangs-lock", key, "--timeout", "300"))
    try:
        assert wait_until(lambda: bool(previews(kube, key)), timeout=120)
    finally:
        kill_process_group(proc)  # as a cancelled CI job would
    # From another host the holder's death cannot be proven and the lock is young: wait,
    # then refuse with the holder named.
    ann = team("ann", "ann-host")
    busy = ann.run("clean", "-k", key, env={"PREVIEW_ENV_LOCK_WAIT": "3"})
    assert busy.code == 1, busy.stderr
    assert "bob-host" in busy.stderr and "locked" in busy.stderr
    assert previews(kube, key)
    # On the holder's host its PID is provably gone: taken over at once, pending cleared.
    again = team("bob2", "bob-host")
    cleaned = again.run("clean", "-k", key)
    assert cleaned.code == 0, cleaned.stderr
    assert key not in backend.stack_keys()
    assert wait_until(lambda: objects_of(kube, key) == [])


def test_shared_backends_need_the_teams_passphrase(
    team: Team, backend: Backend, kube: Kube, staging: str
) -> None:
    if backend.kind == "file":
        pytest.skip("a private file backend may use the empty passphrase")
    key = f"sh-{backend.kind}-secret"
    ann = team("ann")
    unset = {"PULUMI_CONFIG_PASSPHRASE": ""}
    refused = ann.run(*start_argv("users", key), env=unset)
    assert refused.code == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "PULUMI_CONFIG_PASSPHRASE" in refused.stderr
    assert key not in backend.stack_keys() and previews(kube, key) == {}

    assert ann.run(*start_argv("users", key)).code == 0
    wrong = ann.run("extend", "-k", key, "--by", "1m", env={"PULUMI_CONFIG_PASSPHRASE": "nope"})
    assert wrong.code == 1
    assert "PULUMI_CONFIG_PASSPHRASE" in wrong.stderr.strip().splitlines()[-1]
    assert ann.run("clean", "-k", key).code == 0


def test_file_and_s3_backends_are_scanned_from_their_checkpoints(
    team: Team, backend: Backend, kube: Kube, staging: str, tmp_path: Path
) -> None:
    """Issue 15: `status` and the reaper's scan read file and S3 checkpoints directly (no
    `pulumi` process at all: a `pulumi` that fails is first on PATH), and start, extend
    and clean read the previous spec from the checkpoint under the lock."""
    if backend.kind == "postgres":
        pytest.skip("PostgreSQL stacks are read through `pulumi`")
    key = f"sh-{backend.kind}-scan"
    ann = team("ann")
    assert ann.run(*start_argv("users", key, "--ttl", "1h")).code == 0
    assert ann.run(*start_argv("orders", key)).code == 0  # the previous spec, read back
    extended = ann.run("extend", "-k", key, "--by", "1h", "-o", "json")
    assert extended.code == 0, extended.stderr
    broken = tmp_path / "no-pulumi"
    broken.mkdir()
    (broken / "pulumi").write_text("#!/bin/sh\necho no pulumi here >&2\nexit 1\n")
    (broken / "pulumi").chmod(0o755)
    path = {"PATH": f"{broken}:{ann.env()['PATH']}"}
    shown = ann.run("status", "-o", "json", env=path)
    assert shown.code == 0, shown.stderr
    [env] = [e for e in shown.json() if e["key"] == key]
    assert {p["target"].split("/")[1] for p in env["pods"]} == {"users", "orders"}
    assert env["expiresAt"] == extended.json()["expiresAt"]
    scanned = ann.run("reap", "--dry-run", "-o", "json", env=path)
    assert scanned.code == 0, scanned.stderr
    assert key not in {r["key"] for r in json.loads(scanned.stdout)["results"]}
    assert ann.run("clean", "-k", key).code == 0
    assert key not in backend.stack_keys()
    assert wait_until(lambda: objects_of(kube, key) == [])


def test_status_lists_many_stacks_on_a_postgres_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Pulumi's PostgreSQL backend deadlocks listing 4+ stacks with its default parallelism
    (one pooled connection held while a second is awaited); preview-env lists with one."""
    shared = make_backend("postgres", request, tmp_path_factory.mktemp("many"))
    url = shared.url.replace("sslmode=disable", "sslmode=disable&table=many_stacks")
    backend = Backend("postgres", url, shared.env)
    workspace = auto.LocalWorkspace(
        env_vars={"PULUMI_BACKEND_URL": url, **backend.env},
        project_settings=auto.ProjectSettings(name=naming.PROJECT, runtime="python"),
    )
    for index in range(6):
        workspace.create_stack(f"many-{index}")
    user = User("ann", "ann-host", backend, tmp_path)
    shown = user.run("status", "-o", "json", timeout=120)
    assert shown.code == 0, shown.stderr
    assert {env["key"] for env in shown.json()} >= {f"many-{i}" for i in range(6)}
