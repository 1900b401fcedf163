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
    from preview_stack.reaping import Lock, lock_is_stale

    now = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)

    lock = Lock(pid=42, hostname="me", timestamp=now - dt.timedelta(minutes=5), path="x")

    def alive(_pid: int) -> bool:
        return True

    def dead(_pid: int) -> bool:
        return False

    # The holder is provably gone (same host, PID not running): taken over at once.
    assert lock_is_stale(lock, now=now, this_host="me", pid_alive=dead, threshold_seconds=600)
    # A live holder on this host, or any holder elsewhere: only past the threshold.
    assert not lock_is_stale(lock, now=now, this_host="me", pid_alive=alive, threshold_seconds=600)
    assert lock_is_stale(lock, now=now, this_host="me", pid_alive=alive, threshold_seconds=60)
    assert not lock_is_stale(
        lock, now=now, this_host="other", pid_alive=dead, threshold_seconds=600
    )
    assert lock_is_stale(lock, now=now, this_host="other", pid_alive=alive, threshold_seconds=60)
