"""A shared staging cluster, reviewed as an attacker and as a namespace-scoped developer
would try it: planted records, stored values, restricted identities with their own tokens,
and a reaper the cluster itself keeps to preview-env's objects."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from preview_stack import naming
from testbed import Testbed
from tests.support.cli import Cli, Result, cli_argv, cli_env
from tests.support.kube import Kube, apply, documents, objects_of
from tests.support.paths import EXAMPLES, REPO
from tests.support.polling import wait_until
from tests.support.workloads import deployment_and_service

pytestmark = pytest.mark.cluster
REAPER = "system:serviceaccount:preview-env-system:preview-env-reaper"


def token_kubeconfig(
    testbed: Testbed, tmp_path: Path, namespace: str, account: str, default_ns: str
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `namespace/account` with its token."""
    token = testbed.kubectl("-n", namespace, "create", "token", account).strip()
    config = json.loads(testbed.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    config["contexts"][0]["context"].update({"user": account, "namespace": default_ns})
    path = tmp_path / f"kubeconfig-{account}"
    path.write_text(json.dumps(config))
    return path


def write_config(tmp_path: Path, name: str, doc: dict[str, Any]) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def deployments_with_image(kube: Kube, image: str) -> list[str]:
    return [
        f"{d.metadata.namespace}/{d.metadata.name}"
        for d in kube.apps.list_deployment_for_all_namespaces().items
        if any(c.image == image for c in d.spec.template.spec.containers)
    ]


# ------------------------------------------------------------------ records are hints
def test_planted_records_never_steer_start_status_or_reap(
    cli: Cli, kube: Kube, staging: str, testbed: Testbed, tmp_path: Path
) -> None:
    key = "sec-plant"
    users = write_config(tmp_path, "users", {"target": {"path": "deployment/users"}})
    first = cli("start", "-f", users, "-n", "staging", "-i", "users:plant", "-k", key)
    assert first.code == 0, first.stderr
    genuine = kube.core.read_namespaced_config_map(naming.record_name(key), "staging")
    # An attacker with a namespace of their own plants records for the key: one naming
    # another team's target with their image and a past expiry, one malformed.
    evil_spec = {
        "key": key,
        "owner": "mallory",
        "created_at": "2020-01-01T00:00:00Z",
        "expires_at": "2020-01-01T00:00:00Z",
        "ttl_seconds": 60,
        "services": [
            {
                "target": {"kind": "deployment", "name": "frontend"},
                "namespace": "staging",
                "image": "evil:1",
            }
        ],
    }
    planted = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.record_name(key),
            "namespace": "default",
            "labels": dict(genuine.metadata.labels),  # the stack label is copied too
            "annotations": {naming.ANNOTATION_EXPIRES_AT: "2020-01-01T00:00:00Z"},
        },
        "data": {naming.RECORD_DATA_KEY: json.dumps(evil_spec)},
    }
    malformed = json.loads(json.dumps(planted))
    malformed["metadata"]["name"] = "malformed-record"
    malformed["metadata"]["annotations"] = {naming.ANNOTATION_EXPIRES_AT: "2020-01-01T00:00"}
    malformed["data"] = {naming.RECORD_DATA_KEY: "{not json"}
    genuine_pod = kube.core.list_namespaced_pod(
        "staging", label_selector=f"{naming.LABEL_KEY}={key}"
    ).items[0]
    lookalike = {  # a pod with the environment's labels, never Ready, elsewhere
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "lookalike",
            "namespace": "default",
            "labels": dict(genuine_pod.metadata.labels),
        },
        "spec": {
            "nodeSelector": {"disktype": "none"},
            "containers": [{"name": "c", "image": "evil:1"}],
        },
    }
    apply(testbed, planted, malformed, lookalike)
    try:
        orders = write_config(tmp_path, "orders", {"target": {"path": "deployment/orders"}})
        second = cli(
            "start", "-f", orders, "-n", "staging", "-i", "orders:plant", "-k", key, "-o", "json"
        )
        assert second.code == 0, second.stderr
        images = sorted(p["image"] for p in second.json()["pods"])
        assert images == ["orders:plant", "users:plant"]
        assert all(p["namespace"] == "staging" for p in second.json()["pods"])
        assert deployments_with_image(kube, "evil:1") == []

        shown = cli("status", "-k", key, "-o", "json")
        assert shown.code == 0, shown.stderr
        (env,) = shown.json()
        assert sorted(p["image"] for p in env["pods"]) == ["orders:plant", "users:plant"]
        assert env["owner"] != "mallory" and env["state"] == "ready"
        assert f"ignored record default/{naming.record_name(key)}" in shown.stderr
        assert "ignored record default/malformed-record" in shown.stderr

        reaped = cli("reap", "-o", "json")
        assert reaped.code == 0, reaped.stderr
        assert key not in {r["key"] for r in reaped.json()["results"]}
        assert len([o for o in objects_of(kube, key) if o.startswith("deploy/")]) == 2
    finally:
        testbed.kubectl(
            "delete", "configmap", "-n", "default", naming.record_name(key), "malformed-record"
        )
        testbed.kubectl("delete", "pod", "-n", "default", "lookalike", "--wait=false")
        assert cli("clean", "-k", key).code == 0


