"""Operating previews without kubectl, through `python -m cli` on the test bed: truthful
states (updating with its holder, not-ready Unschedulable, orphaned), --glob/--owner for
`status` and `clean`, the PR comment in Markdown, and `reap --warn-before`."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from pulumi import automation as auto

from preview_stack import naming
from tests.support.cli import Cli, spawn_cli
from tests.support.kube import Kube, objects_of
from tests.support.polling import wait_until
from tests.support.processes import kill_process_group
from tests.support.stacks import stack_names
from tests.support.teams import User, make_backend
from tests.support.workloads import apply_unschedulable_target

pytestmark = pytest.mark.cluster


def start(cli: Cli, key: str, staging: str, *extra: str, owner: str = "ann") -> None:
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
        *extra,
        env={"PREVIEW_ENV_OWNER": owner},
    )
    assert result.code == 0, result.stderr


def states(cli: Cli, *args: str) -> dict[str, dict[str, Any]]:
    result = cli("status", "-o", "json", *args)
    assert result.code == 0, result.stderr
    return {env["key"]: env for env in result.json()}


def test_a_running_update_shows_updating_with_its_holder(
    cli: Cli, kube: Kube, staging: str, testbed: Any
) -> None:
    apply_unschedulable_target(testbed, "op-slow")
    key = "op-lock"
    first = spawn_cli(
        "start",
        "-i",
        "op-slow:2",
        "-k",
        key,
        "-t",
        "deployment/op-slow",
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
        env = states(cli, "-k", key)[key]
        assert env["state"] == "updating", env
        assert env["lockedBy"] and f"@{socket.gethostname()} (pid " in env["lockedBy"], env
        assert " since " in env["lockedBy"]
        text = cli("status", "-k", key)
        assert "updating: locked by " in text.stdout, text.stdout
        assert first.poll() is None  # reading the holder disturbed nothing
    finally:
        kill_process_group(first)
    time.sleep(2)
    assert cli("clean", "-k", key).code == 0


def test_an_unschedulable_pod_is_not_ready_and_says_why(
    cli: Cli, kube: Kube, staging: str, testbed: Any
) -> None:
    apply_unschedulable_target(testbed, "op-nowhere")
    key = "op-unsched"
    # A first update that fails records no spec (its stack has no outputs yet): add the
    # unschedulable target to an environment that already runs.
    start(cli, key, staging)
    try:
        started = cli(
            "start",
            "-i",
            "op-nowhere:2",
            "-k",
            key,
            "-t",
            "deployment/op-nowhere",
            "-n",
            staging,
            "--timeout",
            "8",
            "--keep-on-failure",
        )
        assert started.code == 1
        env = states(cli, "-k", key)[key]
        assert env["state"] == "not-ready", env
        assert "Unschedulable" in env["reason"], env
        stuck = [p for p in env["pods"] if p["name"].startswith("op-nowhere-")]
        assert [p["state"] for p in stuck] == ["not-ready"], env["pods"]
        assert stuck[0]["reason"].startswith("Unschedulable")
        assert env["ttl"].endswith("remaining")
    finally:
        assert cli("clean", "-k", key).code == 0


def test_a_kept_failed_first_start_is_not_ready_not_orphaned(
    cli: Cli, kube: Kube, staging: str, testbed: Any
) -> None:
    """A first start that fails and is kept has objects but no committed spec (the spec is
    exported only once every object is live): the backend's state still says what it is."""
    apply_unschedulable_target(testbed, "op-first")
    key = "op-kept"
    started = cli(
        "start",
        "-i",
        "op-first:2",
        "-k",
        key,
        "-t",
        "deployment/op-first",
        "-n",
        staging,
        "--timeout",
        "8",
        "--keep-on-failure",
        env={"PREVIEW_ENV_OWNER": "ann"},
    )
    try:
        assert started.code == 1, started.stderr
        assert objects_of(kube, key)  # kept
        env = states(cli, "-k", key)[key]
        assert env["state"] == "not-ready", env
        assert "first start failed" in env["reason"], env
        assert "objects kept" in env["reason"] and "no spec" in env["reason"], env
        assert env["owner"] == "ann", env
        assert env["namespaces"] == [staging], env
        text = cli("status", "-k", key)
        assert text.code == 0 and "orphaned" not in text.stdout, text.stdout
        assert "not-ready: first start failed" in text.stdout, text.stdout
        # --owner finds it by the owner its objects were declared with (no spec holds one).
        assert key in states(cli, "--owner", "ann")
        assert key not in states(cli, "--owner", "bob")
        bulk = cli("clean", "--owner", "ann", "--glob", "op-kept*", "--yes", "-o", "json")
        assert bulk.code == 0 and bulk.json()["cleaned"] == [key], bulk.stdout
    finally:
        if key in stack_names():
            assert cli("clean", "-k", key).code == 0
    assert key not in stack_names()


