"""Previews of real-world workload shapes (tests/e2e/workloads/, each file naming the chart
it follows) through `python -m cli start` on the test bed: every preview is accepted and
becomes Ready under the real scheduler, is no endpoint of the target's Services, mounts no
claim of the target's, leaves the target untouched, and goes with `clean`."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kclient

from preview_stack import naming
from preview_stack.derive import POD_LOCAL_VOLUMES
from tests.support.cli import Cli
from tests.support.kube import Kube
from tests.support.polling import wait_until
from tests.support.workloads import deployment

pytestmark = pytest.mark.cluster
CORPUS = Path(__file__).parent / "workloads"
NS = "corpus"
STORAGE_CLASS = "corpus-local"
REWRITTEN = "a term selecting the target's pods now selects the preview's"
SPARE_VOLUMES = 6  # 3 target claims (pg-0, redis-replicas-0/1) + persistent previews


@dataclass(frozen=True)
class Case:
    target: str
    changes: list[str]  # each must be (part of) one of start's `changes` lines
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.target.replace("/", "-") + ("-persistent" if self.config else "")


CASES = [
    Case(
        "statefulset/pg",
        ["volume data: claim template data replaced by an emptyDir (sizeLimit 8Gi)"],
    ),
    Case(
        "pod/pg-0",
        [
            "volume data: claim data-pg-0 replaced by an emptyDir (sizeLimit 8Gi)",
            "hostname dropped",
            "subdomain dropped",
        ],
    ),
    Case(
        "statefulset/redis-replicas",
        [
            "volume redis-data: claim template redis-data replaced by an emptyDir (sizeLimit 8Gi)",
            f"podAntiAffinity (preferred): {REWRITTEN}",
            f"topologySpreadConstraints: {REWRITTEN}",
        ],
    ),
    Case(
        "deployment/ingress-nginx-controller",
        ["container controller: hostPort 80 dropped", "container controller: hostPort 443 dropped"],
    ),
    Case(
        "deployment/node-exporter",
        ["hostNetwork dropped", "container node-exporter: hostPort 9100 dropped"],
    ),
    Case(
        "deployment/redis-ha-haproxy",
        [f"podAntiAffinity (required): {REWRITTEN}"],
    ),
    Case(
        "deployment/uploader",
        [
            "volume uploads: hostPath /var/lib/uploader replaced by an emptyDir",
            "volume media: nfs nfs.staging.example:/exports/media replaced by an emptyDir",
            "volume blobs: csi blob.csi.azure.com replaced by an emptyDir",
        ],
    ),
]


def _volume(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"corpus-local-{index}", "labels": {"corpus": "local"}},
        "spec": {
            "capacity": {"storage": "8Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": STORAGE_CLASS,
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/tmp/corpus-local-{index}"},
        },
    }


@pytest.fixture(scope="module")
def corpus(testbed: Any, kube: Kube) -> dict[str, Any]:
    """The corpus applied and rolled out on the test bed (with local volumes for its claims)."""
    testbed.kubectl("apply", "-f", str(CORPUS / "00-namespace.yaml"))
    volumes = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [_volume(i) for i in range(SPARE_VOLUMES)],
    }
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(volumes))
    testbed.kubectl("apply", "-f", str(CORPUS))
    testbed.kubectl(
        "-n",
        NS,
        "rollout",
        "status",
        "statefulset/pg",
        "statefulset/redis-replicas",
        "deployment/ingress-nginx-controller",
        "deployment/node-exporter",
        "deployment/redis-ha-haproxy",
        "deployment/mastodon-web",
        "deployment/uploader",
        "--timeout=120s",
    )
    return {"batch": kclient.BatchV1Api(kube.core.api_client)}


def _docs() -> list[dict[str, Any]]:
    return [
        d for p in sorted(CORPUS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
    ]


def _target_state(kube: Kube, batch: Any, target: str) -> Any:
    kind, name = target.split("/")[:2]
    if kind == "deployment":
        obj = kube.apps.read_namespaced_deployment(name, NS)
    elif kind == "statefulset":
        obj = kube.apps.read_namespaced_stateful_set(name, NS)
    elif kind == "cronjob":
        obj = batch.read_namespaced_cron_job(name, NS)
    else:
        pod = kube.core.read_namespaced_pod(name, NS)
        return (pod.metadata.uid, pod.spec.to_dict(), pod.metadata.labels)
    return (obj.metadata.generation, obj.spec.to_dict())


def _owned(kube: Kube, batch: Any, key: str) -> list[str]:
    selector = f"{naming.LABEL_KEY}={key}"
    found = [
        f"deploy/{d.metadata.name}"
        for d in kube.apps.list_namespaced_deployment(NS, label_selector=selector).items
    ]
    found += [
        f"svc/{s.metadata.name}"
        for s in kube.core.list_namespaced_service(NS, label_selector=selector).items
    ]
    found += [
        f"cm/{c.metadata.name}"
        for c in kube.core.list_namespaced_config_map(NS, label_selector=selector).items
    ]
    found += [
        f"secret/{c.metadata.name}"
        for c in kube.core.list_namespaced_secret(NS, label_selector=selector).items
    ]
    found += [
        f"pvc/{c.metadata.name}"
        for c in kube.core.list_namespaced_persistent_volume_claim(
            NS, label_selector=selector
        ).items
    ]
    found += [
        f"cronjob/{c.metadata.name}"
        for c in batch.list_namespaced_cron_job(NS, label_selector=selector).items
    ]
    found += [
        f"job/{c.metadata.name}"
        for c in batch.list_namespaced_job(NS, label_selector=selector).items
    ]
    found += [
        f"pod/{p.metadata.name}"
        for p in kube.core.list_namespaced_pod(NS, label_selector=selector).items
        if p.metadata.deletion_timestamp is None
    ]
    return found


def _endpoint_pods(kube: Kube, service: str) -> set[str]:
    slices = kube.discovery.list_namespaced_endpoint_slice(
        NS, label_selector=f"kubernetes.io/service-name={service}"
    ).items
    return {ep.target_ref.name for s in slices for ep in (s.endpoints or []) if ep.target_ref}


def _check_preview(
    cli: Cli, kube: Kube, batch: Any, case: Case, key: str, tmp_path: Path
) -> dict[str, Any]:
    """Start, check what every preview must be, and return start's JSON (cleaned after)."""
    target_services = [d["metadata"]["name"] for d in _docs() if d["kind"] == "Service"]
    target_claims = {
        c.metadata.name for c in kube.core.list_namespaced_persistent_volume_claim(NS).items
    }
    before = _target_state(kube, batch, case.target)
    config = tmp_path / "mirrord.json"
    config.write_text(json.dumps({"target": {"path": case.target, "namespace": NS}, **case.config}))
    started = cli(
        "start", "-f", str(config), "-i", "preview:pr", "-k", key, "--routing", "none", "-o", "json"
    )
    try:
        assert started.code == 0, started.stderr
        doc = started.json()
        assert doc["pods"] and all(p["ready"] for p in doc["pods"]), doc
        for expected in case.changes:
            assert any(expected in line for line in doc["changes"]), (expected, doc["changes"])

        pods = kube.core.list_namespaced_pod(NS, label_selector=f"{naming.LABEL_KEY}={key}").items
        own_claims = {
            c.metadata.name
            for c in kube.core.list_namespaced_persistent_volume_claim(
                NS, label_selector=f"{naming.LABEL_KEY}={key}"
            ).items
        }
        for pod in pods:
            claims = {
                v.persistent_volume_claim.claim_name
                for v in pod.spec.volumes or []
                if v.persistent_volume_claim
            }
            assert claims <= own_claims and not claims & target_claims, claims
            # No storage of staging's: every other volume is made for the pod, or a view
            # of API objects (unless the case's config shares one by name).
            shared = set(
                case.config.get("feature", {}).get("preview", {}).get("shared_volumes", [])
            )
            for volume in kube.core.api_client.sanitize_for_serialization(pod.spec.volumes or []):
                kinds = set(volume) - {"name"}
                if volume["name"] not in shared and kinds != {"persistentVolumeClaim"}:
                    assert kinds <= POD_LOCAL_VOLUMES, volume
            assert not pod.spec.host_network
            for c in pod.spec.containers:
                assert all(not p.host_port for p in c.ports or []), c.ports
        # Isolated: no target Service lists a preview pod (the preview Services do).
        names = {p.metadata.name for p in pods}
        for service in target_services:
            assert not _endpoint_pods(kube, service) & names, service
        # A headless target Service gets a headless preview Service, and only then.
        for preview in kube.core.list_namespaced_service(
            NS, label_selector=f"{naming.LABEL_KEY}={key}"
        ).items:
            of = preview.metadata.annotations[f"{naming.DOMAIN}/previews-service"]
            headless = kube.core.read_namespaced_service(of, NS).spec.cluster_ip == "None"
            assert (preview.spec.cluster_ip == "None") is headless, of
        assert _target_state(kube, batch, case.target) == before
        return dict(doc)
    finally:
        cleaned = cli("clean", "-k", key)
        assert cleaned.code == 0, cleaned.stderr
        assert wait_until(lambda: _owned(kube, batch, key) == [])
        assert _target_state(kube, batch, case.target) == before


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_workload_shape_gets_a_ready_isolated_preview(
    cli: Cli, kube: Kube, corpus: dict[str, Any], case: Case, tmp_path: Path
) -> None:
    _check_preview(cli, kube, corpus["batch"], case, f"wl-{case.id}"[:40].rstrip("-"), tmp_path)