# ------------------------------------------------------------------ no plaintext values
def test_override_values_are_secret_everywhere_but_the_pod(
    cli: Cli, kube: Kube, staging: str, tmp_path: Path
) -> None:
    key = "sec-values"
    value = f"tok-{secrets.token_hex(8)}"
    config = write_config(
        tmp_path,
        "m",
        {
            "target": {"path": "deployment/users/container/app", "namespace": "staging"},
            "feature": {"env": {"override": {"API_TOKEN": value}}},
        },
    )
    state = tmp_path / "state"
    env = {"PULUMI_BACKEND_URL": f"file://{state}"}
    started = cli("-v", "start", "-f", config, "-i", "users:values", "-k", key, env=env)
    try:
        assert started.code == 0, started.stderr
        assert value not in started.stdout + started.stderr
        live = kube.apps.read_namespaced_deployment(f"users-{key}", "staging")
        app = next(c for c in live.spec.template.spec.containers if c.name == "app")
        assert {e.name: e.value for e in app.env}["API_TOKEN"] == value  # the pod has it

        record = kube.core.read_namespaced_config_map(naming.record_name(key), "staging")
        assert value not in json.dumps(record.data) and "API_TOKEN" in json.dumps(record.data)
        stored = [p for p in state.rglob("*") if p.is_file()]
        assert stored and not [p for p in stored if value.encode() in p.read_bytes()]
        shown = cli("status", "-k", key, "-o", "json", env=env)
        assert shown.code == 0 and value not in shown.stdout + shown.stderr
        plain = subprocess.run(
            ["pulumi", "stack", "output", "spec", "--stack", f"organization/preview-env/{key}"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            cwd=tmp_path,
            check=False,
        )
        assert plain.stdout.strip() == "[secret]", plain.stderr
    finally:
        assert cli("clean", "-k", key, env=env).code == 0


def test_the_default_local_backend_is_private(kube: Kube, staging: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in cli_env({"HOME": str(home), "PULUMI_HOME": str(home / ".pulumi")}).items()
        if k not in ("PULUMI_BACKEND_URL", "XDG_STATE_HOME")
    }

    def run(*args: str) -> Result:
        done = subprocess.run(
            cli_argv(*args),
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=False,
            preexec_fn=lambda: os.umask(0o022),  # a usual shell umask: we must not rely on it
        )
        return Result(done.returncode, done.stdout, done.stderr)

    key = "sec-private"
    started = run("start", "-t", "deployment/users", "-n", "staging", "-i", "u:1", "-k", key)
    try:
        assert started.code == 0, started.stderr
        root = home / ".local" / "state" / "preview-env"
        readable = [
            str(p) for p in [root, *root.rglob("*")] if stat.S_IMODE(p.stat().st_mode) & 0o077
        ]
        assert readable == []
        assert any(p.name == f"{key}.json" for p in root.rglob("*"))
    finally:
        assert run("clean", "-k", key).code == 0


# ------------------------------------------------------------------ least privilege
TEAM = "team-a"


def _team_namespace(testbed: Testbed) -> None:
    """Namespace team-a with a small target (Deployment + Service with an HTTP port)."""
    apply(testbed, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEAM}})
    api = {"name": "api", "image": "api:1", "ports": [{"name": "http", "containerPort": 8080}]}
    apply(
        testbed,
        *deployment_and_service(
            "api", TEAM, [api], [{"name": "http", "port": 80, "targetPort": "http"}]
        ),
        *documents(EXAMPLES / "kubernetes" / "developer.yaml"),
    )


