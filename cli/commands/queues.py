"""`preview-env queues`: a platform engineer's one-time preparation of a queue for
splitting (prepare, unprepare, list), and the two commands the cluster runs (`keep`: the
keeper Deployment; `bind`: the preview pods' init container)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from adapters.automation import connect
from adapters.k8s.cluster import Cluster, ClusterTarget
from adapters.queues.broker import BrokerError, broker_for, supported_types
from adapters.queues.keeper import Io, Keeper
from adapters.queues.rabbitmq import default_exchange_refusal
from cli.context import err_console, handles_errors, settings
from cli.output import Format, Progress, columns, print_json
from preview_stack import kafka_split, naming, queue_prep
from preview_stack.config import TargetPath
from preview_stack.errors import BadInput, DeployFailed
from preview_stack.queue_prep import KeeperStatus, Preparation
from preview_stack.queues import check_queue_id
from preview_stack.spec import DEFAULT_COPY_IMAGE, ServiceSpec

IMAGE_ENV = "PREVIEW_ENV_QUEUE_IMAGE"
app = typer.Typer(
    name="queues",
    help="Queues prepared for splitting by key (feature.split_queues).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
Namespace = Annotated[str, typer.Option("-n", "--namespace", help="the queue's namespace")]
Timeout = Annotated[int, typer.Option(help="seconds to wait for the keeper")]


def _program(prep: Preparation, topic: str | None = None) -> Callable[[], None]:
    """The preparation's Pulumi program (pulumi is loaded only when a stack is applied);
    `topic` (kafka): what the target's variable names (kafka_split.target_topic)."""

    def program() -> None:
        from adapters.queue_stack import declare_preparation

        declare_preparation(prep, topic)

    return program


def _check_unchanged(cluster: Cluster, prep: Preparation) -> None:
    """Preparing again is a no-op; preparing the same id differently on the broker would
    leave the first preparation's bindings behind, so it must be undone first."""
    record = cluster.configmap(prep.namespace, queue_prep.record_name(prep.id))
    old = queue_prep.parse_record(record) if record else None
    fields = ("type", "source", "exchange", "routing_key", "group")
    if old and old.state == "prepared" and any(getattr(old, f) != getattr(prep, f) for f in fields):
        raise BadInput(
            f"queue {prep.id} is prepared in {prep.namespace} for {old.source} through "
            f"{old.exchange or 'the default exchange'}; run `preview-env queues unprepare "
            f"{prep.id} -n {prep.namespace}` first to prepare it differently"
        )


def _touched_broker(cluster: Cluster, prep: Preparation) -> bool:
    """Whether the keeper may have prepared the broker (so the reversal must run first);
    one that never started or refused the preparation changed nothing there."""
    status = queue_prep.parse_status(
        cluster.configmap(prep.namespace, queue_prep.status_name(prep.id))
    )
    return status is not None and status.state != "starting" and not status.bad_input


def _wait(cluster: Cluster, prep: Preparation, want: str, timeout: int) -> KeeperStatus:
    """The keeper's status once it reports `want` or fails; DeployFailed on timeout."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        obj = cluster.configmap(prep.namespace, queue_prep.status_name(prep.id))
        status = queue_prep.parse_status(obj)
        if status and (status.state == want or status.bad_input):
            return status
        time.sleep(1)
    why = f" (last: {status.state}: {status.error})" if status and status.error else ""
    raise DeployFailed(
        f"the keeper of queue {prep.id} did not report {want} within {timeout}s{why} (kept); "
        f"see kubectl logs -n {prep.namespace} deploy/{queue_prep.keeper_name(prep.id)}, "
        f"then run the command again, or `preview-env queues unprepare {prep.id} -n "
        f"{prep.namespace}`"
    )


def _kafka_phase(cluster: Cluster, prep: Preparation) -> str | None:
    """kafka: what the preparation's patch sets the target's variable to now (see
    kafka_split.target_topic: the keeper first, the patch once it reports)."""
    if prep.type != "kafka":
        return None
    spec = ServiceSpec(target=TargetPath.parse(prep.target), namespace=prep.namespace, image="-")
    workload = cluster.workload(spec)
    assert workload is not None
    _, current = queue_prep.source_of(workload.pod_spec, prep.container, prep.env)
    status = queue_prep.parse_status(
        cluster.configmap(prep.namespace, queue_prep.status_name(prep.id))
    )
    return kafka_split.target_topic(
        prep.source,
        state=prep.state,
        keeper_state=status.state if status else None,
        keeper_error=status.error if status else "",
        current=current,
    )


def _point_back(
    cluster: Cluster, stacks: Any, name: str, undone: Preparation, progress: Progress, timeout: int
) -> None:
    """kafka: once the keeper has stopped the splitter and the target has read all of
    staging, the patch points the target back at the source; the keeper then deletes the
    staging topic (when the target has left it) and reports `unprepared`."""
    deadline = time.monotonic() + timeout
    while _kafka_phase(cluster, undone) != undone.source:
        if time.monotonic() > deadline:
            raise DeployFailed(
                f"the keeper of queue {undone.id} did not hand the topic back within "
                f"{timeout}s; see kubectl logs -n {undone.namespace} "
                f"deploy/{queue_prep.keeper_name(undone.id)}"
            )
        time.sleep(1)
    stacks.apply_platform(name, _program(undone, undone.source), **_handlers(progress))


def _handlers(progress: Progress) -> dict[str, Any]:
    return {"on_event": progress.on_event, "on_output": progress.on_output}


def _source(cluster: Cluster, namespace: str, queue_id: str, type_: str, value: str) -> str:
    """The queue or topic to split: kafka's patched target names the staging topic."""
    if type_ != "kafka":
        return value
    record = cluster.configmap(namespace, queue_prep.record_name(queue_id))
    recorded = queue_prep.parse_record(record) if record else None
    try:
        return kafka_split.source_from(value, recorded.source if recorded else None)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


