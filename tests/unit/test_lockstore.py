"""Holder records of stack locks (adapters.backend.files, adapters.automation._HolderWatch):
written for a lock a process of ours holds, proving its death only on the same boot and
PID namespace."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import time
from pathlib import Path

from adapters.automation import _HolderWatch
from adapters.backend.files import FileStore
from adapters.backend.locks import here, our_holder, start_time_of
from preview_stack.reaping import Lock, holder_from_json, holder_is_gone, lock_from_json


def _lock(root: Path, key: str, pid: int, name: str = "0f3c.json") -> Path:
    path = root / ".pulumi/locks/organization/preview-env" / key / name
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).isoformat()
    path.write_text(
        json.dumps(
            {"pid": pid, "username": "me", "hostname": socket.gethostname(), "timestamp": stamp}
        )
    )
    return path


def test_a_lock_held_by_our_child_gets_a_record_that_proves_its_death(tmp_path: Path) -> None:
    store = FileStore(tmp_path, "preview-env")
    child = subprocess.Popen(["sleep", "30"])  # stands for the `pulumi up` we run
    try:
        _lock(tmp_path, "k", child.pid)
        with _HolderWatch(store, "k") as watch:
            deadline = time.monotonic() + 10
            while watch.written is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert watch.written == "0f3c.json"
            holder = holder_from_json(store.read_holder("k", "0f3c.json"))
            assert holder is not None and holder.pid == child.pid
            assert holder.start_time == start_time_of(child.pid)
            [(_name, where, text)] = store.locks("k")
            lock = lock_from_json(text, where)
            assert lock is not None
            assert not holder_is_gone(lock, holder, here=here(), start_time_of=start_time_of)
            child.kill()
            child.wait()
            assert holder_is_gone(lock, holder, here=here(), start_time_of=start_time_of)
        # The update ended: its record goes with it.
        assert store.read_holder("k", "0f3c.json") is None
    finally:
        child.kill()
        child.wait()


def test_no_record_for_a_lock_another_process_holds(tmp_path: Path) -> None:
    stranger = Lock(
        pid=os.getppid(), hostname=socket.gethostname(), timestamp=dt.datetime.now(dt.UTC), path="x"
    )
    assert our_holder(stranger) is None


def test_only_the_judged_lock_object_is_removed(tmp_path: Path) -> None:
    store = FileStore(tmp_path, "preview-env")
    stale = _lock(tmp_path, "k", 1, "stale.json")
    fresh = _lock(tmp_path, "k", 2, "fresh.json")
    store.write_holder("k", "stale.json", "{}")
    store.delete_lock("k", "stale.json")
    store.delete_holder("k", "stale.json")
    store.delete_lock("k", "stale.json")  # gone already: fine
    assert not stale.exists() and fresh.exists()
    assert [name for name, _, _ in store.locks("k")] == ["fresh.json"]
