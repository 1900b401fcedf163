"""Pure parts of `status` and `reap --warn-before`: phases, filters, markdown, warnings."""

from __future__ import annotations

import datetime as dt
from typing import Any

from markdown_it import MarkdownIt

from preview_stack import naming
from preview_stack.config import IncomingFeature, TargetPath
from preview_stack.derive import record_manifest
from preview_stack.reaping import due_without_spec, expiring_within, lock_from_json
from preview_stack.spec import EnvironmentSpec, ServiceSpec
from preview_stack.status import (
    Unfinished,
    markdown,
    matches,
    pod_state,
    removed_markdown,
    summarize,
    unfinished_from,
)

NOW = dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.UTC)


def pod(
    name: str = "users-pr-42-abc",
    *,
    ready: bool = False,
    containers: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    phase: str = "Pending",
    key: str = "pr-42",
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "staging",
            "labels": {
                naming.LABEL_KEY: key,
                naming.LABEL_TARGET: naming.target_label("deployment", "users"),
            },
        },
        "status": {
            "phase": phase,
            "conditions": (conditions or [])
            + [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": containers or [],
        },
    }


def waiting(reason: str, restarts: int = 0) -> dict[str, Any]:
    return {"name": "app", "state": {"waiting": {"reason": reason}}, "restartCount": restarts}


def env(
    key: str = "pr-42", owner: str = "me", expires: str | None = "2026-01-01T01:00:00Z"
) -> EnvironmentSpec:
    return EnvironmentSpec(
        key=key,
        owner=owner,
        created_at="2026-01-01T00:00:00Z",
        expires_at=expires,
        ttl_seconds=3600,
        services=[
            ServiceSpec(
                target=TargetPath.parse("deployment/users"),
                namespace="staging",
                image="ghcr.io/acme/users:pr-42",
                incoming=IncomingFeature(mode="steal"),
            )
        ],
    )


def test_pod_states_name_the_cluster_reason() -> None:
    assert pod_state(pod(ready=True, phase="Running"), NOW) == ("ready", None)
    crash = pod(containers=[waiting("CrashLoopBackOff", restarts=3)])
    state, reason = pod_state(crash, NOW)
    assert state == "not-ready" and reason and reason.startswith("CrashLoopBackOff")
    for pull in ("ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull"):
        state, reason = pod_state(pod(containers=[waiting(pull)]), NOW)
        assert state == "not-ready" and reason and reason.startswith(pull)
    unschedulable = pod(
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available",
            }
        ]
    )
    assert pod_state(unschedulable, NOW)[0] == "not-ready"
    oom = pod(
        phase="Running",
        containers=[
            {
                "name": "app",
                "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                "restartCount": 0,
            }
        ],
    )
    assert pod_state(oom, NOW)[0] == "not-ready"
    # On its way: pulling, creating, just started.
    assert pod_state(pod(containers=[waiting("ContainerCreating")]), NOW)[0] == "starting"
    assert pod_state(pod(), NOW)[0] == "starting"
    running = {"running": {"startedAt": "2026-01-01T00:29:50Z"}}
    fresh = pod(phase="Running", containers=[{"name": "app", "state": running, "ready": False}])
    assert pod_state(fresh, NOW)[0] == "starting"
    # Running for minutes and still not Ready: its readiness probe fails.
    old = {"running": {"startedAt": "2026-01-01T00:20:00Z"}}
    probe = pod(phase="Running", containers=[{"name": "app", "state": old, "ready": False}])
    state, reason = pod_state(probe, NOW)
    assert state == "not-ready" and reason and "readiness probe" in reason


def test_the_probe_grace_decides_when_a_running_pod_fails_its_probe() -> None:
    running = {"running": {"startedAt": "2026-01-01T00:29:15Z"}}  # 45 s before NOW
    slow = pod(phase="Running", containers=[{"name": "app", "state": running, "ready": False}])
    assert pod_state(slow, NOW)[0] == "starting"  # within the default (60 s)
    assert pod_state(slow, NOW, probe_grace=30)[0] == "not-ready"
    assert pod_state(slow, NOW, probe_grace=120)[0] == "starting"
    assert summary(pods=[slow], probe_grace=30)[0].state == "not-ready"
    assert summary(pods=[slow])[0].state == "starting"


