"""Every bad input: one line naming the problem and the fix, the right exit code, nothing
created in the cluster or the backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.kube import Kube, objects_of
from tests.support.paths import EXAMPLES
from tests.support.stacks import stack_names

pytestmark = pytest.mark.cluster
CONFIG = str(EXAMPLES / "mirrord.json")


def files(tmp: Path) -> dict[str, str]:
    made = {
        "syntax.json": '{\n  "target": "deployment/users",\n  "feature": {,}\n}',
        "kind.json": '{"target": "daemonset/users"}',
        "both.json": '{"target": "deployment/users", "feature": {"preview": '
        '{"ttl_mins": 5, "ttl_secs": 5}}}',
        "types.yaml": "target: deployment/users\nfeature:\n  preview:\n    replicas: lots\n",
        "shared.json": '{"target": {"path": "deployment/users", "namespace": "staging"}, '
        '"feature": {"preview": {"shared_volumes": ["uploads"]}}}',
        "rmq-regex.json": '{"target": "deployment/users", "feature": {"split_queues": '
        '{"orders": {"queue_type": "RMQ", "message_filter": {"mirrord-session": "^pr-.*"}}}}}',
        "unprepared.yaml": "target: deployment/users\nfeature:\n  split_queues:\n"
        "    orders:\n      queue_type: RMQ\n"
        "      message_filter: {mirrord-session: '{{ key }}'}\n",
    }
    for name, text in made.items():
        (tmp / name).write_text(text)
    return {name: str(tmp / name) for name in made}


CASES = [
    ("missing-image", ["-f", CONFIG], 2, "no image given: pass -i/--image"),
    (
        "config-not-found",
        ["-f", "/nonexistent/mirrord.json", "-i", "x:1"],
        2,
        "config file /nonexistent/mirrord.json not found",
    ),
    ("syntax", ["-f", "@syntax.json", "-i", "x:1"], 2, "syntax.json:3:15: invalid JSON"),
    (
        "unknown-kind",
        ["-f", "@kind.json", "-i", "x:1"],
        2,
        "target.path: unknown target kind 'daemonset'",
    ),
    ("both-ttls", ["-f", "@both.json", "-i", "x:1"], 2, "set either ttl_mins or ttl_secs"),
    ("wrong-type", ["-f", "@types.yaml", "-i", "x:1"], 2, "feature.preview.replicas:"),
    ("bad-ttl", ["-f", CONFIG, "-i", "x:1", "--ttl", "soon"], 2, "bad duration 'soon'"),
    (
        "rmq-regex-filter",
        ["-f", "@rmq-regex.json", "-i", "x:1"],
        2,
        "feature.split_queues: orders: message_filter 'mirrord-session': '^pr-.*' is a regex",
    ),
    (
        "unprepared-queue",
        ["-f", "@unprepared.yaml", "-i", "x:1"],
        2,
        "feature.split_queues: queue 'orders' is not prepared in namespace default "
        "(prepared there: none)",
    ),
    (
        "invalid-key",
        ["-f", CONFIG, "-i", "x:1", "-k", "Bad_Key"],
        2,
        "invalid key: the key 'Bad_Key' is not a lowercase DNS label",
    ),
    (
        "target-not-found",
        ["-f", CONFIG, "-i", "x:1", "-t", "deployment/nope"],
        2,
        "target deployment/nope not found in namespace staging (existing deployments: ",
    ),
    (
        "container-not-found",
        ["-f", CONFIG, "-i", "x:1", "-t", "deployment/users/container/nope"],
        2,
        "container 'nope' not found in deployment/users "
        "(containers: app, envoy; init containers: migrate)",
    ),
    (
        "namespace-not-found",
        ["-f", CONFIG, "-i", "x:1", "-n", "nope"],
        2,
        "namespace 'nope' not found (namespaces: ",
    ),
    (
        "shared-volume-not-found",
        ["-f", "@shared.json", "-i", "x:1"],
        2,
        "feature.preview.shared_volumes: deployment/users has no volume 'uploads' (volumes: ",
    ),
    (
        "kept-label-matches-service",
        ["-f", "@labels.json", "-i", "x:1"],
        2,
        "would put the preview pods behind Service staging/users",
    ),
]


@pytest.mark.parametrize(
    ("args", "code", "message"), [pytest.param(a, c, m, id=i) for i, a, c, m in CASES]
)
def test_start_refuses_bad_input(
    cli: Cli, kube: Kube, staging: str, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    paths = files(tmp_path)
    (tmp_path / "labels.json").write_text(
        '{"target": {"path": "deployment/users", "namespace": "staging"}, '
        '"feature": {"preview": {"labels": {"include": ["app"]}}}}'
    )
    paths["labels.json"] = str(tmp_path / "labels.json")
    key = "e2e-bad"
    argv = [paths[a[1:]] if a.startswith("@") else a for a in args]
    if "-k" not in argv:
        argv += ["-k", key]
    result = cli("start", *argv)
    assert result.code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert result.stdout == ""
    assert key not in stack_names()
    assert objects_of(kube, key) == []


def test_unreachable_cluster(cli: Cli, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: "
        "'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
    )
    result = cli(
        "--kubeconfig", str(kubeconfig), "start", "-f", CONFIG, "-i", "x:1", "-k", "e2e-bad"
    )
    assert result.code == 1
    assert "cannot reach the cluster" in result.stderr.strip().splitlines()[-1]


def test_unauthorised_user(cli: Cli, testbed: object, staging: str) -> None:
    kubeconfig = testbed.user_kubeconfig("mallory")  # type: ignore[attr-defined]
    result = cli(
        "--kubeconfig", str(kubeconfig), "start", "-f", CONFIG, "-i", "x:1", "-k", "e2e-bad"
    )
    assert result.code == 1
    assert "the cluster refused" in result.stderr.strip().splitlines()[-1]


def test_unwritable_backend(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "--backend",
        "file:///proc/preview-env-backend",
        "start",
        "-f",
        CONFIG,
        "-i",
        "x:1",
        "-k",
        "e2e-bad",
    )
    assert result.code == 2
    assert "backend file:///proc/preview-env-backend cannot be created" in result.stderr


def test_clean_unknown_key_is_fine(cli: Cli) -> None:
    result = cli("clean", "-k", "never-existed")
    assert result.code == 0
    assert "Nothing to clean" in result.stdout