def test_a_namespace_scoped_developer_can_do_everything_in_their_namespace(
    cli: Cli, kube: Kube, staging: str, testbed: Testbed, tmp_path: Path
) -> None:
    _team_namespace(testbed)
    kubeconfig = token_kubeconfig(testbed, tmp_path, TEAM, "preview-env-ci", TEAM)
    can = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "auth", "can-i", "list", "pods", "-A"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert can.stdout.strip() == "no"  # really namespace-scoped
    env = {"KUBECONFIG": str(kubeconfig), "PULUMI_BACKEND_URL": f"file://{tmp_path / 'be'}"}
    config = write_config(
        tmp_path,
        "api",
        {
            "target": "deployment/api",
            "feature": {"network": {"incoming": {"mode": "steal"}}},
        },
    )
    key = "sec-dev"
    started = cli("start", "-f", config, "-i", "api:dev", "-k", key, "-o", "json", env=env)
    try:
        assert started.code == 0, started.stderr
        assert [p["namespace"] for p in started.json()["pods"]] == [TEAM]
        assert any(o.startswith("httproute/") for o in objects_of(kube, key))
        for args in (("status", "-n", TEAM), ("status",)):
            shown = cli(*args, "-o", "json", env=env)
            assert shown.code == 0, shown.stderr
            (summary,) = [s for s in shown.json() if s["key"] == key]
            assert summary["state"] == "ready" and len(summary["pods"]) == 1
        extended = cli("extend", "-k", key, "--by", "10m", env=env)
        assert extended.code == 0, extended.stderr
    finally:
        cleaned = cli("clean", "-k", key, env=env)
        assert cleaned.code == 0, cleaned.stderr
    assert wait_until(lambda: objects_of(kube, key) == [])