def test_persistent_volumes_are_claims_of_the_environment(
    cli: Cli, kube: Kube, corpus: dict[str, Any], tmp_path: Path
) -> None:
    """feature.preview.volumes: persistent: the preview's own claim, of the target's class and
    size, owned by the environment (Bound here to a spare local volume: the test bed has no
    provisioner), deleted with it."""
    key = "wl-persistent"
    batch = corpus["batch"]
    seen: dict[str, Any] = {}

    def watch_claim() -> bool:
        claims = kube.core.list_namespaced_persistent_volume_claim(
            NS, label_selector=f"{naming.LABEL_KEY}={key}"
        ).items
        if claims:
            seen["claim"] = claims[0]
        return bool(claims)

    case = Case(
        "statefulset/pg",
        [
            "volume data: claim template data replaced by the preview's own claim "
            "data-pg-wl-persistent"
        ],
        {"feature": {"preview": {"volumes": "persistent"}}},
    )
    original_start = cli

    def start_and_watch(*args: str, **kw: Any) -> Any:
        result = original_start(*args, **kw)
        if args[0] == "start":
            assert wait_until(watch_claim, 10)
        return result

    _check_preview(start_and_watch, kube, batch, case, key, tmp_path)
    claim = seen["claim"]
    assert claim.metadata.name == "data-pg-wl-persistent"
    assert claim.metadata.labels[naming.LABEL_MANAGED_BY] == naming.MANAGED_BY
    assert claim.spec.storage_class_name == STORAGE_CLASS
    assert claim.spec.resources.requests["storage"] == "8Gi"
    assert claim.status.phase == "Bound"


