"""Naming rules, TTL arithmetic and building a request from config plus flags."""

from __future__ import annotations

import datetime as dt

import pytest

from preview_stack import naming, ttl
from preview_stack.config import MirrordConfig
from preview_stack.errors import BadInput
from preview_stack.request import Flags, build_request, resolve_key


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("pr-42", None),
        ("a", None),
        ("x" * 40, None),
        ("x" * 41, "at most 40"),
        ("PR-42", "lowercase DNS label"),
        ("-pr", "lowercase DNS label"),
        ("pr_42", "lowercase DNS label"),
        ("", "empty"),
    ],
)
def test_key_rules(key: str, problem: str | None) -> None:
    found = naming.key_problem(key)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_names_fit_limits_and_stay_stable() -> None:
    long_name = naming.workload_name("a-very-long-workload-name-that-goes-on", "x" * 40)
    assert len(long_name) <= 47
    assert long_name == naming.workload_name("a-very-long-workload-name-that-goes-on", "x" * 40)
    assert naming.workload_name("users", "pr-42") == "users-pr-42"
    assert naming.image_base_name("ghcr.io/acme/users:pr-42") == "users"
    assert naming.image_base_name("reg:5000/a/b@sha256:abc") == "b"
    assert len(naming.label_value("deployment-" + "y" * 80)) <= 63


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("45s", 45), ("15", 900), ("infinite", None)],
)
def test_durations(text: str, seconds: int | None) -> None:
    assert ttl.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0m", "", "-5m", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(BadInput, match="bad duration"):
        ttl.parse_duration(text)


def test_remaining_uses_the_given_now() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert ttl.remaining(now + dt.timedelta(minutes=42, seconds=5), now) == "42m 5s remaining"
    assert ttl.remaining(now - dt.timedelta(seconds=1), now) == "expired"
    assert ttl.remaining(None, now) == "infinite"
    assert ttl.rfc3339(now) == "2026-01-01T00:00:00Z"


def test_key_precedence_and_generation() -> None:
    assert resolve_key(flag="a", env_var="b", config_key="c", existing=()) == ("a", False)
    assert resolve_key(flag=None, env_var="b", config_key="c", existing=()) == ("b", False)
    assert resolve_key(flag=None, env_var=None, config_key="c", existing=()) == ("c", False)
    keys = iter(["taken", "fresh"])
    assert resolve_key(
        flag=None, env_var=None, config_key=None, existing={"taken"}, generate=lambda: next(keys)
    ) == ("fresh", True)
    with pytest.raises(BadInput, match=r"invalid key: .*lowercase DNS label"):
        resolve_key(flag="Bad_Key", env_var=None, config_key=None, existing=())


def test_flags_override_the_file() -> None:
    parsed = MirrordConfig.model_validate(
        {
            "target": {"path": "deployment/users", "namespace": "staging"},
            "feature": {"preview": {"image": "from-file:1", "ttl_mins": 10, "replicas": 3}},
        }
    )
    request = build_request(
        parsed,
        Flags(image="flag:2", ttl="2h", replicas=1, namespace="other"),
        default_namespace="default",
    )
    assert request.service.image == "flag:2"
    assert request.service.namespace == "other"
    assert request.service.replicas == 1
    assert request.ttl_seconds == 7200
    default = build_request(MirrordConfig(), Flags(image="x:1"), default_namespace="ns1")
    assert default.service.target is None and default.service.namespace == "ns1"
    assert default.ttl_seconds == 3600


def test_missing_image_is_refused() -> None:
    with pytest.raises(BadInput, match="no image given: pass -i/--image"):
        build_request(MirrordConfig(), Flags(), default_namespace="default")


def test_stale_locks() -> None:
    from preview_stack.reaping import Here, Holder, Lock, holder_from_json, lock_is_stale

    now = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    lock = Lock(pid=42, hostname="me", timestamp=now - dt.timedelta(minutes=5), path="x")
    here = Here(boot_id="boot-1", pid_namespace="pid:[4026531836]", hostname="me")
    holder = Holder("boot-1", "pid:[4026531836]", 42, start_time=1000, hostname="me")
    assert holder_from_json(holder.to_json()) == holder

    def running(_pid: int) -> int | None:
        return 1000  # the holder itself

    def gone(_pid: int) -> int | None:
        return None

    def reused(_pid: int) -> int | None:
        return 5000  # another process got PID 42 since

    def stale(holder: Holder | None, here: Here, ticks: object, threshold: float) -> bool:
        return lock_is_stale(
            lock,
            now=now,
            holder=holder,
            here=here,
            start_time_of=ticks,  # type: ignore[arg-type]
            threshold_seconds=threshold,
        )

    # The holder is provably gone (its record: this boot, PID namespace and host; no process
    # with that PID and start time): taken over at once.
    assert stale(holder, here, gone, 600)
    assert stale(holder, here, reused, 600)
    # A live holder: only past the threshold.
    assert not stale(holder, here, running, 600)
    assert stale(holder, here, running, 60)
    # Same host name, another PID namespace (a container, a CI runner) or another boot, or
    # no record at all: nothing is provable, whatever PID 42 is here.
    for elsewhere in (
        Here("boot-1", "pid:[4026532999]", "me"),
        Here("boot-2", "pid:[4026531836]", "me"),
        Here("boot-1", "pid:[4026531836]", "other"),
        Here("", "", "me"),
    ):
        assert not stale(holder, elsewhere, gone, 600)
    assert not stale(None, here, gone, 600)
    # A record that is not this lock's (another PID) proves nothing either.
    other = Holder("boot-1", "pid:[4026531836]", 43, start_time=1000, hostname="me")
    assert not stale(other, here, gone, 600)


def test_the_stale_lock_threshold_outlasts_the_longest_update() -> None:
    from preview_stack.reaping import (
        DEFAULT_STALE_LOCK_SECONDS,
        MAX_CREATION_TIMEOUT_SECONDS,
        MIN_STALE_LOCK_SECONDS,
    )

    # A branch server, its copy Job and the preview each wait up to the creation timeout.
    assert MIN_STALE_LOCK_SECONDS > 3 * MAX_CREATION_TIMEOUT_SECONDS
    assert DEFAULT_STALE_LOCK_SECONDS >= MIN_STALE_LOCK_SECONDS


def test_platform_stacks_are_named_apart_from_every_environment_key() -> None:
    name = naming.platform_stack("waypoint", "staging", "orders")
    assert name == "waypoint.staging.orders"
    assert naming.platform_stack_parts(name) == ("waypoint", "staging", "orders")
    assert naming.key_problem(name) is not None  # no key can name a platform stack
    assert naming.platform_stack_parts("pr-7") is None
    assert naming.platform_stack_parts("other.staging.orders") is None