def test_the_cluster_keeps_the_reaper_to_preview_env_objects(
    cli: Cli, kube: Kube, staging: str, testbed: Testbed, tmp_path: Path
) -> None:
    testbed.kubectl("apply", "-f", str(EXAMPLES / "kubernetes" / "namespace.yaml"))
    apply(
        testbed,
        *[
            d
            for d in documents(EXAMPLES / "kubernetes" / "reaper.yaml")
            if d["kind"] not in ("Secret", "CronJob")
        ],
    )
    reaper = token_kubeconfig(testbed, tmp_path, "preview-env-system", "preview-env-reaper", "x")

    def refused_to_delete_frontend() -> bool:
        done = subprocess.run(
            [
                *("kubectl", "--kubeconfig", str(reaper), "-n", "staging", "delete"),
                *("--dry-run=server", "deployment", "frontend"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.returncode != 0 and "preview-env manages" in done.stderr

    # RBAC lets the reaper delete Deployments; the admission policy refuses this one.
    assert wait_until(refused_to_delete_frontend, timeout=30)

    # A stack that lists an object preview-env does not manage (the label is gone): the
    # reaper's destroy is refused by the cluster, reported, and the object stays.
    key = "sec-deputy"
    started = cli("start", "-t", "deployment/users", "-n", "staging", "-i", "u:2", "-k", key)
    assert started.code == 0, started.stderr
    name = f"users-{key}"
    assert cli("extend", "-k", key, "--ttl", "1s").code == 0  # due (an update: labels re-set)
    testbed.kubectl("-n", "staging", "label", "deployment", name, f"{naming.LABEL_MANAGED_BY}-")
    try:
        reaped = cli(
            "--kubeconfig", str(reaper), "reap", "-o", "json", env={"KUBECONFIG": str(reaper)}
        )
        assert reaped.code == 1
        outcome = {r["key"]: r for r in reaped.json()["results"]}[key]
        assert outcome["outcome"] == "failed" and "preview-env manages" in outcome["reason"]
        assert kube.apps.read_namespaced_deployment(name, "staging").metadata.name == name
    finally:
        testbed.kubectl(
            "-n", "staging", "label", "deployment", name, f"{naming.LABEL_MANAGED_BY}=preview-env"
        )
        assert cli("clean", "-k", key).code == 0
    with pytest.raises(ApiException):
        kube.apps.read_namespaced_deployment(name, "staging")


# ------------------------------------------------------------------ traffic never crosses keys
ROUTES = ("gateway.networking.k8s.io", "v1")


def live_routes(kube: Kube, key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = kube.custom.list_namespaced_custom_object(
        *ROUTES, "staging", "httproutes", label_selector=f"{naming.LABEL_KEY}={key}"
    )["items"]
    return found


def steal_config(tmp_path: Path, name: str, header_filter: str | None = None) -> str:
    incoming: dict[str, Any] = {"mode": "steal"}
    if header_filter:
        incoming["http_filter"] = {"header_filter": header_filter}
    return write_config(
        tmp_path,
        name,
        {
            "target": {"path": "deployment/users", "namespace": "staging"},
            "feature": {"network": {"incoming": incoming}},
        },
    )


def test_default_filters_never_cross_keys_and_a_crossing_filter_is_named(
    cli: Cli, kube: Kube, staging: str, tmp_path: Path
) -> None:
    import re2  # the engine Envoy's Gateway API implementation matches headers with

    keys = ["sx-1", "sx-12"]
    default = steal_config(tmp_path, "default")
    try:
        for key in keys:
            assert cli("start", "-f", default, "-i", f"users:{key}", "-k", key).code == 0
        for key in keys:
            (route,) = live_routes(kube, key)
            (header,) = route["spec"]["rules"][0]["matches"][0]["headers"]
            assert header["name"] == "baggage"
            for other in keys:
                for value in (
                    f"mirrord-session={other}",
                    f"a=b, mirrord-session={other};p=1",
                    f"xmirrord-session={other}",
                ):
                    expected = other == key and not value.startswith("x")
                    assert bool(re2.fullmatch(header["value"], value)) is expected, value
        wide = steal_config(tmp_path, "wide", "^baggage: .*mirrord-session=sx-1.*$")
        warned = cli("start", "-f", wide, "-i", "users:wide", "-k", "sx-wide")
        keys.append("sx-wide")
        assert warned.code == 0, warned.stderr
        lines = [line for line in warned.stderr.splitlines() if line.startswith("warning:")]
        assert len(lines) == 1 and "sx-1, sx-12" in lines[0], warned.stderr
    finally:
        for key in keys:
            assert cli("clean", "-k", key).code == 0


# ------------------------------------------------------------------ templating
def test_a_hostile_branch_name_cannot_change_the_config(
    cli: Cli, kube: Kube, staging: str, tmp_path: Path
) -> None:
    hostile = 'x", "target": "deployment/orders", "y": "\n#'
    path = tmp_path / "mirrord.json"
    path.write_text(
        """{
  "target": {"path": "deployment/users/container/app", "namespace": "staging"},
  "feature": {
    "preview": {"image": "users:{{ get_env(name='PREVIEW_TAG', default='latest') }}"},
    "env": {"override": {
      "BRANCH": "{{ git_branch }}",
      "RELEASE": "{{ git_branch | default(value='main') | replace(from='/', to='-') }}"
    }}
  }
}"""
    )
    key = "sec-branch"
    env = {"MIRRORD_BRANCH_NAME": hostile, "PREVIEW_TAG": "pr-9"}
    started = cli("start", "-f", str(path), "-k", key, "-o", "json", env=env)
    try:
        assert started.code == 0, started.stderr
        (pod,) = started.json()["pods"]
        assert (pod["target"], pod["image"]) == ("deployment/users", "users:pr-9")
        live = kube.apps.read_namespaced_deployment(f"users-{key}", "staging")
        app = next(c for c in live.spec.template.spec.containers if c.name == "app")
        values = {e.name: e.value for e in app.env}
        assert values["BRANCH"] == hostile
        assert values["RELEASE"] == hostile.replace("/", "-")
        assert "y" not in values
    finally:
        assert cli("clean", "-k", key).code == 0


# ------------------------------------------------------------------ share links
def test_share_links_are_unguessable_stable_for_life_and_http_only(
    cli: Cli, kube: Kube, staging: str, testbed: Testbed, tmp_path: Path
) -> None:
    import re

    # The bed's Gateway serves the link's route (status shows a link only while served).
    share = (
        "--gateway",
        os.environ["PREVIEW_ENV_GATEWAY"],
        "--share-domain",
        "preview.example.com",
    )
    config = steal_config(tmp_path, "share")
    key = "sec-share"
    first = cli("start", "-f", config, "-i", "users:1", "-k", key, "-o", "json", *share)
    try:
        assert first.code == 0, first.stderr
        (link,) = first.json()["links"]
        assert re.fullmatch(rf"http://{key}-[a-z0-9]{{10}}\.preview\.example\.com", link)
        again = cli("start", "-f", config, "-i", "users:2", "-k", key, "-o", "json", *share)
        assert again.code == 0 and again.json()["links"] == [link]  # kept for life
        assert wait_until(
            lambda: cli("status", "-k", key, "-o", "json").json()[0]["links"] == [link], 30
        )
        route = next(r for r in live_routes(kube, key) if r["spec"].get("hostnames"))
        (rule,) = route["spec"]["rules"]
        modifier = rule["filters"][0]["requestHeaderModifier"]
        assert modifier == {"set": [{"name": "baggage", "value": f"mirrord-session={key}"}]}
    finally:
        assert cli("clean", "-k", key).code == 0

    # Opt-in stable host; another backend's environment cannot take it.
    stable = "sec-stable"
    mine = cli("start", "-f", config, "-i", "u:1", "-k", stable, "--stable-share-host", *share)
    try:
        assert mine.code == 0, mine.stderr
        assert f"http://{stable}.preview.example.com" in mine.stdout
        orders = write_config(
            tmp_path,
            "orders",
            {
                "target": {"path": "deployment/orders", "namespace": "staging"},
                "feature": {"network": {"incoming": {"mode": "steal"}}},
            },
        )
        other = {"PULUMI_BACKEND_URL": f"file://{tmp_path / 'other'}"}
        taken = cli(
            "start",
            "-f",
            orders,
            "-i",
            "o:1",
            "-k",
            stable,
            "--stable-share-host",
            *share,
            env=other,
        )
        assert taken.code == 1 and "held by environment 'sec-stable'" in taken.stderr
        assert len([x for x in taken.stderr.splitlines() if x.startswith("error:")]) == 1
    finally:
        assert cli("clean", "-k", stable).code == 0

    # A target whose Service has no HTTP port gets no share link.
    grpc = [{"name": "grpc", "port": 9090, "appProtocol": "grpc"}]
    apply(
        testbed,
        *deployment_and_service("grpc", "staging", [{"name": "grpc", "image": "grpc:1"}], grpc),
    )
    refused = cli(
        "start", "-t", "deployment/grpc", "-n", "staging", "-i", "g:1", "-k", "sec-grpc", *share
    )
    assert refused.code == 2 and "no HTTP port" in refused.stderr
    assert objects_of(kube, "sec-grpc") == []


# ------------------------------------------------------------------ honest routes
def _accept_routes_of(kube: Kube, key: str, stop: Any) -> None:
    """What a mesh controller does: write Accepted into each route's status.parents."""
    import datetime as dt

    while not stop.is_set():
        for route in live_routes(kube, key):
            if (route.get("status") or {}).get("parents"):
                continue
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            parents = [
                {
                    "parentRef": ref,
                    "controllerName": "example.com/mesh",
                    "conditions": [
                        {
                            "type": "Accepted",
                            "status": "True",
                            "reason": "Accepted",
                            "message": "",
                            "lastTransitionTime": now,
                            "observedGeneration": route["metadata"]["generation"],
                        }
                    ],
                }
                for ref in route["spec"]["parentRefs"]
            ]
            with contextlib.suppress(ApiException):
                kube.custom.patch_namespaced_custom_object_status(
                    *ROUTES,
                    "staging",
                    "httproutes",
                    route["metadata"]["name"],
                    {"status": {"parents": parents}},
                )
        stop.wait(0.3)


def test_routes_nothing_serves_are_reported_not_claimed(
    cli: Cli, kube: Kube, staging: str, tmp_path: Path
) -> None:
    import threading

    config = steal_config(tmp_path, "honest")
    key = "sec-unserved"
    started = cli("start", "-f", config, "-i", "users:1", "-k", key)
    try:
        assert started.code == 0, started.stderr
        assert "routes declared but not served: no controller accepted" in started.stdout
        assert "send header" not in started.stdout
        shown = cli("status", "-k", key, "-o", "json").json()
        assert "no controller accepted" in shown[0]["routesProblem"]
    finally:
        assert cli("clean", "-k", key).code == 0

    served = "sec-served"
    stop = threading.Event()
    controller = threading.Thread(target=_accept_routes_of, args=(kube, served, stop))
    controller.start()
    try:
        ok = cli(
            "start",
            "-f",
            config,
            "-i",
            "users:1",
            "-k",
            served,
            env={"PREVIEW_ENV_ROUTE_WAIT": "30"},
        )
        assert ok.code == 0, ok.stderr
        assert f"Traffic: steal: send header 'baggage: mirrord-session={served}'" in ok.stdout
        assert "not served" not in ok.stdout
        shown = cli("status", "-k", served, "-o", "json").json()
        assert shown[0]["routesProblem"] is None
    finally:
        stop.set()
        controller.join()
        assert cli("clean", "-k", served).code == 0
