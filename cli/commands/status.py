"""`preview-env status`: every environment in the backend (or one), with live pod state."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from adapters.automation import connect
from cli.context import err_console, handles_errors, out_console, settings
from cli.output import StatusFormat, columns, print_json
from preview_stack import naming
from preview_stack.branch_status import branch_statuses
from preview_stack.errors import BadInput, NotFound
from preview_stack.routing import serving_problem
from preview_stack.spec import EnvironmentSpec
from preview_stack.status import (
    PROBE_GRACE_SECONDS,
    PROBE_GRACE_VAR,
    ignored_records,
    markdown,
    matches,
    summarize,
)
from preview_stack.ttl import parse_duration

STATUS_COLUMNS = (
    "KEY", "STATE", "TTL", "POD", "NAMESPACE", "TARGET", "IMAGE", "POD STATE", "TRAFFIC",
)  # fmt: skip


@handles_errors
def status(
    ctx: typer.Context,
    key: Annotated[str | None, typer.Option("-k", "--key", help="only this environment")] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "-n", "--namespace", help="only environments with a preview in this namespace"
        ),
    ] = None,
    glob: Annotated[
        str | None, typer.Option("--glob", help="only keys matching this shell glob (pr-*)")
    ] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="only this owner's")] = None,
    output: Annotated[
        StatusFormat,
        typer.Option("-o", "--output", help="text, json, or markdown (a PR comment; needs -k)"),
    ] = StatusFormat.text,
    probe_grace: Annotated[
        str,
        typer.Option(
            "--probe-grace",
            envvar=PROBE_GRACE_VAR,
            show_envvar=True,
            help="a container running this long without becoming Ready counts as failing "
            "its readiness probe (not-ready); before that it is starting (45s, 2m; a "
            "bare number is minutes)",
        ),
    ] = f"{PROBE_GRACE_SECONDS}s",
) -> None:
    """List environments: state (starting, ready, not-ready, updating, expired, orphaned),
    pods, TTL remaining.

    What each environment is comes from the backend (the authority), never from records in
    the cluster; pods are listed cluster-wide, or per namespace for namespace-scoped users.
    """
    if output is StatusFormat.markdown and key is None:
        raise BadInput("-o markdown renders one environment: give -k KEY")
    try:
        grace = parse_duration(probe_grace, allow_infinite=False)
    except BadInput as exc:
        raise BadInput(f"--probe-grace ({PROBE_GRACE_VAR}): {exc}") from None
    opts = settings(ctx)
    cluster, stacks = connect(opts)
    every_key = stacks.environments()
    keys = dict(every_key)
    wanted = [
        k
        for k in keys
        if (key is None or k == key) and matches(k, None, glob=glob, owner_filter=None)
    ]
    specs = stacks.specs(wanted)
    if owner is not None:
        specs = {k: s for k, s in specs.items() if stacks.owner(k, s) == owner}
    keys = {k: v for k, v in keys.items() if k in specs}
    # No committed spec and no update running: a first start that never finished (kept with
    # --keep-on-failure) or an emptied stack; the backend's state tells them apart, and
    # holds the spec a kept one's objects were declared from.
    unfinished = {
        k: stacks.unfinished(k)
        for k, s in specs.items()
        if s is None and not keys[k] and not stacks.lock_holders(k)
    }
    declared: dict[str, EnvironmentSpec] = {}
    for k, s in specs.items():
        kept = unfinished.get(k)
        if isinstance(s, EnvironmentSpec):
            declared[k] = s
        elif kept is not None and kept.resources and kept.spec is not None:
            declared[k] = kept.spec
    if namespace is not None:
        specs = {
            k: s
            for k, s in specs.items()
            if k in declared and namespace in {v.namespace for v in declared[k].services}
        }
        keys = {k: v for k, v in keys.items() if k in specs}
    namespaces = (
        {namespace} if namespace else {v.namespace for s in declared.values() for v in s.services}
    )

    def ours(obj: Mapping[str, Any]) -> bool:
        """Objects of this backend's stacks; other backends' keys are theirs."""
        labels = obj.get("metadata", {}).get("labels") or {}
        found = labels.get(naming.LABEL_KEY, "")
        return found in keys and labels.get(naming.LABEL_STACK) == stacks.stack_id(found)

    homes = {k: {v.namespace for v in s.services} for k, s in declared.items() if k in specs}

    def ours_here(obj: Mapping[str, Any]) -> bool:
        """Ours, and where the backend says the environment runs: labels are copyable, so a
        labelled pod or route in someone else's namespace is not this environment's."""
        meta = obj.get("metadata", {})
        found = (meta.get("labels") or {}).get(naming.LABEL_KEY, "")
        return ours(obj) and meta.get("namespace") in homes.get(found, set())

    # Orphans are looked for where we may list: cluster-wide, else the namespaces we know.
    look_in = namespaces
    all_pods = cluster.preview_pods(key, look_in)
    pods = [p for p in all_pods if ours_here(p)]
    routes_by_key: dict[str, list[dict[str, Any]]] = {}
    selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}" + (
        f",{naming.LABEL_KEY}={key}" if key else ""
    )
    all_routes = cluster.routes(selector, look_in)
    all_records = cluster.records(key, look_in)
    known = every_key
    orphans: dict[str, list[str]] = {}
    for kind, objects in (("pod", all_pods), ("record", all_records), ("route", all_routes)):
        for obj in objects:
            meta = obj.get("metadata", {})
            labels = meta.get("labels") or {}
            found = labels.get(naming.LABEL_KEY, "")
            if (
                found
                and found not in known
                and labels.get(naming.LABEL_STACK) == stacks.stack_id(found)
                and matches(found, None, glob=glob, owner_filter=None)
                and owner is None
                and (namespace is None or meta.get("namespace") == namespace)
            ):
                orphans.setdefault(found, []).append(
                    f"{kind} {meta.get('namespace')}/{meta.get('name')}"
                )
    for route in all_routes:
        if ours_here(route):
            routes_by_key.setdefault(route["metadata"]["labels"][naming.LABEL_KEY], []).append(
                route
            )
    not_served = {k: problem for k, rs in routes_by_key.items() if (problem := serving_problem(rs))}
    committed = {k: declared.get(k) for k in specs}
    for where in ignored_records(all_records, committed, ours):
        err_console.print(
            f"warning: ignored record {where}: not where its environment keeps its record "
            "(planted or stale); the backend is the authority"
        )
    # A diy backend's stack list does not always say an update runs: its lock files do.
    locks = {
        k: ", ".join(lock.describe() for lock in holders)
        for k in keys
        if (holders := stacks.lock_holders(k))
    }
    keys = {k: busy or k in locks for k, busy in keys.items()}
    summaries = summarize(
        specs=specs,
        pods=pods,
        stacks=keys,
        now=dt.datetime.now(dt.UTC),
        only_key=key,
        unlisted=cluster.unlisted,
        not_served=not_served,
        locks=locks,
        orphans=orphans,
        probe_grace=grace or PROBE_GRACE_SECONDS,
        unfinished=unfinished,
    )
    with_branches = {
        k: s for k, s in specs.items() if isinstance(s, EnvironmentSpec) and s.branches()
    }
    if with_branches:
        jobs, copy_pods = cluster.copy_jobs(key, look_in)
        summaries = [
            s.model_copy(
                update={"branches": branch_statuses(with_branches[s.key], jobs, copy_pods)}
            )
            if s.key in with_branches
            else s
            for s in summaries
        ]
    if output is StatusFormat.json:
        print_json([s.model_dump(mode="json", by_alias=True) for s in summaries])
        return
    if output is StatusFormat.markdown:
        if not summaries:
            raise NotFound(f"no preview environment {key!r} in this backend")
        sys.stdout.write(markdown(summaries[0]))
        return
    if not summaries:
        out_console.print(
            f"No preview environment with key {key!r}." if key else "No preview environments."
        )
        return
    rows: list[tuple[str, ...]] = []
    for env in summaries:
        state = env.state if not env.reason else f"{env.state}: {env.reason}"
        if not env.pods:
            rows.append(
                (env.key, state, env.ttl, "-", ",".join(env.namespaces) or "-", "-", "-", "-", "-")
            )
        for index, pod in enumerate(env.pods):
            ready = pod.state if not pod.reason else f"{pod.state} ({pod.reason})"
            first = index == 0
            rows.append(
                (
                    env.key if first else "",
                    state if first else "",
                    env.ttl if first else "",
                    pod.name,
                    pod.namespace,
                    pod.target,
                    pod.image,
                    ready,
                    ("not served: " if env.routes_problem else "") + (pod.traffic or "-"),
                )
            )
    header, *lines = columns(STATUS_COLUMNS, rows)
    out_console.print(header, style="bold", markup=False)
    if lines:
        out_console.print("\n".join(lines), markup=False)
    for env in summaries:
        for orphan in env.orphans:
            out_console.print(f"orphaned object of {env.key}: {orphan}", markup=False)
        if env.routes_problem:
            out_console.print(
                f"routes of {env.key} declared but not served: {env.routes_problem}", markup=False
            )
        for link in env.links:
            out_console.print(f"share link for {env.key}: {link}", markup=False)
        for branch in env.branches:
            tables = f" ({', '.join(branch.tables)})" if branch.tables else ""
            outcome = branch.message or branch.state
            if branch.message and not branch.message.startswith(branch.state):
                outcome = f"{branch.state}: {branch.message}"  # not "copied: copied 2 tables"
            out_console.print(
                f"database branch {branch.id} of {env.key}: {branch.engine} from "
                f"{branch.source}, copy {branch.mode}{tables}: {outcome}",
                markup=False,
            )