def test_host_paths_nfs_and_csi_volumes_become_empty_dirs_unless_shared_by_name(
    cli: Cli, kube: Kube, corpus: dict[str, Any], tmp_path: Path
) -> None:
    """deployment/uploader mounts a hostPath, an nfs export and a CSI volume: the preview's
    pod (read from the API) has emptyDirs there and its config volumes as they were; with
    feature.preview.shared_volumes the named one stays, said on stderr and in JSON."""
    batch = corpus["batch"]
    seen: dict[str, Any] = {}

    def start_and_read(key: str) -> Any:
        def run(*args: str, **kw: Any) -> Any:
            result = cli(*args, **kw)
            if args[0] == "start" and result.code == 0:
                seen[key] = kube.apps.read_namespaced_deployment(f"uploader-{key}", NS)
                seen[f"{key}-stderr"] = result.stderr
            return result

        return run

    key = "wl-uploader"
    doc = _check_preview(
        start_and_read(key), kube, batch, Case("deployment/uploader", []), key, tmp_path
    )
    volumes = {
        v["name"]: v
        for v in kube.core.api_client.sanitize_for_serialization(
            seen[key].spec.template.spec.volumes
        )
    }
    assert volumes["uploads"] == {"name": "uploads", "emptyDir": {}}
    assert volumes["media"] == {"name": "media", "emptyDir": {}}
    assert volumes["blobs"] == {"name": "blobs", "emptyDir": {}}
    assert volumes["config"]["configMap"]["name"] == "uploader-config"
    assert volumes["scratch"] == {"name": "scratch", "emptyDir": {}}
    assert len([c for c in doc["changes"] if c.startswith("volume ")]) == 3, doc["changes"]
    assert doc["warnings"] == []

    key = "wl-uploader-shared"
    config = {"feature": {"preview": {"shared_volumes": ["media"]}}}
    doc = _check_preview(
        start_and_read(key), kube, batch, Case("deployment/uploader", [], config), key, tmp_path
    )
    volumes = {
        v["name"]: v
        for v in kube.core.api_client.sanitize_for_serialization(
            seen[key].spec.template.spec.volumes
        )
    }
    assert volumes["media"]["nfs"] == {"server": "nfs.staging.example", "path": "/exports/media"}
    assert volumes["uploads"] == {"name": "uploads", "emptyDir": {}}
    warning = (
        "volume media (nfs nfs.staging.example:/exports/media) is shared with "
        "deployment/uploader (feature.preview.shared_volumes): the preview can read and "
        "write staging's data there"
    )
    assert doc["warnings"] == [warning]
    assert f"warning: {warning}" in seen[f"{key}-stderr"]