def test_a_kept_failed_first_start_keeps_its_ttl_and_shows_its_pods(
    cli: Cli, kube: Kube, staging: str, testbed: Any, tmp_path: Path
) -> None:
    """Issue 21 item 7: kept with a 120-minute TTL, a failed first start (no spec committed)
    is not reaped before its TTL; `status` shows its Pending pod and why, with its TTL, and
    does not call its own record planted."""
    apply_unschedulable_target(testbed, "op-ttl")
    key = "op-kept-ttl"
    config = tmp_path / "mirrord.json"
    config.write_text(json.dumps({"feature": {"preview": {"ttl_mins": 120}}}))
    started = cli(
        "start", "-f", str(config), "-i", "op-ttl:2", "-k", key, "-t", "deployment/op-ttl",
        "-n", staging, "--timeout", "8", "--keep-on-failure",
    )  # fmt: skip
    try:
        assert started.code == 1, started.stderr
        time.sleep(2)
        reaped = cli("reap", "-o", "json")
        assert reaped.code == 0, reaped.stderr
        assert key not in {r["key"] for r in reaped.json()["results"]}, reaped.stdout
        assert key in stack_names()
        assert any(o.startswith("deploy/") for o in objects_of(kube, key))

        shown = cli("status", "-k", key, "-o", "json")
        assert shown.code == 0, shown.stderr
        assert "planted" not in shown.stderr and "ignored record" not in shown.stderr
        [env] = shown.json()
        assert env["state"] == "not-ready", env
        assert "first start failed" in env["reason"] and "Unschedulable" in env["reason"], env
        [pod] = env["pods"]
        assert pod["name"].startswith(f"op-ttl-{key}-") and pod["phase"] == "Pending", pod
        assert pod["state"] == "not-ready" and pod["reason"].startswith("Unschedulable"), pod
        assert env["ttl"].startswith(("1h 59m", "2h")) and env["ttl"].endswith("remaining")
        assert env["expiresAt"]
        text = cli("status", "-k", key)
        assert "Unschedulable" in text.stdout and pod["name"] in text.stdout, text.stdout
        assert "planted" not in text.stderr, text.stderr
    finally:
        assert cli("clean", "-k", key).code == 0
    assert key not in stack_names()