def summary(**kw: Any) -> Any:
    base: dict[str, Any] = {"specs": {"pr-42": env()}, "pods": [], "stacks": {"pr-42": False}}
    return summarize(now=NOW, **{**base, **kw})


def test_environment_states() -> None:
    ready = summary(pods=[pod(ready=True, phase="Running")])[0]
    assert ready.state == "ready" and ready.ttl == "30m 0s remaining"
    starting = summary(pods=[pod(), pod("b", ready=True)])[0]
    assert starting.state == "starting"
    failing = summary(pods=[pod(containers=[waiting("ErrImageNeverPull")]), pod("b")])[0]
    assert failing.state == "not-ready" and "ErrImageNeverPull" in failing.reason
    assert summary()[0].state == "not-ready"  # no pods at all is never ready
    locked = summary(stacks={"pr-42": True}, locks={"pr-42": "ann@box (pid 7) since X"})[0]
    assert locked.state == "updating" and locked.locked_by == "ann@box (pid 7) since X"
    assert "ann@box" in locked.reason
    expired = summary(specs={"pr-42": env(expires="2026-01-01T00:10:00Z")})[0]
    assert expired.state == "expired" and expired.ttl == "expired"
    hidden = summary(unlisted={"staging"}, pods=[pod(ready=True)])[0]
    assert hidden.state == "not-ready" and "no rights" in hidden.reason
    empty = summary(specs={"pr-42": None})[0]
    assert empty.state == "orphaned" and "without objects" in empty.reason
    orphan = summary(specs={}, stacks={}, orphans={"gone": ["pod staging/x"]})[0]
    assert (orphan.key, orphan.state, orphan.orphans) == ("gone", "orphaned", ["pod staging/x"])
    dumped = ready.model_dump(mode="json", by_alias=True)
    assert dumped["pods"][0]["state"] == "ready" and "lockedBy" in dumped


def test_a_stack_without_a_spec_but_with_objects_is_not_ready_not_orphaned() -> None:
    history = [{"result": "failed", "endTime": "2026-01-01T00:10:00.000Z", "kind": "update"}]
    meta = {"namespace": "staging", "annotations": {naming.ANNOTATION_OWNER: "ann"}}
    checkpoint = {
        "deployment": {
            "resources": [
                {"type": "pulumi:pulumi:Stack", "outputs": {}},
                {"type": "pulumi:providers:kubernetes", "inputs": {}},
                {"type": "kubernetes:apps/v1:Deployment", "outputs": {"metadata": meta}},
                {"type": "kubernetes:core/v1:Service", "inputs": {"metadata": meta}},
            ]
        }
    }
    kept = unfinished_from(history, checkpoint)
    assert (kept.resources, kept.result, kept.owner, kept.namespaces) == (
        2,
        "failed",
        "ann",
        ["staging"],
    )
    shown = summary(specs={"pr-42": None}, unfinished={"pr-42": kept})[0]
    assert shown.state == "not-ready" and shown.owner == "ann"
    assert shown.reason.startswith("first start failed at 2026-01-01T00:10:00")
    assert "2 objects kept" in shown.reason and shown.namespaces == ["staging"]
    # Nothing in its state: a stack without objects is still orphaned.
    empty = unfinished_from(
        history, {"deployment": {"resources": checkpoint["deployment"]["resources"][:1]}}
    )
    assert summary(specs={"pr-42": None}, unfinished={"pr-42": empty})[0].state == "orphaned"
    assert unfinished_from(None, None) == Unfinished()
    running = unfinished_from([], checkpoint).describe("pr-42")
    assert running.startswith("no update has finished yet") and "2 objects" in running
    # A running update wins: it may be that first start, still going.
    busy = summary(specs={"pr-42": None}, stacks={"pr-42": True}, unfinished={"pr-42": kept})[0]
    assert busy.state == "updating"


