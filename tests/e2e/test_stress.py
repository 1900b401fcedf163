"""Concurrency stress: 22 overlapping operations by three teammates over three keys
(adds, replaces, extends, `clean -t`, `clean`, `reap`, and SIGKILLed starts), then the
invariants that make sharing safe, checked against the cluster and the backend."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pulumi import automation as auto

from preview_stack import naming
from tests.support.cli import start_argv
from tests.support.kube import Kube
from tests.support.processes import kill_process_group
from tests.support.teams import Backend, User

pytestmark = pytest.mark.cluster
TARGETS = ("users", "orders", "frontend")


@dataclass
class Op:
    name: str
    user: User
    args: list[str]
    key: str
    target: str | None = None
    image: str | None = None
    kind: str = "start"  # start | extend | clean-t | clean | reap
    delay: float = 0.0
    kill_after: float | None = None
    t0: float = 0.0
    t1: float = 0.0
    code: int | None = None
    out: str = ""
    err: str = ""
    killed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def run(self) -> None:
        time.sleep(self.delay)
        self.t0 = time.time()
        proc = self.user.spawn(*self.args, env={"PREVIEW_ENV_LOCK_WAIT": "900"})
        if self.kill_after is not None:
            try:
                proc.wait(timeout=self.kill_after)
            except Exception:
                kill_process_group(proc)
                self.killed = True
        out, err = proc.communicate(timeout=900)
        self.t1 = time.time()
        self.code, self.out, self.err = proc.returncode, out, err


def schedule(users: list[User], keys: list[str], rng: random.Random) -> list[Op]:
    k0, k1, k2 = keys
    ops: list[Op] = []

    def add(key: str, target: str, image: str, **kw: Any) -> None:
        user = rng.choice(users)
        ops.append(
            Op(
                f"start {key} {target}={image}",
                user,
                start_argv(target, key, image=image),
                key,
                target,
                image,
                **kw,
            )
        )

    for key in keys:
        for target in ("users", "orders"):
            add(key, target, f"acme/{target}:1")
    for key in keys:
        add(key, "frontend", "acme/frontend:1")
    add(k0, "users", "acme/users:2")
    add(k1, "orders", "acme/orders:2")
    add(k0, "frontend", "acme/frontend:3")
    add(k2, "users", "acme/users:5")
    add(k1, "users", "acme/users:9", kill_after=rng.uniform(3, 8))
    add(k2, "orders", "acme/orders:9", kill_after=rng.uniform(3, 8))
    for key, how in ((k0, ["--ttl", "2h"]), (k1, ["--ttl", "2h"]), (k2, ["--by", "30m"])):
        ops.append(
            Op(
                f"extend {key} {' '.join(how)}",
                rng.choice(users),
                ["extend", "-k", key, *how, "-o", "json"],
                key,
                kind="extend",
                extra={"ttl": how[1] if how[0] == "--ttl" else None},
            )
        )
    ops.append(
        Op(
            f"clean -t frontend {k1}",
            rng.choice(users),
            ["clean", "-k", k1, "-t", "deployment/frontend", "-o", "json"],
            k1,
            "frontend",
            kind="clean-t",
        )
    )
    ops.append(
        Op(f"clean {k2}", rng.choice(users), ["clean", "-k", k2, "-o", "json"], k2, kind="clean")
    )
    ops.append(Op("reap", rng.choice(users), ["reap", "-o", "json"], "", kind="reap"))
    for op in ops:
        op.delay = rng.uniform(0, 20)
    return ops


def final_spec(backend: Backend, key: str) -> dict[str, Any] | None:
    if key not in backend.stack_keys():
        return None
    stack = auto.select_stack(
        stack_name=key,
        project_name=naming.PROJECT,
        program=lambda: None,
        opts=auto.LocalWorkspaceOptions(
            env_vars={"PULUMI_BACKEND_URL": backend.url, **backend.env}
        ),
    )
    raw = stack.outputs().get("spec")
    spec: dict[str, Any] | None = raw.value if raw else None
    state = stack.export_stack().deployment or {}
    names = {
        (r["type"].split(":")[-1], r.get("outputs", {}).get("metadata", {}).get("name"))
        for r in state.get("resources", [])
        if r["type"].startswith("kubernetes:")
    }
    return {"spec": spec, "state": names}


def live(kube: Kube, key: str) -> set[tuple[str, str]]:
    selector = f"{naming.LABEL_KEY}={key}"
    found = {
        ("Deployment", d.metadata.name)
        for d in kube.apps.list_deployment_for_all_namespaces(label_selector=selector).items
        if d.metadata.deletion_timestamp is None
    }
    found |= {
        ("Service", s.metadata.name)
        for s in kube.core.list_service_for_all_namespaces(label_selector=selector).items
    }
    found |= {
        ("ConfigMap", c.metadata.name)
        for c in kube.core.list_config_map_for_all_namespaces(label_selector=selector).items
    }
    return found


def could_follow(other: Op, op: Op) -> bool:
    """`other` may have taken effect after `op` (it ended after `op` began)."""
    return other is not op and other.t1 > op.t0


def test_overlapping_operations_keep_every_invariant(
    team: Callable[..., User], backend: Backend, kube: Kube, staging: str
) -> None:
    rng = random.Random(20261127)
    users = [team(name, "stress-host") for name in ("ann", "bob", "cy")]
    keys = [f"st-{backend.kind}-{i}" for i in range(3)]
    ops = schedule(users, keys, rng)
    assert len(ops) >= 20
    threads = [threading.Thread(target=op.run) for op in ops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=1200)
    report = "\n".join(
        f"{op.name}: code={op.code} killed={op.killed} {op.t0:.1f}-{op.t1:.1f} "
        f"{op.err.strip().splitlines()[-1:] if op.code else ''}"
        for op in sorted(ops, key=lambda o: o.t0)
    )
    # A last operation per key from the same host recovers any lock a killed start left.
    for key in keys:
        users[0].run("extend", "-k", key, "--by", "1s", env={"PREVIEW_ENV_LOCK_WAIT": "300"})

    # Nothing failed that should have succeeded.
    for op in ops:
        if op.killed:
            continue
        if op.kind in ("start", "clean", "reap", "clean-t"):
            assert op.code == 0, f"{op.name} failed\n{op.err}\n{report}"
        if op.kind == "extend":
            assert op.code in (0, 2), f"{op.name}\n{op.err}\n{report}"
            if op.code == 2:  # only when the key was gone: cleaned before it ran
                assert "no environment" in op.err, op.err

    now = dt.datetime.now(dt.UTC)
    for key in keys:
        final = final_spec(backend, key)
        objects = live(kube, key)
        spec = final["spec"] if final else None
        # Every live object belongs to a stack that lists it; every listed object exists.
        if final is None or spec is None:
            assert objects == set(), f"{key}: objects without a stack: {objects}\n{report}"
        else:
            assert objects == final["state"], f"{key}: {objects} != {final['state']}\n{report}"
        images = {s["target"]["name"]: s["image"] for s in (spec or {}).get("services", [])}
        deployed = {name for kind, name in objects if kind == "Deployment"}
        assert deployed == {naming.workload_name(t, key) for t in images}, report
        # Every success has its effect, unless a command that may follow it removed it.
        for op in ops:
            if op.key != key or op.code != 0 or op.killed:
                continue
            rivals = [o for o in ops if o.key == key and could_follow(o, op)]
            if op.kind == "start":
                removed = any(
                    o.kind == "clean" or (o.target == op.target and o.kind in ("clean-t", "start"))
                    for o in rivals
                )
                if not removed:
                    assert images.get(op.target or "") == op.image, f"{op.name}\n{report}"
            elif op.kind == "clean-t" and json.loads(op.out)["cleaned"]:
                if not any(o.kind == "start" and o.target == op.target for o in rivals):
                    assert op.target not in images, f"{op.name}\n{report}"
            elif op.kind == "clean":
                if not any(o.kind == "start" for o in rivals):
                    assert spec is None, f"{op.name}\n{report}"
            elif (
                op.kind == "extend"
                and op.extra["ttl"]
                and spec is not None
                and not any(o.kind in ("clean", "extend") for o in rivals)
            ):
                expires = dt.datetime.fromisoformat(spec["expires_at"].replace("Z", "+00:00"))
                assert expires >= dt.datetime.fromtimestamp(op.t0, dt.UTC) + dt.timedelta(
                    hours=2
                ) - dt.timedelta(seconds=5), f"{op.name}\n{report}"
        assert now  # the check ran after every operation ended
    for key in keys:
        assert users[0].run("clean", "-k", key).code == 0