def test_a_running_update_on_s3_shows_its_holder_from_another_host(
    kube: Kube, staging: str, testbed: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """S3 keeps Pulumi's lock files in the bucket: `status` on another host names the holder
    without taking the lock."""
    backend = make_backend("s3", request, tmp_path / "backend")
    homes = {name: tmp_path / f"home-{name}" for name in ("ann", "bob")}
    for home in homes.values():
        home.mkdir()
    ann = User("ann", "ann-host", backend, homes["ann"])
    bob = User("bob", "bob-host", backend, homes["bob"])
    apply_unschedulable_target(testbed, "op-s3-slow")
    key = "op-s3-lock"
    first = bob.spawn(
        "start",
        "-i",
        "op-s3-slow:2",
        "-k",
        key,
        "-t",
        "deployment/op-s3-slow",
        "-n",
        staging,
        "--timeout",
        "300",
    )
    try:
        assert wait_until(
            lambda: any(o.startswith("deploy/") for o in objects_of(kube, key)), timeout=120
        )
        shown = ann.run("status", "-k", key, "-o", "json")
        assert shown.code == 0, shown.stderr
        [env] = shown.json()
        assert env["state"] == "updating", env
        # Pulumi writes the OS user (root here) and host into the lock object.
        assert env["lockedBy"] and "@bob-host (pid " in env["lockedBy"], env
        assert " since " in env["lockedBy"]
        assert first.poll() is None  # reading the holder disturbed nothing
    finally:
        kill_process_group(first)
    time.sleep(2)
    cleaned = bob.run("clean", "-k", key)  # bob's host proves its own update is gone
    assert cleaned.code == 0, cleaned.stderr


def test_the_probe_grace_is_an_option_with_a_default(cli: Cli) -> None:
    shown = cli("status", "--help", env={"COLUMNS": "200"})
    assert shown.code == 0, shown.stderr
    assert "--probe-grace" in shown.stdout and "PREVIEW_ENV_PROBE_GRACE" in shown.stdout
    assert "default: 60s" in shown.stdout or "[default: 60s]" in shown.stdout, shown.stdout
    bad = cli("status", "--probe-grace", "soon")
    assert bad.code == 2 and "probe-grace" in bad.stderr, bad.stderr
    from_env = cli("status", env={"PREVIEW_ENV_PROBE_GRACE": "-5s"})
    assert from_env.code == 2, from_env.stderr


def test_objects_without_their_stack_are_orphaned(
    cli: Cli, kube: Kube, staging: str, testbed: Any
) -> None:
    key = "op-orphan"
    start(cli, key, staging)
    try:
        assert states(cli, "-k", key)[key]["state"] in ("ready", "starting")
        ws = auto.LocalWorkspace(
            project_settings=auto.ProjectSettings(name=naming.PROJECT, runtime="python")
        )
        ws.remove_stack(key, force=True)
        assert key not in stack_names()
        env = states(cli, "-k", key)[key]
        assert env["state"] == "orphaned", env
        assert any(o.startswith("pod staging/") for o in env["orphans"]), env
        assert f"record staging/{naming.record_name(key)}" in env["orphans"]
        assert key in states(cli)  # listed without -k too
        text = cli("status", "-k", key)
        assert "orphaned" in text.stdout and "orphaned object of op-orphan" in text.stdout
    finally:
        for kind in ("deployment", "service", "configmap"):
            testbed.kubectl("delete", kind, "-A", "-l", f"{naming.LABEL_KEY}={key}", "--wait=false")
    assert wait_until(lambda: objects_of(kube, key) == [], timeout=60)


def test_glob_and_owner_select_and_clean_exactly_the_matching_ones(
    cli: Cli, kube: Kube, staging: str
) -> None:
    start(cli, "op-g-1", staging, owner="ann")
    start(cli, "op-g-2", staging, owner="bob")
    start(cli, "op-h-1", staging, owner="ann")
    try:
        assert set(states(cli, "--glob", "op-g-*")) == {"op-g-1", "op-g-2"}
        assert set(states(cli, "--glob", "op-?-1")) == {"op-g-1", "op-h-1"}
        assert set(states(cli, "--owner", "ann", "--glob", "op-*")) == {"op-g-1", "op-h-1"}
        assert set(states(cli, "--owner", "bob", "--glob", "op-*")) == {"op-g-2"}
        assert states(cli, "--glob", "op-zz-*") == {}

        both = cli("clean", "-k", "op-g-1", "--glob", "op-g-*")
        assert both.code == 2 and "exclusive" in both.stderr
        none = cli("clean", "--glob", "op-zz-*")
        assert none.code == 0 and "Nothing to clean" in none.stdout

        cleaned = cli("clean", "--glob", "op-g-*", "--yes", "-o", "json")
        assert cleaned.code == 0, cleaned.stderr
        assert sorted(cleaned.json()["cleaned"]) == ["op-g-1", "op-g-2"]
        remaining = stack_names()
        assert "op-g-1" not in remaining and "op-g-2" not in remaining
        assert "op-h-1" in remaining
        assert objects_of(kube, "op-h-1")
        assert wait_until(lambda: objects_of(kube, "op-g-1") == [] == objects_of(kube, "op-g-2"))
    finally:
        for key in ("op-g-1", "op-g-2", "op-h-1"):
            cli("clean", "-k", key)


def test_markdown_for_a_pr_comment(cli: Cli, staging: str) -> None:
    key = "op-md"
    start(cli, key, staging)
    try:
        assert wait_until(lambda: states(cli, "-k", key)[key]["state"] == "ready", timeout=60)
        result = cli("status", "-k", key, "-o", "markdown")
        assert result.code == 0, result.stderr
        assert result.stdout.startswith(f"<!-- preview-env:{key} -->")
        parser = MarkdownIt("commonmark").enable("table")
        tokens = parser.parse(result.stdout)
        assert any(t.type == "table_open" for t in tokens)
        cells = [t.content for t in tokens if t.type == "inline"]
        assert "Image" in cells and "State" in cells
        assert f"`acme/{key}:1`" in cells and "ready" in cells
        html = parser.render(result.stdout)
        assert "<strong>ready</strong>" in html and "remaining" in html
        missing = cli("status", "-o", "markdown")
        assert missing.code == 2 and "-k" in missing.stderr
    finally:
        assert cli("clean", "-k", key).code == 0


def test_warn_before_lists_what_expires_soon_and_removes_nothing(cli: Cli, staging: str) -> None:
    start(cli, "op-w-1h", staging, "--ttl", "1h", owner="ann")
    start(cli, "op-w-3h", staging, "--ttl", "3h", owner="bob")
    try:
        result = cli("reap", "--warn-before", "2h", "-o", "json")
        assert result.code == 0, result.stderr
        expiring = {e["key"]: e for e in result.json()["expiring"]}
        assert "op-w-1h" in expiring and "op-w-3h" not in expiring
        assert expiring["op-w-1h"]["owner"] == "ann"
        text = cli("reap", "--warn-before", "2h")
        assert text.code == 0 and "expiring op-w-1h" in text.stdout
        assert "op-w-3h" not in text.stdout
        assert {"op-w-1h", "op-w-3h"} <= stack_names()
    finally:
        for key in ("op-w-1h", "op-w-3h"):
            cli("clean", "-k", key)