def test_env_rules_cover_env_from_and_files_are_mounted(
    cli: Cli, kube: Kube, corpus: dict[str, Any], tmp_path: Path
) -> None:
    """mastodon-web: DATABASE_URL comes from envFrom (a ConfigMap and a Secret); excluding it
    works, LOCAL_DOMAIN is overridden in place so WEB_DOMAIN=$(LOCAL_DOMAIN) follows, an
    env_file adds variables, and config/secret mounts are the environment's own objects."""
    batch = corpus["batch"]
    key = "wl-mastodon"
    (tmp_path / "preview.env").write_text(
        "# preview only\nS3_ENABLED=true\nexport SMTP_SERVER='smtp.preview'\n"
    )
    (tmp_path / "token").write_text("preview-only-token")
    config = {
        "feature": {
            "env": {
                "exclude": ["DATABASE_URL", "VAPID_*"],
                "override": {"LOCAL_DOMAIN": "pr.example.com"},
                "env_file": str(tmp_path / "preview.env"),
            },
            "preview": {
                "config_mounts": [
                    {"path": "/opt/mastodon/config/settings.yml", "text": "theme: preview\n"},
                    {
                        "path": "/opt/mastodon/public/favicon.ico",
                        "binary": base64.b64encode(b"\x00\x01ico").decode(),
                    },
                ],
                "secret_mounts": [
                    {"path": "/run/secrets/api-token", "from_file": str(tmp_path / "token")}
                ],
            },
        }
    }
    deployments: dict[str, Any] = {}

    def start_and_read(*args: str, **kw: Any) -> Any:
        result = cli(*args, **kw)
        if args[0] == "start" and result.code == 0:
            deployments["web"] = kube.apps.read_namespaced_deployment(f"mastodon-web-{key}", NS)
            deployments["cm"] = kube.core.read_namespaced_config_map(
                f"mastodon-web-{key}-files", NS
            )
            deployments["secret"] = kube.core.read_namespaced_secret(
                f"mastodon-web-{key}-secret-files", NS
            )
            deployments["record"] = kube.core.read_namespaced_config_map(f"preview-env-{key}", NS)
        return result

    doc = _check_preview(
        start_and_read, kube, batch, Case("deployment/mastodon-web", [], config), key, tmp_path
    )
    container = deployments["web"].spec.template.spec.containers[0]
    assert not container.env_from  # expanded: the rules apply to every variable
    names = [e.name for e in container.env]
    assert "DATABASE_URL" not in names and not [n for n in names if n.startswith("VAPID_")]
    assert names.index("LOCAL_DOMAIN") < names.index("WEB_DOMAIN")  # $(LOCAL_DOMAIN) expands
    by_name = {e.name: e for e in container.env}
    assert by_name["LOCAL_DOMAIN"].value == "pr.example.com"
    assert by_name["S3_ENABLED"].value == "true" and by_name["SMTP_SERVER"].value == "smtp.preview"
    assert by_name["OTP_SECRET"].value_from.secret_key_ref.name == "mastodon"  # a reference
    assert by_name["DB_HOST"].value_from.config_map_key_ref.name == "mastodon-env"
    mounts = {m.mount_path: m for m in container.volume_mounts}
    assert mounts["/opt/mastodon/config/settings.yml"].sub_path == "f0-settings.yml"
    assert mounts["/run/secrets/api-token"].sub_path == "f0-api-token"
    assert deployments["cm"].data == {"f0-settings.yml": "theme: preview\n"}
    assert deployments["cm"].binary_data == {
        "f1-favicon.ico": base64.b64encode(b"\x00\x01ico").decode()
    }
    assert base64.b64decode(deployments["secret"].data["f0-api-token"]) == b"preview-only-token"
    assert deployments["secret"].metadata.labels[naming.LABEL_MANAGED_BY] == naming.MANAGED_BY
    record = json.dumps(deployments["record"].data)
    assert (
        "preview-only-token" not in record
        and base64.b64encode(b"preview-only-token").decode() not in record
    )
    assert "smtp.preview" not in record and "pr.example.com" not in record
    assert "preview-only-token" not in json.dumps(doc)