def kept_first_start(expires: str | None = "2026-01-01T02:00:00Z") -> dict[str, Any]:
    """`pulumi stack export` of a kept failed first start: its record ConfigMap (the
    redacted spec it was declared from) and its Deployment, both in the stack's state."""
    record = record_manifest(env(owner="ann", expires=expires))
    meta = {
        "namespace": "staging",
        "annotations": {
            naming.ANNOTATION_OWNER: "ann",
            naming.ANNOTATION_EXPIRES_AT: expires or "never",
        },
    }
    return {
        "deployment": {
            "resources": [
                {"type": "pulumi:pulumi:Stack", "outputs": {}},
                {"type": "kubernetes:apps/v1:Deployment", "outputs": {"metadata": meta}},
                {"type": "kubernetes:core/v1:ConfigMap", "inputs": record, "outputs": record},
            ]
        }
    }


def test_a_kept_failed_first_start_keeps_its_ttl_and_shows_its_pods() -> None:
    history = [{"result": "failed", "endTime": "2026-01-01T00:10:00.000Z"}]
    kept = unfinished_from(history, kept_first_start())
    assert kept.expires_at == "2026-01-01T02:00:00Z"
    assert kept.spec is not None and kept.spec.services[0].display_target == "deployment/users"
    # The reaper: due only once its TTL has passed (never for an infinite one); a stack whose
    # objects say nothing of it is due at once, as before.
    assert due_without_spec(kept.expires_at, NOW) is None
    later = dt.datetime(2026, 1, 1, 2, 0, 1, tzinfo=dt.UTC)
    assert due_without_spec(kept.expires_at, later) == dt.datetime(2026, 1, 1, 2, tzinfo=dt.UTC)
    forever = unfinished_from(history, kept_first_start(expires=None))
    assert forever.expires_at == "never" and due_without_spec("never", later) is None
    assert due_without_spec(None, NOW) == NOW
    # Without a record, the objects' annotation still tells.
    resources = kept_first_start()["deployment"]["resources"][:2]
    bare = unfinished_from(history, {"deployment": {"resources": resources}})
    assert (bare.spec, bare.expires_at) == (None, "2026-01-01T02:00:00Z")
    # `status`: its pods with their reasons, its TTL, and still why it has no spec.
    stuck = pod(containers=[], conditions=[unschedulable()])
    shown = summary(specs={"pr-42": None}, unfinished={"pr-42": kept}, pods=[stuck])[0]
    assert shown.state == "not-ready" and shown.owner == "ann"
    assert shown.reason.startswith("first start failed at 2026-01-01T00:10:00")
    assert "pod users-pr-42-abc: Unschedulable" in shown.reason
    assert [(p.name, p.state, p.phase) for p in shown.pods] == [
        ("users-pr-42-abc", "not-ready", "Pending")
    ]
    assert shown.pods[0].reason.startswith("Unschedulable: 0/3 nodes are available")
    assert (shown.ttl, shown.expires_at) == ("1h 30m remaining", "2026-01-01T02:00:00Z")
    assert shown.namespaces == ["staging"]
    gone = summary(
        specs={"pr-42": None},
        unfinished={"pr-42": unfinished_from(history, kept_first_start("2026-01-01T00:20:00Z"))},
    )[0]
    assert gone.state == "expired" and gone.ttl == "expired"


def unschedulable() -> dict[str, Any]:
    return {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity.",
    }


def test_glob_and_owner_filters() -> None:
    keys = {"pr-1": "ann", "pr-12": "bob", "feat-x": "ann", "pr-2x": "ann"}
    assert [k for k, o in keys.items() if matches(k, o, glob="pr-?", owner_filter=None)] == ["pr-1"]
    assert [k for k, o in keys.items() if matches(k, o, glob="pr-*", owner_filter="ann")] == [
        "pr-1",
        "pr-2x",
    ]
    assert [k for k, o in keys.items() if matches(k, o, glob=None, owner_filter="bob")] == ["pr-12"]
    assert not matches("pr.1", None, glob="pr-1", owner_filter=None)  # no regex leaks


