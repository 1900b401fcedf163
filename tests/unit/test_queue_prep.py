"""Queue preparations and per-key splits (pure): the lookup `start` does, the preview
pod's changes, the objects of a preparation, and the keeper's rounds over a fake broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from adapters.queues.keeper import Io, Keeper
from preview_stack import queue_prep
from preview_stack.config import MirrordConfig, TargetPath
from preview_stack.derive import derive_service, pod_template_of
from preview_stack.errors import BadInput
from preview_stack.queue_prep import KeeperStatus, KeyQueueStatus, KeySplit, Preparation
from preview_stack.request import Flags, build_request
from tests.support.specs import TARGET, env_with

PREP = Preparation(
    id="orders",
    namespace="staging",
    type="rmq",
    source="orders-in",
    target_kind="deployment",
    target_name="users",
    container="app",
    env="QUEUE",
    secret="broker",
    secret_key="url",
    image="preview-env:1",
    exchange="shop",
    routing_key="orders",
)
SPLIT_CONFIG = {
    "target": "deployment/users",
    "feature": {
        "split_queues": {
            "orders": {"queue_type": "RMQ", "message_filter": {"mirrord-session": "^pr-42$"}}
        }
    },
}


def _request(prepared: dict[str, Preparation], config: dict[str, Any] = SPLIT_CONFIG) -> Any:
    return build_request(
        MirrordConfig.model_validate(config),
        Flags(image="users:pr-42"),
        default_namespace="staging",
        preparations=lambda ns: prepared if ns == "staging" else {},
    )


@pytest.mark.parametrize(
    ("prepared", "config", "message"),
    [
        ({}, SPLIT_CONFIG, "queue 'orders' is not prepared in namespace staging (prepared "
         "there: none); a platform engineer prepares it once with `preview-env queues "
         "prepare orders -t KIND/NAME -n staging ...`"),
        ({"orders": PREP.model_copy(update={"type": "kafka"})}, SPLIT_CONFIG,
         "is a RMQ queue in the config, but it is prepared in staging as kafka"),
        ({"orders": PREP.model_copy(update={"target_name": "billing"})}, SPLIT_CONFIG,
         "is prepared for deployment/billing, not deployment/users"),
        ({"orders": PREP.model_copy(update={"state": "unprepared"})}, SPLIT_CONFIG,
         "is not prepared in namespace staging"),
        ({"orders": PREP}, {**SPLIT_CONFIG, "target": "deployment/users/container/proxy"},
         "is read by container 'app' of deployment/users, not 'proxy'"),
    ],
    ids=["unknown-id", "type-mismatch", "other-target", "being-unprepared", "other-container"],
)  # fmt: skip
def test_start_refuses_a_queue_not_prepared_for_it(
    prepared: dict[str, Preparation], config: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadInput, match=r"feature\.split_queues: queue 'orders'") as caught:
        _request(prepared, config)
    assert message in str(caught.value)


def _derived() -> list[dict[str, Any]]:
    spec = _request({"orders": PREP}).service
    return derive_service(env_with(spec), spec, pod_template_of(TARGET_WITH_QUEUE), [])


TARGET_WITH_QUEUE: dict[str, Any] = {
    **TARGET,
    "spec": {
        **TARGET["spec"],
        "template": {
            **TARGET["spec"]["template"],
            "spec": {
                **TARGET["spec"]["template"]["spec"],
                "containers": [
                    {
                        **TARGET["spec"]["template"]["spec"]["containers"][0],
                        "env": [{"name": "QUEUE", "value": "orders-in"}],
                    },
                    TARGET["spec"]["template"]["spec"]["containers"][1],
                ],
            },
        },
    },
}


def test_preview_reads_the_keys_queue_after_an_init_container_binds_it() -> None:
    manifests = _derived()
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    app = next(c for c in pod["containers"] if c["name"] == "app")
    assert {"name": "QUEUE", "value": "orders-in.preview-env.pr-42"} in app["env"]
    first = pod["initContainers"][0]
    assert first["image"] == "preview-env:1"
    assert first["args"] == [
        "queues", "bind", "orders", "--type", "rmq", "--queue", "orders-in.preview-env.pr-42",
        "--match", "mirrord-session=pr-42",
    ]  # fmt: skip
    assert first["env"] == [
        {
            "name": "PREVIEW_ENV_BROKER_URL",
            "valueFrom": {"secretKeyRef": {"name": "broker", "key": "url"}},
        }
    ]
    assert [c["name"] for c in pod["initContainers"]][1:] == ["migrate"]
    # The target is never modified: the derivation returns new dicts.
    assert TARGET_WITH_QUEUE["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "QUEUE", "value": "orders-in"}
    ]


def test_the_keys_stack_declares_a_split_configmap() -> None:
    split = next(
        m
        for m in _derived()
        if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "preview-env-split-orders-pr-42"
    )
    labels = split["metadata"]["labels"]
    assert labels[queue_prep.LABEL_QUEUE] == "orders"
    assert labels["preview-env.dev/component"] == "queue-split"
    assert labels["preview-env.dev/key"] == "pr-42"
    parsed = queue_prep.parse_split(split)
    assert parsed == KeySplit(
        queue_id="orders",
        key="pr-42",
        queue="orders-in.preview-env.pr-42",
        filter={"mirrord-session": "pr-42"},
    )
    assert queue_prep.binding_arguments(parsed) == {"x-match": "all", "mirrord-session": "pr-42"}


def test_record_round_trips_and_names_the_broker_objects() -> None:
    record = queue_prep.record_manifest(PREP)
    assert record["metadata"]["name"] == "preview-env-queue-orders"
    assert queue_prep.parse_record(record) == PREP
    assert '"headers_exchange": "preview-env.split.orders"' in record["data"]["preparation.json"]
    assert queue_prep.parse_record({"data": {"preparation.json": "{garbage"}}) is None


def test_keeper_may_read_configmaps_and_patch_only_its_status() -> None:
    made = {m["kind"]: m for m in queue_prep.keeper_manifests(PREP)}
    rules = made["Role"]["rules"]
    assert rules[0]["verbs"] == ["get", "list", "watch"]
    assert rules[1] == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["preview-env-queue-orders-status"],
        "verbs": ["patch", "update"],
    }
    keeper = made["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert keeper["args"] == ["queues", "keep", "orders", "-n", "staging"]
    assert "value" not in keeper["env"][0]  # the URL by reference only


@pytest.mark.parametrize(
    ("container", "var", "message"),
    [
        (None, "NOPE", "--env NOPE: container 'app' of the target has no such variable"),
        ("db", "QUEUE", "--container 'db' is not a container of the target"),
    ],
)
def test_source_is_a_literal_variable_of_the_target(
    container: str | None, var: str, message: str
) -> None:
    pod = pod_template_of(TARGET_WITH_QUEUE).pod_spec
    assert queue_prep.source_of(pod, None, "QUEUE") == ("app", "orders-in")
    with pytest.raises(BadInput, match=message):
        queue_prep.source_of(pod, container, var)


def test_secret_ref_needs_name_and_key() -> None:
    assert queue_prep.parse_secret_ref("broker:url") == ("broker", "url")
    with pytest.raises(BadInput, match="use SECRET:KEY"):
        queue_prep.parse_secret_ref("amqp://user:pw@host")


# ------------------------------------------------------------------------ the keeper
class FakeBroker:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.queues: dict[str, int] = {}

    def prepare(self) -> None:
        self.calls.append("prepare")

    def bind(self, split: KeySplit) -> None:
        self.queues.setdefault(split.queue, 0)

    def reconcile(
        self, desired: Sequence[KeySplit], known: Sequence[KeyQueueStatus]
    ) -> list[KeyQueueStatus]:
        for split in desired:
            self.bind(split)
        for old in known:
            if old.queue not in {s.queue for s in desired}:
                self.calls.append(f"remove {old.queue}")
                self.queues.pop(old.queue, None)
        return [
            KeyQueueStatus(key=s.key, queue=s.queue, filter=s.filter, waiting=0) for s in desired
        ]

    def unprepare(self) -> None:
        self.calls.append("unprepare")

    def close(self) -> None:
        pass


def test_keeper_keeps_split_keys_removes_gone_ones_then_unprepares() -> None:
    broker = FakeBroker()
    state: dict[str, Any] = {"prep": PREP, "splits": [], "status": None}
    io = Io(
        record=lambda: state["prep"],
        splits=lambda: state["splits"],
        status=lambda: state["status"],
        write_status=lambda s: state.update(status=s),
        log=lambda _line: None,
    )
    keeper = Keeper(io, "amqp://x", connect=lambda _p, _u: broker)
    split = queue_prep.key_split(PREP, "pr-42", {"mirrord-session": "pr-42"}, "steal")
    state["splits"] = [split]
    keeper.run(rounds=2, sleep=lambda _s: None)
    status: KeeperStatus = state["status"]
    assert status.state == "prepared"
    assert [k.key for k in status.keys] == ["pr-42"]
    assert broker.calls == ["prepare"]  # once per process: idempotent on the broker
    state["splits"] = []  # clean, the reaper or pulumi destroy removed the split ConfigMap
    keeper.run(rounds=1, sleep=lambda _s: None)
    assert broker.calls[-1] == "remove orders-in.preview-env.pr-42"
    assert state["status"].keys == []
    state["prep"] = replace_state(PREP)
    keeper.run(rounds=2, sleep=lambda _s: None)
    assert broker.calls[-1] == "unprepare" and broker.calls.count("unprepare") == 1
    assert state["status"].state == "unprepared"


def replace_state(prep: Preparation) -> Preparation:
    return prep.model_copy(update={"state": "unprepared"})


def test_keeper_reports_a_bad_preparation_as_bad_input() -> None:
    class Refusing(FakeBroker):
        def prepare(self) -> None:
            raise BadInput("exchange 'shop' does not exist on the broker")

    state: dict[str, Any] = {"status": None}
    io = Io(
        record=lambda: PREP,
        splits=lambda: [],
        status=lambda: state["status"],
        write_status=lambda s: state.update(status=s),
        log=lambda _line: None,
    )
    Keeper(io, "amqp://x", connect=lambda _p, _u: Refusing()).run(rounds=1, sleep=lambda _s: 0)
    assert state["status"].state == "failed" and state["status"].bad_input
    assert state["status"].error == "exchange 'shop' does not exist on the broker"


def test_target_path_container_is_optional() -> None:
    assert TargetPath.parse("deployment/users").container is None


def test_status_shows_each_split_with_what_waits_in_the_keys_queue() -> None:
    from preview_stack.inventory import split_status

    keeper = KeeperStatus(
        state="prepared",
        keys=[KeyQueueStatus(key="pr-42", queue="orders-in.preview-env.pr-42", waiting=3)],
    )
    row = split_status(PREP, {"mirrord-session": "pr-42"}, "pr-42", keeper)
    assert (row.state, row.waiting, row.key_queue) == ("split", 3, "orders-in.preview-env.pr-42")
    assert split_status(PREP, {}, "pr-7", keeper).state == "pending"
    failed = keeper.model_copy(update={"state": "failed", "error": "RabbitMQ cannot be reached"})
    assert split_status(PREP, {}, "pr-42", failed).state == (
        "keeper failed: RabbitMQ cannot be reached"
    )
    assert split_status(PREP, {}, "pr-42", None).state == "keeper missing"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Orders", "--type", "rmq"], "queue id 'Orders' must be lowercase letters"),
        (
            ["orders", "--type", "sqs"],
            "--type 'sqs' is not supported by this release: use kafka or rmq",
        ),
        (["orders", "--type", "rmq", "--url-from", "amqp://u:p@h"], "--url-from: use SECRET:KEY"),
    ],
    ids=["queue-id", "type", "url-on-the-command-line"],
)
def test_prepare_refuses_bad_flags_before_reaching_anything(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    base = {"--url-from": "broker:url"}
    flags = ["-t", "deployment/orders", "-n", "staging", "--env", "QUEUE"]
    if "--url-from" not in args:
        flags += ["--url-from", base["--url-from"]]
    result = CliRunner().invoke(
        app, ["--kubeconfig", "/nonexistent", "queues", "prepare", *args, *flags]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
    assert "u:p@h" not in result.output


class _Keepers:
    """keeper_status as a cluster answers it: the key's queue listed from the `after`th read."""

    def __init__(self, after: int) -> None:
        self.after, self.reads = after, 0

    def keeper_status(self, namespace: str, queue_id: str) -> KeeperStatus:
        self.reads += 1
        listed = [KeyQueueStatus(key="pr-42", queue="orders-in.preview-env.pr-42")]
        return KeeperStatus(state="prepared", keys=listed if self.reads >= self.after else [])


def test_start_waits_until_the_keeper_has_seen_the_key_s_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from adapters.k8s import previews
    from preview_stack.spec import QueueUse, ServiceSpec

    monkeypatch.setattr(previews.time, "sleep", lambda _s: None)
    service = ServiceSpec(
        target=TargetPath(kind="deployment", name="users"),
        namespace="staging",
        image="u:1",
        split_queues=[QueueUse(preparation=PREP, filter={"mirrord-session": "pr-42"})],
    )
    said: list[str] = []
    keepers = _Keepers(after=3)
    assert previews.wait_until_kept(keepers, service, "pr-42", said.append) == []  # type: ignore[arg-type]
    assert keepers.reads == 3 and said == [
        "Waiting for the queue keepers to take over the key's queues..."
    ]
    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr(previews.time, "monotonic", lambda: float(next(clock)))
    (warning,) = previews.wait_until_kept(_Keepers(after=10**6), service, "pr-42")  # type: ignore[arg-type]
    assert "queue keeper of staging/orders has not seen pr-42's queue" in warning
    assert (
        previews.wait_until_kept(_Keepers(1), service.model_copy(update={"split_queues": []}), "k")
        == []
    )  # type: ignore[arg-type]
