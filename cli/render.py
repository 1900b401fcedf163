"""Results as text on stdout (or as JSON): what each command prints once its work is done.
Commands build the typed results (preview_stack.results, preview_stack.status); only the
words and the layout are here."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence

from cli.context import out_console
from cli.output import Format, StatusFormat, columns, print_json
from preview_stack.results import BulkCleanResult, CleanResult, ExtendResult, StartResult
from preview_stack.routing import served_lines
from preview_stack.status import EnvironmentStatus, markdown
from preview_stack.ttl import INFINITE, format_seconds, parse_rfc3339
from preview_stack.waypoints import WaypointStatus

STATUS_COLUMNS = (
    "KEY", "STATE", "TTL", "POD", "NAMESPACE", "TARGET", "IMAGE", "POD STATE", "TRAFFIC",
)  # fmt: skip


def start(result: StartResult, target: str, *, text: bool) -> None:
    """`start`'s result; `target`: the started target, which `changes` are from."""
    if not text:
        print_json(result)
        return
    out_console.print("Preview environment is live!\n")
    out_console.print(f"  Environment key:  {result.key}")
    out_console.print("  Pods:")
    for pod in result.pods:
        out_console.print(
            f"    • {pod.name}   ({pod.namespace}, {pod.target}, {pod.image})", markup=False
        )
    if result.expires_at is None:
        out_console.print("  TTL: infinite")
    else:
        left = int((parse_rfc3339(result.expires_at) - dt.datetime.now(dt.UTC)).total_seconds())
        out_console.print(f"  TTL expires in: {format_seconds(max(left, 0))}")
    _traffic(result)
    if result.changes:
        out_console.print(f"  Changed from {target}:")
        for note in result.changes:
            out_console.print(f"    • {note}", markup=False)
    share_served = any(r.served for r in result.routes if r.role == "share")
    for link in result.links:
        out_console.print(
            f"  Share link: {link}" + ("" if share_served else " (not served yet)"), markup=False
        )
    sys.stdout.flush()


def _traffic(result: StartResult) -> None:
    """The header to send and the routes that carry it; or, when no route is served, why."""
    served = [r for r in result.routes if r.served]
    if result.routes_problem and not served:
        out_console.print(
            f"  Traffic: routes declared but not served: {result.routes_problem}", markup=False
        )
        return
    for hint in sorted({p.traffic for p in result.pods if p.traffic}):
        out_console.print(f"  Traffic: {hint}", markup=False)
    for line in served_lines(served):
        out_console.print(f"    served: {line}", markup=False)
    for route in result.routes:
        if route.problem:
            out_console.print(f"    not served: {route.problem}", markup=False)


def status(summaries: Sequence[EnvironmentStatus], output: StatusFormat, key: str | None) -> None:
    """`status`: a table and the notes under it, one JSON list, or one environment's
    Markdown (the caller makes sure there is one)."""
    if output is StatusFormat.json:
        print_json([s.model_dump(mode="json", by_alias=True) for s in summaries])
        return
    if output is StatusFormat.markdown:
        sys.stdout.write(markdown(summaries[0]))
        return
    if not summaries:
        out_console.print(
            f"No preview environment with key {key!r}." if key else "No preview environments."
        )
        return
    header, *lines = columns(STATUS_COLUMNS, _status_rows(summaries))
    out_console.print(header, style="bold", markup=False)
    if lines:
        out_console.print("\n".join(lines), markup=False)
    for env in summaries:
        _status_notes(env)


def _status_rows(summaries: Sequence[EnvironmentStatus]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for env in summaries:
        state = env.state if not env.reason else f"{env.state}: {env.reason}"
        if not env.pods:
            rows.append(
                (env.key, state, env.ttl, "-", ",".join(env.namespaces) or "-", "-", "-", "-", "-")
            )
        for index, pod in enumerate(env.pods):
            ready = pod.state if not pod.reason else f"{pod.state} ({pod.reason})"
            ready += ", outdated" if pod.outdated else ""  # the previous template's
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
                    ("not served: " if env.routes_problem and not env.served_routes else "")
                    + (pod.traffic or "-"),
                )
            )
    return rows


def _status_notes(env: EnvironmentStatus) -> None:
    """The lines under the table: orphans, unserved routes, share links, branches."""
    for orphan in env.orphans:
        out_console.print(f"orphaned object of {env.key}: {orphan}", markup=False)
    for line in env.served_routes:
        out_console.print(f"route of {env.key} served: {line}", markup=False)
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
    for split in env.splits:
        match = ", ".join(f"{h}={v}" for h, v in sorted(split.filter.items()))
        waiting = "?" if split.waiting is None else str(split.waiting)
        out_console.print(
            f"split queue {split.id} of {env.key}: {split.queue} -> {split.key_queue} "
            f"({split.type}, {match}): {split.state}, {waiting} waiting",
            markup=False,
        )


def clean(result: CleanResult, *, text: bool) -> None:
    if text:
        out_console.print(result.message)
    else:
        print_json(result.model_dump(mode="json"))


def bulk_clean(result: BulkCleanResult, *, text: bool) -> None:
    if not text:
        print_json(result.model_dump(mode="json"))
        return
    if not result.cleaned and not result.failed:
        out_console.print(result.message, markup=False)  # nothing matched
        return
    for each in result.cleaned:
        out_console.print(f"destroyed {each}", markup=False)
    for failure in result.failed:
        out_console.print(f"failed    {failure.key}: {failure.reason}", markup=False)
    out_console.print(result.message + ".", markup=False)


def extend(result: ExtendResult, *, text: bool) -> None:
    if not text:
        print_json(result.model_dump(mode="json", by_alias=True))
        return
    if result.expires_at is None:
        out_console.print(f"Environment {result.key} now never expires ({INFINITE}).")
        return
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    left = format_seconds(max(0, int((parse_rfc3339(result.expires_at) - now).total_seconds())))
    out_console.print(f"Environment {result.key} now expires at {result.expires_at} (in {left}).")


WAYPOINT_COLUMNS = ("SERVICE", "SELECTOR", "READY", "GATEWAY", "STAGING", "STACK", "PREVIEW ROUTES")


def waypoints(listed: Sequence[WaypointStatus], output: Format) -> None:
    """`waypoint list` (and `add`'s result): aligned columns, or a JSON list."""
    if output is Format.json:
        print_json([w.model_dump(mode="json", by_alias=True) for w in listed])
        return
    if not listed:
        out_console.print("No waypoints.")
        return
    rows = [
        (
            w.service,
            w.selector,
            "yes" if w.ready else "no",
            w.gateway,
            w.origin,
            "yes" if w.stack else "missing",
            str(len(w.preview_routes)),
        )
        for w in listed
    ]
    header, *lines = columns(WAYPOINT_COLUMNS, rows)
    out_console.print(header, style="bold", markup=False)
    out_console.print("\n".join(lines), markup=False)


def waypoint_removed(service: str, removed: bool, output: Format) -> None:
    if output is Format.json:
        print_json({"service": service, "removed": removed})
        return
    out_console.print(
        f"Waypoint of {service} removed." if removed else f"No waypoint in front of {service}.",
        markup=False,
    )