@app.command("prepare")
@handles_errors
def prepare(
    ctx: typer.Context,
    queue_id: Annotated[str, typer.Argument(metavar="ID", help="the queue id of split_queues")],
    target: Annotated[str, typer.Option("-t", "--target", help="KIND/NAME: the consumer")],
    namespace: Namespace,
    type_: Annotated[str, typer.Option("--type", help="rmq or kafka")],
    env: Annotated[str, typer.Option(help="the target's variable naming the queue or topic")],
    url_from: Annotated[str, typer.Option(help="SECRET:KEY in the namespace: the broker URL")],
    exchange: Annotated[str, typer.Option(help="rmq: the producers' exchange")] = "",
    group: Annotated[str, typer.Option(help="kafka: the target's consumer group")] = "",
    routing_key: Annotated[str, typer.Option(help="rmq: its binding key [the queue]")] = "",
    container: Annotated[str | None, typer.Option(help="[the target's first]")] = None,
    image: Annotated[str | None, typer.Option(help=f"keeper image [${IMAGE_ENV}]")] = None,
    timeout: Timeout = 120,
    output: Annotated[Format, typer.Option("--output", "-o")] = Format.text,
) -> None:
    """Prepare a queue for splitting (once per queue; idempotent)."""
    try:
        check_queue_id(queue_id)
        kind_name = TargetPath.parse(target)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if type_ not in (supported := supported_types()):
        raise BadInput(
            f"--type {type_!r} is not supported by this release: use {' or '.join(supported)}"
        )
    secret, secret_key = queue_prep.parse_secret_ref(url_from)
    cluster, stacks = connect(settings(ctx))
    cluster.check_namespace(namespace)
    spec = ServiceSpec(target=kind_name, namespace=namespace, image="-")
    workload = cluster.workload(spec)
    assert workload is not None
    chosen, value = queue_prep.source_of(workload.pod_spec, container, env)
    source = _source(cluster, namespace, queue_id, type_, value)
    if type_ == "rmq" and exchange in ("", "amq.default"):
        raise BadInput(default_exchange_refusal(source))
    if type_ == "kafka" and not group:
        raise BadInput("--group: a Kafka preparation needs the target's consumer group")
    prep = Preparation(
        id=queue_id, namespace=namespace, type=type_, source=source,
        target_kind=kind_name.kind, target_name=kind_name.name, container=chosen, env=env,
        secret=secret, secret_key=secret_key, exchange=exchange, group=group,
        routing_key=routing_key or source,
        image=image or os.environ.get(IMAGE_ENV) or DEFAULT_COPY_IMAGE,
        placement=queue_prep.placement_of(workload.pod_spec),
    )  # fmt: skip
    _check_unchanged(cluster, prep)
    name = naming.platform_stack("queue", namespace, queue_id)
    progress = Progress(enabled=output is Format.text, verbose=settings(ctx).verbose)
    progress.line(f"Preparing queue {queue_id} ({source}) in {namespace}...")
    topic = _kafka_phase(cluster, prep)
    stacks.apply_platform(
        name,
        _program(prep, topic),
        on_event=progress.on_event,
        on_output=progress.on_output,
    )
    status = _wait(cluster, prep, "prepared", timeout)
    if status.bad_input:  # nothing was changed on the broker: nothing is left either
        stacks.destroy_platform(name, on_event=progress.on_event, on_output=progress.on_output)
        raise BadInput(f"queue {queue_id}: {status.error}")
    then = _kafka_phase(cluster, prep)
    if topic != then:  # kafka: the target reads the staging topic
        stacks.apply_platform(name, _program(prep, then), **_handlers(progress))
    row = queue_prep.queue_row(queue_id, namespace, prep, status)
    if output is Format.json:
        print_json(row)
    else:
        typer.echo(f"queue {queue_id} in {namespace} is prepared: {source} splits by key")