def test_markdown_renders_a_table_and_links() -> None:
    spec = env()
    status = summary(specs={"pr-42": spec}, pods=[pod(ready=True, phase="Running")])[0]
    status = status.model_copy(update={"links": ["http://pr-42.preview.example.com"]})
    text = markdown(status)
    assert text.startswith("<!-- preview-env:pr-42 -->")
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    cells = [t.content for t in tokens if t.type == "inline"]
    assert "Pod" in cells and "Image" in cells and "State" in cells
    assert "`staging/users-pr-42-abc`" in cells and "ready" in cells
    assert "`ghcr.io/acme/users:pr-42`" in cells
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert '<a href="http://pr-42.preview.example.com">' in html
    assert "<table>" in html and "<code>ghcr.io/acme/users:pr-42</code>" in html
    assert "mirrord-session=pr-42" in html  # the header to send
    assert "30m 0s remaining" in html and "2026-01-01T01:00:00Z" in html


def test_markdown_escapes_what_it_is_given() -> None:
    status = summary(pods=[pod(containers=[waiting("ErrImageNeverPull")])])[0]
    hostile = status.model_copy(update={"reason": "<img src=x> [click](http://evil) | **x**"})
    html = MarkdownIt("commonmark").enable("table").render(markdown(hostile))
    assert "<img" not in html and 'href="http://evil"' not in html and "<strong>x" not in html
    removed = MarkdownIt("commonmark").render(removed_markdown("pr-42"))
    assert "removed" in removed and "<!-- preview-env:pr-42 -->" in removed


def test_warn_before_selects_only_what_expires_soon() -> None:
    at = {
        "soon": (NOW + dt.timedelta(hours=1), "ann"),
        "later": (NOW + dt.timedelta(hours=3), "bob"),
        "due": (NOW - dt.timedelta(minutes=1), "cy"),
        "never": (None, "dee"),
    }
    found = expiring_within(at, NOW, 2 * 3600)
    assert [(e.key, e.owner) for e in found] == [("soon", "ann")]


def test_lock_files_are_read() -> None:
    text = (
        '{"pid": 42, "username": "ann", "hostname": "box", '
        '"timestamp": "2026-01-01T00:00:01.123456789Z"}'
    )
    lock = lock_from_json(text, "/x/1.json")
    assert lock is not None and lock.describe() == "ann@box (pid 42) since 2026-01-01T00:00:01Z"
    assert lock_from_json("{", "x") is None and lock_from_json("{}", "x") is None


def test_s3_backend_urls_name_the_bucket_prefix_and_endpoint() -> None:
    from adapters.backend.s3 import S3Store
    from preview_stack.backends import Backend

    def client_and_prefix(url: str) -> tuple[Any, str, str]:
        location = Backend.parse(url).s3
        assert location is not None
        store = S3Store(location, "preview-env", {})
        return store.client, store.bucket, store.prefix

    url = "s3://state?endpoint=http://127.0.0.1:8333&use_path_style=true&region=us-east-1"
    client, bucket, prefix = client_and_prefix(url)
    assert (bucket, prefix) == ("state", "")
    assert client._base_url.host == "127.0.0.1:8333" and not client._base_url.is_https
    _, bucket, prefix = client_and_prefix("s3://state/team-a?prefix=envs&region=eu-west-1")
    assert (bucket, prefix) == ("state", "team-a/envs/")


def test_status_columns_align_like_kubectl_and_keep_cells_verbatim() -> None:
    from cli.output import columns

    lines = columns(("KEY", "IMAGE", "TRAFFIC"), [("pr-7", "[bold]img:1", "-"), ("ü日", "x", "")])
    assert lines == [
        "KEY   IMAGE        TRAFFIC",
        "pr-7  [bold]img:1  -",
        "ü日   x",  # the wide character takes two cells; no trailing blanks
    ]
