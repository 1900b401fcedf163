"""TTL that holds without anyone's laptop: `extend` and `reap` on the real test bed."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from preview_stack import naming
from tests.support.cli import Cli, spawn_cli
from tests.support.kube import Kube, objects_of
from tests.support.paths import REPO
from tests.support.polling import wait_until
from tests.support.processes import kill_process_group
from tests.support.stacks import stack_names
from tests.support.workloads import apply_unschedulable_target

pytestmark = pytest.mark.cluster


def start_targetless(cli: Cli, key: str, ttl: str, staging: str) -> dict[str, Any]:
    result = cli(
        "start",
        "-t",
        "targetless",
        "-n",
        staging,
        "-i",
        f"acme/{key}:1",
        "-k",
        key,
        "--ttl",
        ttl,
        "--output",
        "json",
    )
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = result.json()
    return doc


def reap(cli: Cli, *args: str) -> tuple[int, dict[str, str]]:
    result = cli("reap", "--output", "json", *args)
    outcomes = {r["key"]: r["outcome"] for r in json.loads(result.stdout)["results"]}
    return result.code, outcomes


def parse(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_reap_removes_exactly_the_expired_one(cli: Cli, kube: Kube, staging: str) -> None:
    start_targetless(cli, "ttl-short", "3s", staging)
    start_targetless(cli, "ttl-long", "10m", staging)
    start_targetless(cli, "ttl-forever", "infinite", staging)
    time.sleep(4)

    code, dry = reap(cli, "--dry-run")
    assert code == 0 and dry == {"ttl-short": "would-reap"}
    assert objects_of(kube, "ttl-short") != []  # a dry run removes nothing

    code, outcomes = reap(cli)
    assert code == 0 and outcomes == {"ttl-short": "reaped"}
    assert wait_until(lambda: objects_of(kube, "ttl-short") == [])
    stacks = stack_names()
    assert "ttl-short" not in stacks and {"ttl-long", "ttl-forever"} <= stacks
    assert objects_of(kube, "ttl-long") and objects_of(kube, "ttl-forever")

    status = {e["key"]: e for e in cli("status", "--output", "json").json()}
    assert status["ttl-forever"]["ttl"] == "infinite" and status["ttl-forever"]["expiresAt"] is None
    assert status["ttl-long"]["ttl"].endswith("remaining")
    for key in ("ttl-long", "ttl-forever"):
        assert cli("clean", "-k", key).code == 0


def test_extend_moves_the_expiry_and_reap_respects_it(cli: Cli, kube: Kube, staging: str) -> None:
    start_targetless(cli, "ttl-extend", "4s", staging)
    extended = cli("extend", "-k", "ttl-extend", "--ttl", "10m", "--output", "json")
    assert extended.code == 0, extended.stderr
    new_expiry = parse(extended.json()["expiresAt"])
    assert new_expiry - dt.datetime.now(dt.UTC) > dt.timedelta(minutes=9)
    deployment = kube.apps.read_namespaced_deployment("ttl-extend-ttl-extend", staging)
    assert (
        deployment.metadata.annotations[naming.ANNOTATION_EXPIRES_AT]
        == extended.json()["expiresAt"]
    )
    time.sleep(5)
    code, outcomes = reap(cli)
    assert code == 0 and "ttl-extend" not in outcomes

    by = cli("extend", "-k", "ttl-extend", "--by", "30m", "--output", "json")
    assert by.code == 0, by.stderr
    assert parse(by.json()["expiresAt"]) - new_expiry == dt.timedelta(minutes=30)

    both = cli("extend", "-k", "ttl-extend", "--ttl", "1h", "--by", "1h")
    assert both.code == 2 and "exactly one of --ttl" in both.stderr
    assert cli("clean", "-k", "ttl-extend").code == 0
    unknown = cli("extend", "-k", "ttl-extend", "--ttl", "1h")
    assert unknown.code == 2 and "no environment 'ttl-extend'" in unknown.stderr


def test_reap_after_manual_deletion(cli: Cli, kube: Kube, staging: str) -> None:
    start_targetless(cli, "ttl-manual", "3s", staging)
    kube.apps.delete_namespaced_deployment("ttl-manual-ttl-manual", staging)
    time.sleep(4)
    code, outcomes = reap(cli)
    assert code == 0 and outcomes.get("ttl-manual") == "reaped"
    assert "ttl-manual" not in stack_names()
    assert wait_until(lambda: objects_of(kube, "ttl-manual") == [])


def test_killed_start_leaves_a_lock_that_reap_recovers(
    cli: Cli, kube: Kube, staging: str, testbed: Any
) -> None:
    apply_unschedulable_target(testbed, "hangs")
    proc = spawn_cli(
        "start",
        "-i",
        "hangs:2",
        "-k",
        "ttl-killed",
        "-t",
        "deployment/hangs",
        "-n",
        staging,
        "--ttl",
        "2s",
        "--timeout",
        "300",
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(
            lambda: (
                any(o.startswith("cm/") for o in objects_of(kube, "ttl-killed"))
                and any(o.startswith("deploy/") for o in objects_of(kube, "ttl-killed"))
            ),
            timeout=120,
        )
    finally:
        kill_process_group(proc)  # as a cancelled CI job would
    backend = Path(os.environ["PULUMI_BACKEND_URL"].removeprefix("file://"))
    locks = list(
        (backend / ".pulumi" / "locks" / "organization" / "preview-env" / "ttl-killed").glob(
            "*.json"
        )
    )
    assert locks, "the killed update left its lock"

    # A too-short threshold could take a live update's lock: refused.
    short = cli("reap", "--stale-lock-after", "1s")
    assert short.code == 2 and "shorter than the longest update" in short.stderr
    time.sleep(2)
    # The holder ran on this host and its PID is gone: provably stale, taken over at once
    # (a lock from another host waits for the threshold: see test_sharing).
    code, outcomes = reap(cli, "--stale-lock-after", "1h")
    assert code == 0 and outcomes == {"ttl-killed": "reaped"}
    assert "ttl-killed" not in stack_names()
    assert wait_until(lambda: objects_of(kube, "ttl-killed") == [])


def test_reap_every_reaps_while_running_and_stops_on_sigterm(
    cli: Cli, kube: Kube, staging: str
) -> None:
    proc = spawn_cli("reap", "--every", "2s", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        start_targetless(cli, "ttl-loop", "3s", staging)
        assert wait_until(lambda: "ttl-loop" not in stack_names(), timeout=60)
        assert objects_of(kube, "ttl-loop") == [] or wait_until(
            lambda: objects_of(kube, "ttl-loop") == []
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "reaped     ttl-loop" in out


def test_second_start_waits_for_the_lock_then_fails_clearly_and_clean_recovers(
    cli: Cli, kube: Kube, staging: str, testbed: Any
) -> None:
    apply_unschedulable_target(testbed, "slow")
    key = "lock-busy"
    first = spawn_cli(
        "start",
        "-i",
        "slow:2",
        "-k",
        key,
        "-t",
        "deployment/slow",
        "-n",
        staging,
        "--timeout",
        "300",
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(
            lambda: any(o.startswith("deploy/") for o in objects_of(kube, key)), timeout=120
        )
        second = cli(
            "start",
            "-f",
            str(REPO / "examples" / "mirrord.json"),
            "-i",
            "users:2",
            "-k",
            key,
            env={"PREVIEW_ENV_LOCK_WAIT": "5"},
        )
        assert second.code == 1
        assert "is being updated by" in second.stderr
        assert f"(pid {first.pid}" in second.stderr or "(pid " in second.stderr
        assert "(its stack is locked)" in second.stderr
        assert first.poll() is None  # the first update was not disturbed
    finally:
        kill_process_group(first)  # as a cancelled CI job would
    time.sleep(2)
    cleaned = cli("clean", "-k", key)  # the holder's PID is gone: recovered at once
    assert cleaned.code == 0, cleaned.stderr
    assert key not in stack_names()
    assert wait_until(lambda: objects_of(kube, key) == [])