@app.command("unprepare")
@handles_errors
def unprepare(
    ctx: typer.Context,
    queue_id: Annotated[str, typer.Argument(metavar="ID")],
    namespace: Namespace,
    timeout: Timeout = 120,
) -> None:
    """Undo a queue's preparation (refused while an environment splits it)."""
    cluster, stacks = connect(settings(ctx))
    name = naming.platform_stack("queue", namespace, queue_id)
    if name not in stacks.platform_stacks("queue"):
        typer.echo(f"queue {queue_id} is not prepared in {namespace}: nothing to undo")
        return
    splits = cluster.configmaps(
        namespace, queue_prep.selector(queue_prep.COMPONENT_SPLIT, queue_id)
    )
    keys = sorted(naming.key_of(s) for s in splits)
    if keys:
        raise BadInput(
            f"queue {queue_id} is still split by environment {', '.join(keys)}; clean it "
            f"first (preview-env clean -k {keys[0]})"
        )
    progress = Progress(enabled=True, verbose=settings(ctx).verbose)
    record = cluster.configmap(namespace, queue_prep.record_name(queue_id))
    prep = queue_prep.parse_record(record) if record else None
    if prep is not None and _touched_broker(cluster, prep):
        progress.line(f"Unpreparing queue {queue_id} ({prep.source}) in {namespace}...")
        undone = prep.model_copy(update={"state": "unprepared"})
        topic = _kafka_phase(cluster, undone)
        stacks.apply_platform(
            name,
            _program(undone, topic),
            on_event=progress.on_event,
            on_output=progress.on_output,
        )
        if undone.type == "kafka":  # staging read: the target back to the source
            _point_back(cluster, stacks, name, undone, progress, timeout)
        _wait(cluster, undone, "unprepared", timeout)
    stacks.destroy_platform(name, on_event=progress.on_event, on_output=progress.on_output)
    typer.echo(f"queue {queue_id} in {namespace} is no longer prepared")


@app.command("list")
@handles_errors
def list_(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Option("-n", "--namespace")] = None,
    output: Annotated[Format, typer.Option("--output", "-o")] = Format.text,
) -> None:
    """The prepared queues (from the backend), with their keepers' state."""
    cluster, stacks = connect(settings(ctx))
    rows = []
    for stack in stacks.platform_stacks("queue"):
        parts = naming.platform_stack_parts(stack)
        assert parts is not None
        _, ns, queue_id = parts
        if namespace and ns != namespace:
            continue
        record = cluster.configmap(ns, queue_prep.record_name(queue_id))
        status = cluster.configmap(ns, queue_prep.status_name(queue_id))
        prep = queue_prep.parse_record(record) if record else None
        rows.append(queue_prep.queue_row(queue_id, ns, prep, queue_prep.parse_status(status)))
    if output is Format.json:
        print_json([r.model_dump(mode="json") for r in rows])
        return
    header = ("ID", "NAMESPACE", "TYPE", "TARGET", "ENV", "QUEUE", "EXCHANGE", "STATE", "KEYS")
    table = [
        (r.id, r.namespace, r.type, r.target, r.env, r.source, r.exchange or "-",
         r.state + (f": {r.error}" if r.error else ""), ",".join(r.keys) or "-")
        for r in rows
    ]  # fmt: skip
    for line in columns(header, table):
        typer.echo(line)


@app.command("keep", hidden=True)
@handles_errors
def keep(queue_id: Annotated[str, typer.Argument()], namespace: Namespace) -> None:
    """The keeper's loop (the keeper Deployment runs it, in the cluster)."""
    cluster = Cluster(ClusterTarget())
    record, status = queue_prep.record_name(queue_id), queue_prep.status_name(queue_id)
    split_selector = queue_prep.selector(queue_prep.COMPONENT_SPLIT, queue_id)

    def splits() -> list[queue_prep.KeySplit]:
        found = (queue_prep.parse_split(o) for o in cluster.configmaps(namespace, split_selector))
        return [s for s in found if s is not None]

    io = Io(
        record=lambda: queue_prep.parse_record(cluster.configmap(namespace, record) or {}),
        splits=splits,
        status=lambda: queue_prep.parse_status(cluster.configmap(namespace, status)),
        write_status=lambda s: cluster.patch_configmap(
            namespace, status, {queue_prep.STATUS_KEY: s.model_dump_json()}
        ),
        log=lambda line: err_console.print(line, markup=False),
    )
    Keeper(io, os.environ[queue_prep.URL_VAR]).run()


@app.command("bind", hidden=True)
@handles_errors
def bind(
    queue_id: Annotated[str, typer.Argument()],
    type_: Annotated[str, typer.Option("--type")],
    queue: Annotated[str, typer.Option()],
    match: Annotated[list[str], typer.Option(help="HEADER=VALUE (repeatable)")],
    timeout: Timeout = 120,
) -> None:
    """Declare a key's queue and its match (the preview pods' init container)."""
    prep = Preparation(id=queue_id, namespace="-", type=type_, source="-")
    values = dict(m.split("=", 1) for m in match)
    split = queue_prep.KeySplit(queue_id=queue_id, key="-", queue=queue, filter=values)
    deadline = time.monotonic() + timeout
    while True:
        try:
            broker = broker_for(prep, os.environ[queue_prep.URL_VAR])
            try:
                broker.bind(split)
            finally:
                broker.close()
            return
        except BrokerError as exc:  # the keeper may still be preparing the queue
            if time.monotonic() >= deadline:
                raise DeployFailed(f"queue {queue_id}: {exc}") from None
            time.sleep(2)