def test_env_rules_refuse_env_from_that_cannot_be_read(
    cli: Cli, kube: Kube, corpus: dict[str, Any], tmp_path: Path, testbed: Any
) -> None:
    """An envFrom Secret that does not exist cannot be filtered: one line, exit 2, nothing made."""
    lost = {"name": "app", "image": "x:1", "envFrom": [{"secretRef": {"name": "nowhere"}}]}
    manifest = deployment("lost-env", NS, [lost], replicas=0)
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
    config = tmp_path / "m.json"
    config.write_text(json.dumps({"feature": {"env": {"exclude": ["X"]}}}))
    failed = cli(
        "start",
        "-f",
        str(config),
        "-i",
        "x:2",
        "-k",
        "wl-lost",
        "-t",
        "deployment/lost-env",
        "-n",
        NS,
    )
    assert failed.code == 2, failed.stderr
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: feature.env include/exclude cannot be applied to container 'app': the keys of "
        "envFrom secret nowhere cannot be read (not found); grant read access to it, or drop "
        "feature.env.include/exclude"
    )
    assert _owned(kube, corpus["batch"], "wl-lost") == []


def test_cronjob_preview_runs_once_at_start(
    cli: Cli, kube: Kube, corpus: dict[str, Any], tmp_path: Path
) -> None:
    batch = corpus["batch"]
    key = "wl-cron"
    seen: dict[str, Any] = {}

    def start_and_read(*args: str, **kw: Any) -> Any:
        result = cli(*args, **kw)
        if args[0] == "start" and result.code == 0:
            seen["cron"] = batch.read_namespaced_cron_job(f"mastodon-media-remove-{key}", NS)
            seen["job"] = batch.read_namespaced_job(f"mastodon-media-remove-{key}-start", NS)
        return result

    case = Case(
        "cronjob/mastodon-media-remove",
        [],
        {"feature": {"preview": {"cronjob": {"schedule": "30 2 * * *"}}}},
    )
    _check_preview(start_and_read, kube, batch, case, key, tmp_path)
    cron, job = seen["cron"], seen["job"]
    assert cron.spec.schedule == "30 2 * * *"
    assert cron.spec.job_template.spec.template.spec.containers[0].image == "preview:pr"
    assert job.status.succeeded == 1
    assert job.spec.template.spec.containers[0].image == "preview:pr"
    assert "app.kubernetes.io/component" not in (job.spec.template.metadata.labels or {})


def test_start_says_what_it_changed(cli: Cli, kube: Kube, corpus: dict[str, Any]) -> None:
    key = "wl-text"
    started = cli("start", "-t", "statefulset/pg", "-n", NS, "-i", "pg:pr", "-k", key)
    try:
        assert started.code == 0, started.stderr
        assert "Changed from statefulset/pg:" in started.stdout
        assert (
            "• volume data: claim template data replaced by an emptyDir (sizeLimit 8Gi)"
            in started.stdout
        )
    finally:
        assert cli("clean", "-k", key).code == 0
    assert wait_until(lambda: _owned(kube, corpus["batch"], key) == [])
