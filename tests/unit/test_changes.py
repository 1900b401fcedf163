"""The pure changes applied under the stack's lock, lock parsing and backend identities."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from adapters.backend.resolve import file_backend_root, identity, resolve
from preview_stack import backends, naming
from preview_stack.backends import Backend
from preview_stack.changes import (
    AddService,
    DestroyAll,
    DestroyIfDue,
    NotDue,
    RemoveTarget,
    Rerouted,
    Restore,
    SetExpiry,
    Unrouted,
    apply,
    later_expiry,
    may_drop_targets,
)
from preview_stack.config import TargetPath
from preview_stack.errors import BadInput, NotFound
from preview_stack.reaping import parse_locks
from preview_stack.spec import ServiceSpec

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def svc(name: str, image: str = "img:1") -> ServiceSpec:
    return ServiceSpec(
        target=TargetPath(kind="deployment", name=name), namespace="staging", image=image
    )


def test_two_adds_on_one_key_keep_both_targets() -> None:
    first = apply(AddService(svc("users"), 3600, "ann"), "pr-1", None, NOW)
    second = apply(AddService(svc("orders"), 3600, "bob"), "pr-1", first, NOW)
    assert second is not None
    assert [s.target_id for s in second.services] == [
        "staging/deployment/users",
        "staging/deployment/orders",
    ]
    assert second.key == "pr-1" and second.owner == "ann"


def test_start_never_shortens_the_expiry() -> None:
    infinite = apply(AddService(svc("users"), None, "ann"), "k", None, NOW)
    assert infinite is not None and infinite.expires_at is None
    added = apply(AddService(svc("orders"), 600, "bob"), "k", infinite, NOW)
    assert added is not None and added.expires_at is None  # infinite stays infinite
    long = apply(AddService(svc("users"), 8 * 3600, "ann"), "k", None, NOW)
    short = apply(AddService(svc("orders"), 600, "bob"), "k", long, NOW)
    assert short is not None and short.expires_at == "2026-11-27T20:00:00Z"
    later = apply(AddService(svc("orders"), 10 * 3600, "bob"), "k", long, NOW)
    assert later is not None and later.expires_at == "2026-11-27T22:00:00Z"
    assert later_expiry("2026-11-27T12:30:00Z", NOW, None) is None


def test_extend_ttl_may_shorten_and_by_pushes_back() -> None:
    long = apply(AddService(svc("users"), 8 * 3600, "ann"), "k", None, NOW)
    shorter = apply(SetExpiry(key="k", ttl_seconds=60), "k", long, NOW)
    assert shorter is not None and shorter.expires_at == "2026-11-27T12:01:00Z"
    pushed = apply(SetExpiry(key="k", by_seconds=1800), "k", long, NOW)
    assert pushed is not None and pushed.expires_at == "2026-11-27T20:30:00Z"
    with pytest.raises(NotFound):
        apply(SetExpiry(key="k", ttl_seconds=60), "k", None, NOW)
    infinite = apply(AddService(svc("users"), None, "ann"), "k", None, NOW)
    with pytest.raises(BadInput):
        apply(SetExpiry(key="k", by_seconds=60), "k", infinite, NOW)


def test_a_failed_start_undoes_only_itself() -> None:
    base = apply(AddService(svc("users", "u:1"), 3600, "ann"), "k", None, NOW)
    teammate = apply(AddService(svc("orders"), 3600, "bob"), "k", base, NOW)
    mine = AddService(svc("users", "u:2"), 3600, "ann")
    previous = mine.previous_of(teammate)
    assert previous is not None and previous.image == "u:1"
    after_fail = apply(mine, "k", teammate, NOW)
    restored = apply(Restore(mine.service.target_id, previous), "k", after_fail, NOW)
    assert restored is not None
    assert {s.target_id: s.image for s in restored.services} == {
        "staging/deployment/users": "u:1",
        "staging/deployment/orders": "img:1",
    }
    new_target = AddService(svc("frontend"), 3600, "cy")
    undone = apply(
        Restore(new_target.service.target_id, None), "k", apply(new_target, "k", teammate, NOW), NOW
    )
    assert undone == teammate
    only = apply(new_target, "k", None, NOW)
    assert apply(Restore(new_target.service.target_id, None), "k", only, NOW) is None


def test_remove_target_and_the_reapers_recheck() -> None:
    env = apply(AddService(svc("users"), 60, "ann"), "k", None, NOW)
    env = apply(AddService(svc("orders"), 60, "ann"), "k", env, NOW)
    rest = apply(RemoveTarget("deployment/users"), "k", env, NOW)
    assert rest is not None and [s.display_target for s in rest.services] == ["deployment/orders"]
    assert apply(RemoveTarget("orders"), "k", rest, NOW) is None
    later = NOW + dt.timedelta(minutes=5)
    assert apply(DestroyIfDue(), "k", env, later) is None
    extended = apply(SetExpiry(key="k", ttl_seconds=3600), "k", env, later)
    with pytest.raises(NotDue):
        apply(DestroyIfDue(), "k", extended, later)


def test_lock_errors_name_holders_on_every_backend() -> None:
    message = (
        "error: the stack is currently locked by 1 lock(s). Either wait for the other "
        "process(es) to end or delete the lock file with `pulumi cancel`.\n"
        "  postgres://127.0.0.1:5432/pulumi/.pulumi/locks/organization/preview-env/pr-1/"
        "3e0f.json: created by root@host-b (pid 4242) at 2026-11-27T11:00:00Z\n"
        "  s3://state/.pulumi/locks/organization/preview-env/pr-1/9a.json: created by "
        "ci@runner.example (pid 7) at 2026-11-27T11:30:00.123456789Z\n"
        "  file:///tmp/be/.pulumi/locks/organization/preview-env/pr-1/ab.json?no_tmp_dir=true: "
        "created by root@bob-host (pid 9) at 2026-11-27T11:00:00Z\n"
    )
    locks = parse_locks(message)
    assert [(lk.user, lk.hostname, lk.pid) for lk in locks] == [
        ("root", "host-b", 4242),
        ("ci", "runner.example", 7),
        ("root", "bob-host", 9),
    ]
    assert locks[0].timestamp == dt.datetime(2026, 11, 27, 11, 0, tzinfo=dt.UTC)
    assert "root@host-b (pid 4242)" in locks[0].describe()


def test_backend_urls_parse_like_pulumi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert file_backend_root("file://~/state") == tmp_path / "state"
    assert file_backend_root("file://rel/dir") == tmp_path / "rel" / "dir"
    assert file_backend_root("file:///abs?no_legacy_layout=1") == Path("/abs")
    assert resolve("file://~/state").url == f"file://{tmp_path / 'state'}"
    assert file_backend_root("s3://bucket") is None


def test_backend_identity_hides_credentials_and_tells_backends_apart(tmp_path: Path) -> None:
    pg = identity(Backend.parse("postgres://u:secret@db.local:5432/pulumi?sslmode=disable&table=t"))
    assert "secret" not in pg and pg == "postgres://db.local:5432/pulumi?table=t"
    s3 = identity(Backend.parse("s3://state?endpoint=http://127.0.0.1:1&region=us-east-1"))
    assert s3 == "s3://state?endpoint=http://127.0.0.1:1"
    one, two = tmp_path / "a", tmp_path / "b"
    one.mkdir(), two.mkdir()
    first = identity(Backend.parse(f"file://{one}"))
    assert first == identity(Backend.parse(f"file://{one}"))  # kept in the backend
    assert first != identity(Backend.parse(f"file://{two}"))
    assert naming.stack_identity(first, "k") != naming.stack_identity(first, "j")


def test_shared_backends_need_a_secrets_manager() -> None:
    def problem_of(url: str, environ: dict[str, str]) -> str | None:
        return backends.secrets_problem(Backend.parse(url), environ)

    assert problem_of("file:///x", {}) is None
    assert problem_of("https://api.pulumi.com", {}) is None
    problem = problem_of("postgres://u:pw@h/db", {})
    assert problem is not None and "PULUMI_CONFIG_PASSPHRASE" in problem and "pw" not in problem
    assert problem_of("s3://b", {"PULUMI_CONFIG_PASSPHRASE": "x"}) is None
    assert problem_of("s3://b", {backends.SECRETS_PROVIDER_VAR: "awskms://k"}) is None


def test_routes_of_the_targets_a_change_drops_are_switched_off_first() -> None:
    base = apply(AddService(svc("users"), 3600, "ann"), "k", None, NOW)
    both = apply(AddService(svc("orders"), 3600, "bob"), "k", base, NOW)
    assert both is not None
    first = Unrouted(RemoveTarget("deployment/users"))
    drained = first(both, NOW)
    assert drained is not None and first.dropped == ["staging/deployment/users"]
    assert [s.routing for s in drained.services] == [False, True]  # orders keeps its routes
    assert drained.expires_at == both.expires_at
    everything = Unrouted(DestroyAll())
    all_off = everything(both, NOW)
    assert all_off is not None and not any(s.routing for s in all_off.services)
    back = Rerouted(tuple(everything.dropped))(all_off, NOW)
    assert back == both
    # A refused change refuses its first half too: nothing is unrouted.
    due_later = Unrouted(DestroyIfDue())
    with pytest.raises(NotDue):
        due_later(both, NOW)
    assert due_later.dropped == []
    assert may_drop_targets(DestroyAll()) and not may_drop_targets(SetExpiry(key="k"))


def test_a_route_drain_writes_the_record_of_the_spec_before_it() -> None:
    from preview_stack.derive import record_manifest
    from preview_stack.objects import EnvironmentObjects, with_record_of
    from tests.support.specs import env_with, service

    before = env_with(service())
    drained = Unrouted(DestroyAll())(before, NOW)
    assert drained is not None and not drained.services[0].routing
    other = {"kind": "Service", "metadata": {"name": "x"}}
    objects = EnvironmentObjects([other, record_manifest(drained)])
    kept = with_record_of(objects, before, "stack-1")
    assert kept.manifests[0] == other
    assert kept.manifests[1]["data"] == record_manifest(before)["data"]
    assert kept.manifests[1]["metadata"]["labels"][naming.LABEL_STACK] == "stack-1"
