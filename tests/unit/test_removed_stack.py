"""A stack removed under a `pulumi` command (adapters.automation.Stacks): what Pulumi says
then depends on the backend and the moment (its self-managed backends panic in `pulumi up`
when the stack goes between its selection and its lock), so the adapter asks the backend
afresh instead of reading the message; and an update that failed before its program ran
(nothing deployed) is tried once more on a stack selected afresh. The real removals are in
tests/e2e/test_backend_hardening.py; these cover the orders a test bed cannot force."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pulumi.automation import CommandResult
from pulumi.automation.errors import create_command_error

from adapters.automation import Stacks
from adapters.k8s.cluster import ClusterTarget
from preview_stack.backends import Backend
from preview_stack.errors import DeployFailed, NotFound, Unreachable

# What `pulumi up` (v3.274, any self-managed backend) prints when its stack was removed
# after it selected it and before it took the lock.
PANIC = (
    "The Pulumi CLI encountered a fatal error. This is a bug!\n"
    "Panic:            runtime error: invalid memory address or nil pointer dereference\n"
    "github.com/pulumi/pulumi/pkg/v3/backend/diy.(*diyBackend).getTarget(...)\n"
)
# What `pulumi stack rm` prints when the stack went after it selected it.
RM_GONE = (
    'error: blob (key ".pulumi/stacks/preview-env/k.json") (code=NotFound): '
    "key not found: sql: no rows in result set"
)


def _error(stderr: str) -> Exception:
    return create_command_error(CommandResult(stdout="", stderr=stderr, code=255))


@pytest.fixture
def stacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stacks]:
    umask = os.umask(0o022)  # Stacks sets a private umask for file backends
    os.umask(umask)
    made = Stacks(Backend.parse(f"file://{tmp_path}"), ClusterTarget())
    monkeypatch.setattr(made, "stack_id", lambda key: "id")
    yield made
    os.umask(umask)


class _Stack:
    """A selected stack whose `up` runs the next of `ups`."""

    def __init__(self, ups: list[Callable[[], None]]) -> None:
        self.ups = ups
        self.workspace = SimpleNamespace(work_dir="/nonexistent")

    def up(self, **_: Any) -> None:
        self.ups.pop(0)()


def _fail(stderr: str) -> Callable[[], None]:
    def run() -> None:
        raise _error(stderr)

    return run


def _apply(stacks: Stacks) -> Any:
    return stacks.apply(
        "k",
        lambda before, now: None,
        None,  # type: ignore[arg-type]
        on_event=lambda e: None,
        on_output=lambda line: None,
        lock_wait=5,
    )


@pytest.mark.parametrize("listed", [{}, None])
def test_an_update_that_fails_on_a_stack_the_backend_no_longer_has_is_not_found(
    stacks: Stacks, monkeypatch: pytest.MonkeyPatch, listed: dict[str, bool] | None
) -> None:
    """Whatever Pulumi said: the store's listing answers, else `pulumi stack select`."""
    monkeypatch.setattr(stacks, "_listed", lambda: listed)

    def select(key: str, program: object, mode: str) -> object:
        raise _error("error: no stack named 'k' found")

    monkeypatch.setattr(stacks, "_stack", select)
    with pytest.raises(NotFound):
        stacks._attempt("k", _fail(PANIC))


def test_an_update_that_fails_on_a_stack_still_there_is_a_failed_deploy(
    stacks: Stacks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stacks, "_listed", lambda: {"k": False})
    with pytest.raises(DeployFailed, match="nil pointer"):
        stacks._attempt("k", _fail(PANIC))


def test_a_stack_removed_and_created_again_before_the_check_is_selected_afresh(
    stacks: Stacks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two starts wait for a clean's lock; the clean removes the stack; both updates fail;
    one start creates the stack again before the other looks: the other, whose update never
    ran its program, selects the stack again and deploys to it."""
    monkeypatch.setattr(stacks, "_listed", lambda: {"k": False})  # there again when asked
    monkeypatch.setattr(stacks, "remove_if_empty", lambda key: True)
    ups = [_fail(PANIC), lambda: None]
    selected = []

    def create_or_select(key: str, program: object) -> _Stack:
        selected.append(key)
        return _Stack(ups)

    monkeypatch.setattr(stacks, "_create_or_select", create_or_select)
    assert _apply(stacks).error is None
    assert selected == ["k", "k"] and ups == []


def test_an_update_that_failed_after_its_program_ran_is_not_tried_again(
    stacks: Stacks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stacks, "_listed", lambda: {"k": False})
    monkeypatch.setattr(stacks, "_latest", lambda key, cwd: None)
    monkeypatch.setattr(stacks, "_sweep_orphans", lambda *args: None)
    monkeypatch.setattr("adapters.program.declare", lambda *args: None)
    programs: list[Callable[[], None]] = []

    def ran_then_failed() -> None:
        programs[-1]()
        raise _error("error: update failed: the cluster is unreachable")

    def create_or_select(key: str, program: Callable[[], None]) -> _Stack:
        programs.append(program)
        return _Stack([ran_then_failed])

    monkeypatch.setattr(stacks, "_create_or_select", create_or_select)
    with pytest.raises(DeployFailed, match="unreachable"):
        _apply(stacks)
    assert len(programs) == 1


@pytest.mark.parametrize(("listed", "removed"), [({}, True), ({"k": False}, None)])
def test_removing_a_stack_removed_meanwhile_is_done(
    stacks: Stacks, monkeypatch: pytest.MonkeyPatch, listed: dict[str, bool], removed: bool | None
) -> None:
    def remove_stack(key: str) -> None:
        raise _error(RM_GONE)

    monkeypatch.setattr(stacks, "_listed", lambda: listed)
    monkeypatch.setattr(stacks, "_workspace", lambda: SimpleNamespace(remove_stack=remove_stack))
    if removed is None:
        with pytest.raises(Unreachable):
            stacks.remove_if_empty("k")
    else:
        assert stacks.remove_if_empty("k") is removed
