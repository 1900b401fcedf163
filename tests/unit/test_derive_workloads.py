"""Real-world workload shapes: every rule of the pure derivation that keeps a preview
schedulable, isolated and off staging's state."""

from __future__ import annotations

import base64
import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from preview_stack import naming
from preview_stack.config import MirrordConfig, parse_dotenv, validate
from preview_stack.derive import (
    TargetWorkload,
    derivation_notes,
    derive_service,
    pod_template_of,
    preview_pod,
    record_manifest,
    selector_matches,
)
from preview_stack.errors import BadInput
from preview_stack.request import Flags, build_request
from preview_stack.spec import CronJobRules, EnvironmentSpec, EnvRules, FileMount, ServiceSpec
from tests.support.specs import TARGET, env_with, service

OWN = {naming.LABEL_KEY: "pr-42", naming.LABEL_TARGET: "statefulset-db"}


def statefulset(**pod: Any) -> dict[str, Any]:
    return {
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "staging"},
        "spec": {
            "serviceName": "db-headless",
            "template": {
                "metadata": {"labels": {"app": "db", "role": "primary"}},
                "spec": {
                    "containers": [
                        {
                            "name": "postgresql",
                            "image": "postgres:16",
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/pg"}],
                        }
                    ],
                    **pod,
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": "fast",
                        "resources": {"requests": {"storage": "8Gi"}},
                    },
                }
            ],
        },
    }


def db(**changes: Any) -> ServiceSpec:
    return service(target=naming_target("statefulset/db"), image="postgres:pr", **changes)


def naming_target(path: str) -> Any:
    from preview_stack.config import TargetPath

    return TargetPath.parse(path)


def derived(
    obj: dict[str, Any], spec: ServiceSpec, services: list[Any] | None = None, **extra: Any
) -> list[dict[str, Any]]:
    target = replace(pod_template_of(obj), **extra)
    return derive_service(env_with(spec), spec, target, services or [])


def pod_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    workload = manifests[0]
    if workload["kind"] == "CronJob":
        spec: dict[str, Any] = workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    pod: dict[str, Any] = workload["spec"]["template"]["spec"]
    return pod


# ------------------------------------------------------------------ storage
def test_claim_templates_become_sized_empty_dirs() -> None:
    manifests = derived(statefulset(), db())
    pod = pod_of(manifests)
    assert pod["volumes"] == [{"name": "data", "emptyDir": {"sizeLimit": "8Gi"}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/pg"}]
    assert [m["kind"] for m in manifests] == ["Deployment"]  # no claim of anyone's


def test_claim_volumes_become_empty_dirs_sized_from_the_claim() -> None:
    obj = statefulset(
        volumes=[
            {"name": "shared", "persistentVolumeClaim": {"claimName": "uploads"}},
            {"name": "other", "persistentVolumeClaim": {"claimName": "unreadable"}},
        ]
    )
    obj["spec"]["volumeClaimTemplates"] = []
    claims = {"uploads": {"resources": {"requests": {"storage": "2Gi"}}}}
    spec = db()
    pod = pod_of(derived(obj, spec, claims=claims))
    assert pod["volumes"] == [
        {"name": "shared", "emptyDir": {"sizeLimit": "2Gi"}},
        {"name": "other", "emptyDir": {}},
    ]
    target = replace(pod_template_of(obj), claims=claims)
    notes = derivation_notes(env_with(spec), spec, target)
    assert "volume shared: claim uploads replaced by an emptyDir (sizeLimit 2Gi)" in notes
    assert any("claim unreadable" in n and "size unknown" in n for n in notes)


def test_persistent_volumes_are_claims_of_the_preview_with_the_targets_class() -> None:
    manifests = derived(statefulset(), db(volumes="persistent"))
    pod = pod_of(manifests)
    [claim] = [m for m in manifests if m["kind"] == "PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "data-db-pr-42"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "8Gi"}},
        "storageClassName": "fast",
    }
    assert claim["metadata"]["labels"][naming.LABEL_MANAGED_BY] == naming.MANAGED_BY
    assert claim["metadata"]["labels"][naming.LABEL_KEY] == "pr-42"
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-pr-42"}}
    ]


def test_persistent_volumes_refuse_a_claim_that_cannot_be_read() -> None:
    obj = statefulset(volumes=[{"name": "x", "persistentVolumeClaim": {"claimName": "hidden"}}])
    with pytest.raises(BadInput, match=r"claim hidden .* cannot be read; .*volumes: ephemeral"):
        derived(obj, db(volumes="persistent"))


# ------------------------------------------------------------------ host networking
def test_host_network_and_host_ports_are_dropped_with_notes() -> None:
    obj = statefulset(
        hostNetwork=True,
        dnsPolicy="ClusterFirstWithHostNet",
    )
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["ports"] = [{"containerPort": 80, "hostPort": 80, "hostIP": "0.0.0.0"}]
    spec = db()
    pod = pod_of(derived(obj, spec))
    assert "hostNetwork" not in pod
    assert pod["containers"][0]["ports"] == [{"containerPort": 80}]
    notes = derivation_notes(env_with(spec), spec, pod_template_of(obj))
    assert "hostNetwork dropped: the preview gets its own pod network" in notes
    assert "container postgresql: hostPort 80 dropped (containerPort 80 stays)" in notes


# ------------------------------------------------------------------ scheduling
def term(selector: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"labelSelector": selector, "topologyKey": "kubernetes.io/hostname", **extra}


def test_affinity_terms_selecting_the_target_select_the_preview() -> None:
    own_term = term({"matchLabels": {"app": "db"}})
    cache_term = term({"matchLabels": {"app": "cache"}})
    obj = statefulset(
        affinity={
            "nodeAffinity": {"x": 1},
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [own_term, cache_term],
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "podAffinityTerm": term(
                            {
                                "matchExpressions": [
                                    {"key": "app", "operator": "In", "values": ["db"]}
                                ]
                            }
                        ),
                    }
                ],
            },
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    term({}),  # every pod: dropped
                    term({"matchLabels": {"app": "db"}}, namespaces=["elsewhere"]),
                ]
            },
        },
        topologySpreadConstraints=[
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "db"}},
                "matchLabelKeys": ["pod-template-hash"],
            }
        ],
    )
    pod = pod_of(derived(obj, db()))
    anti = pod["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"] == [
        term({"matchLabels": OWN}),
        cache_term,  # other pods: kept
    ]
    preferred = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert preferred == {"weight": 1, "podAffinityTerm": term({"matchLabels": OWN})}
    assert pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == [
        term({"matchLabels": {"app": "db"}}, namespaces=["elsewhere"])  # not our namespace
    ]
    assert pod["affinity"]["nodeAffinity"] == {"x": 1}  # nodes: as the target
    [spread] = pod["topologySpreadConstraints"]
    assert spread["labelSelector"] == {"matchLabels": OWN}
    assert spread["matchLabelKeys"] == ["pod-template-hash"]


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {"a": "1"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1"},
            False,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
        ({}, {"a": "1"}, True),
        (None, {"a": "1"}, False),
    ],
)
def test_label_selectors(selector: Any, labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(selector, labels) is matches


# ------------------------------------------------------------------ env
def envfrom_target(*sources: dict[str, Any]) -> dict[str, Any]:
    obj = statefulset()
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["envFrom"] = list(sources)
    container["env"] = [
        {"name": "HOST", "value": "db"},
        {"name": "URL", "value": "postgres://$(HOST)/$(NAME)"},
    ]
    return obj


def test_exclude_applies_to_env_from_secrets_as_key_references() -> None:
    obj = envfrom_target(
        {"secretRef": {"name": "db-creds"}},
        {"configMapRef": {"name": "db-config"}, "prefix": "CFG_"},
        {"configMapRef": {"name": "maybe", "optional": True}},
    )
    sources = {
        "secret/db-creds": ["DATABASE_URL", "PASSWORD", "HOST"],
        "configmap/db-config": ["MODE"],
        "configmap/maybe": "not found",
    }
    pod = pod_of(derived(obj, db(env=EnvRules(exclude=["DATABASE_URL"])), env_sources=sources))
    container = pod["containers"][0]
    assert "envFrom" not in container
    assert container["env"] == [
        {
            "name": "PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "PASSWORD"}},
        },
        {
            "name": "CFG_MODE",
            "valueFrom": {"configMapKeyRef": {"name": "db-config", "key": "MODE"}},
        },
        {"name": "HOST", "value": "db"},  # env wins over envFrom's HOST
        {"name": "URL", "value": "postgres://$(HOST)/$(NAME)"},
        {"name": naming.ENV_KEY_VAR, "value": "pr-42"},
    ]


def test_env_from_kept_verbatim_without_include_or_exclude() -> None:
    obj = envfrom_target({"secretRef": {"name": "db-creds"}})
    pod = pod_of(derived(obj, db(env=EnvRules(override={"X": "1"}))))
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "db-creds"}}]


def test_env_rules_refuse_env_from_whose_keys_cannot_be_read() -> None:
    obj = envfrom_target({"secretRef": {"name": "db-creds"}})
    with pytest.raises(
        BadInput,
        match=r"keys of envFrom secret db-creds cannot be read \(403 Forbidden\); grant read",
    ):
        derived(
            obj, db(env=EnvRules(include=["*"])), env_sources={"secret/db-creds": "403 Forbidden"}
        )


def test_override_replaces_in_place_so_later_references_expand() -> None:
    obj = envfrom_target()
    pod = pod_of(derived(obj, db(env=EnvRules(override={"HOST": "preview-db", "NEW": "1"}))))
    assert [(v["name"], v.get("value")) for v in pod["containers"][0]["env"]] == [
        ("HOST", "preview-db"),
        ("URL", "postgres://$(HOST)/$(NAME)"),
        ("NEW", "1"),
        (naming.ENV_KEY_VAR, "pr-42"),
    ]


def test_dotenv_files() -> None:
    text = "# comment\nexport A=1\nB = two words # note\nC='lit $x # y'\nD=\"line\\nnext\"\n\nE=\n"
    assert parse_dotenv(text, source=".env") == {
        "A": "1",
        "B": "two words",
        "C": "lit $x # y",
        "D": "line\nnext",
        "E": "",
    }
    with pytest.raises(BadInput, match=r"^\.env:2: not a KEY=value line"):
        parse_dotenv("A=1\nnot a line\n", source=".env")


def test_env_file_values_are_overrides_and_the_configs_win() -> None:
    config = validate(
        {"feature": {"env": {"env_file": "x.env", "override": {"A": "config"}}}},
        source=Path("m.json"),
    )
    request = build_request(
        config,
        Flags(image="i:1"),
        default_namespace="ns",
        read_file=lambda path, *, what: b"A=file\nB=file\n",
    )
    assert request.service.env.override == {"A": "config", "B": "file"}


# ------------------------------------------------------------------ files
def test_config_and_secret_mounts() -> None:
    config = validate(
        {
            "feature": {
                "preview": {
                    "config_mounts": [
                        {"path": "/etc/app/app.yaml", "text": "a: 1\n"},
                        {
                            "path": "/etc/app/logo.png",
                            "binary": base64.b64encode(b"\x89PNG\xff").decode(),
                        },
                    ],
                    "secret_mounts": [{"path": "/run/secrets/token", "from_file": "tok"}],
                }
            }
        },
        source=Path("m.json"),
    )
    spec = build_request(
        config,
        Flags(image="users:pr", target="deployment/users", namespace="staging"),
        default_namespace="ns",
        read_file=lambda path, *, what: b"s3cr3t",
    ).service

    target = replace(pod_template_of(TARGET), env_sources={"configmap/users-config": []})
    env = env_with(spec)
    manifests = derive_service(env, spec, target, [])
    by_kind = {m["kind"]: m for m in manifests}
    config_map, secret = by_kind["ConfigMap"], by_kind["Secret"]
    assert config_map["metadata"]["name"] == "users-pr-42-files"
    assert config_map["data"] == {"f0-app.yaml": "a: 1\n"}
    assert config_map["binaryData"] == {"f1-logo.png": base64.b64encode(b"\x89PNG\xff").decode()}
    assert secret["data"] == {"f0-token": base64.b64encode(b"s3cr3t").decode()}
    # The ConfigMap owns the Secret (the garbage collector deletes it with the ConfigMap).
    owner = secret["metadata"]["annotations"]["preview-env.dev/owned-by-configmap"]
    assert owner == config_map["metadata"]["name"]
    pod = pod_of(manifests)
    app = pod["containers"][0]
    assert {
        "name": "preview-env-files",
        "mountPath": "/etc/app/app.yaml",
        "subPath": "f0-app.yaml",
        "readOnly": True,
    } in app["volumeMounts"]
    assert {
        "name": "preview-env-secret-files",
        "mountPath": "/run/secrets/token",
        "subPath": "f0-token",
        "readOnly": True,
    } in app["volumeMounts"]
    assert {
        "name": "preview-env-secret-files",
        "secret": {"secretName": "users-pr-42-secret-files"},
    } in pod["volumes"]
    assert "proxy" not in str(pod["containers"][1].get("volumeMounts"))
    record = record_manifest(env)["data"]["spec.json"]
    assert "s3cr3t" not in record and base64.b64encode(b"s3cr3t").decode() not in record


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ({"path": "relative", "text": "x"}, "must be an absolute file path"),
        ({"path": "/a", "text": "x", "binary": "eA=="}, "exactly one of"),
        ({"path": "/a", "binary": "not base64!"}, "not valid base64"),
    ],
)
def test_bad_mounts_are_refused(mount: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        validate({"feature": {"preview": {"config_mounts": [mount]}}}, source=Path("m.json"))


# ------------------------------------------------------------------ services and identity
def test_headless_target_services_get_headless_previews() -> None:
    headless = {
        "metadata": {"name": "db-headless"},
        "spec": {
            "clusterIP": "None",
            "selector": {"app": "db"},
            "publishNotReadyAddresses": True,
            "ports": [{"name": "pg", "port": 5432}],
        },
    }
    portless = {
        "metadata": {"name": "db-peers"},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}},
    }
    manifests = derived(statefulset(), db(), services=[headless, portless])
    services = [m for m in manifests if m["kind"] == "Service"]
    assert [s["metadata"]["name"] for s in services] == ["db-headless-pr-42", "db-peers-pr-42"]
    assert services[0]["spec"] == {
        "type": "ClusterIP",
        "clusterIP": "None",
        "selector": OWN,
        "ports": [{"name": "pg", "port": 5432}],
        "publishNotReadyAddresses": True,
    }
    assert "ports" not in services[1]["spec"]


def test_pod_targets_lose_runtime_annotations_and_identity() -> None:
    pod_obj = {
        "kind": "Pod",
        "metadata": {
            "name": "db-0",
            "namespace": "staging",
            "labels": {"app": "db", "statefulset.kubernetes.io/pod-name": "db-0"},
            "annotations": {
                "prometheus.io/scrape": "true",
                "kubernetes.io/config.seen": "x",
                "cni.projectcalico.org/podIP": "10.0.0.1/32",
                "k8s.v1.cni.cncf.io/network-status": "[]",
                "kubectl.kubernetes.io/restartedAt": "now",
            },
        },
        "spec": {
            "hostname": "db-0",
            "subdomain": "db-headless",
            "nodeName": "n1",
            "containers": [{"name": "c", "image": "i:1"}],
        },
    }
    spec = service(target=naming_target("pod/db-0"))
    manifests = derive_service(env_with(spec), spec, pod_template_of(pod_obj), [])
    template = manifests[0]["spec"]["template"]
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert not {"hostname", "subdomain", "nodeName"} & set(template["spec"])


def test_an_init_container_can_be_the_one_replaced() -> None:
    spec = service(target=naming_target("deployment/users/container/migrate"))
    target = pod_template_of(TARGET)
    pod = derive_service(env_with(spec), spec, target, [])[0]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "users:pr-42"
    assert {c["image"] for c in pod["containers"]} == {"users:1", "envoy:1"}
    default = derive_service(env_with(service()), service(), target, [])[0]
    assert default["spec"]["template"]["spec"]["initContainers"][0]["image"] == "users:1"


# ------------------------------------------------------------------ cronjobs
CRONJOB: dict[str, Any] = {
    "kind": "CronJob",
    "metadata": {"name": "report", "namespace": "staging"},
    "spec": {
        "schedule": "0 3 * * *",
        "concurrencyPolicy": "Forbid",
        "successfulJobsHistoryLimit": 1,
        "jobTemplate": {
            "spec": {
                "backoffLimit": 2,
                "ttlSecondsAfterFinished": 60,
                "template": {
                    "metadata": {"labels": {"app": "report"}},
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "containers": [{"name": "report", "image": "report:1"}],
                    },
                },
            }
        },
    },
}


def test_cronjob_targets_copy_the_cronjob_and_trigger_once() -> None:
    spec = service(target=naming_target("cronjob/report"), image="report:pr")
    cron, job = derive_service(env_with(spec), spec, pod_template_of(CRONJOB), [])
    assert (cron["kind"], cron["metadata"]["name"]) == ("CronJob", "report-pr-42")
    assert cron["spec"]["schedule"] == "0 3 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    template = cron["spec"]["jobTemplate"]["spec"]["template"]
    assert template["spec"]["containers"][0]["image"] == "report:pr"
    assert template["spec"]["restartPolicy"] == "OnFailure"
    assert "app" not in template["metadata"]["labels"]
    assert (job["kind"], job["metadata"]["name"]) == ("Job", "report-pr-42-start")
    assert job["spec"]["template"] == template
    assert "ttlSecondsAfterFinished" not in job["spec"] and job["spec"]["backoffLimit"] == 2


def test_cronjob_schedule_and_trigger_from_the_config() -> None:
    spec = service(
        target=naming_target("cronjob/report"),
        cronjob=CronJobRules(schedule="*/5 * * * *", trigger_on_start=False),
    )
    [cron] = derive_service(env_with(spec), spec, pod_template_of(CRONJOB), [])
    assert cron["spec"]["schedule"] == "*/5 * * * *"


def test_cronjob_settings_need_a_cronjob_target() -> None:
    config = MirrordConfig.model_validate(
        {"feature": {"preview": {"cronjob": {"schedule": "* * * * *"}}}}
    )
    with pytest.raises(BadInput, match="applies to cronjob/NAME targets only"):
        build_request(config, Flags(image="i", target="deployment/x"), default_namespace="ns")


def test_the_target_is_never_mutated() -> None:
    obj = envfrom_target({"secretRef": {"name": "s"}})
    before = copy.deepcopy(obj)
    derived(
        obj,
        db(volumes="persistent", env=EnvRules(exclude=["X"], override={"HOST": "h"})),
        env_sources={"secret/s": ["X"]},
    )
    assert obj == before


def test_spec_files_round_trip() -> None:
    spec = service(files=[FileMount(path="/a", data="eA==", text=True)])
    env = env_with(spec)
    assert EnvironmentSpec.model_validate_json(env.model_dump_json()) == env
    assert isinstance(pod_template_of(CRONJOB), TargetWorkload)


def test_a_completed_job_pod_counts_as_ready() -> None:
    from preview_stack.status import pod_ready

    assert pod_ready({"status": {"phase": "Succeeded", "conditions": []}})
    assert not pod_ready({"status": {"phase": "Running", "conditions": []}})


def test_secret_mounts_alone_still_get_their_owning_config_map() -> None:
    spec = service(files=[FileMount(path="/s", data="eA==", text=True, secret=True)])

    target = replace(pod_template_of(TARGET), env_sources={"configmap/users-config": []})
    kinds = [m["kind"] for m in derive_service(env_with(spec), spec, target, [])]
    assert kinds.count("ConfigMap") == 1 and kinds.count("Secret") == 1


def test_override_of_an_env_from_variable_comes_before_env_references() -> None:
    obj = envfrom_target({"configMapRef": {"name": "db-config"}})
    spec = db(env=EnvRules(override={"NAME": "preview", "NEW": "1"}))
    pod = pod_of(derived(obj, spec, env_sources={"configmap/db-config": ["NAME"]}))
    assert pod["containers"][0]["envFrom"] == [{"configMapRef": {"name": "db-config"}}]
    assert [v["name"] for v in pod["containers"][0]["env"]] == [
        "NAME",  # from envFrom: first, so URL's $(NAME) sees the override
        "HOST",
        "URL",
        "NEW",
        naming.ENV_KEY_VAR,
    ]


# ------------------------------------------------------------------ volumes that share storage
SHARING = [
    {"name": "uploads", "hostPath": {"path": "/var/lib/uploader", "type": "DirectoryOrCreate"}},
    {"name": "media", "nfs": {"server": "nfs.staging", "path": "/exports/media"}},
    {"name": "blobs", "csi": {"driver": "blob.csi.azure.com", "volumeAttributes": {"x": "y"}}},
    {"name": "rbd", "rbd": {"monitors": ["10.0.0.1:6789"], "image": "staging"}},
    {"name": "ebs", "awsElasticBlockStore": {"volumeID": "vol-1"}},
    {"name": "repo", "gitRepo": {"repository": "https://example.com/r.git"}},
]
POD_LOCAL = [
    {"name": "tmp", "emptyDir": {}},
    {"name": "conf", "configMap": {"name": "app-config"}},
    {"name": "creds", "secret": {"secretName": "app-creds"}},
    {"name": "info", "downwardAPI": {"items": [{"path": "l", "fieldRef": {"fieldPath": "x"}}]}},
    {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
    {
        "name": "scratch",
        "ephemeral": {
            "volumeClaimTemplate": {
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {}}}
            }
        },
    },
    {"name": "models", "image": {"reference": "models:1"}},
]


def sharing_target() -> dict[str, Any]:
    obj = statefulset(volumes=copy.deepcopy(SHARING + POD_LOCAL))
    obj["spec"]["volumeClaimTemplates"] = []
    return obj


def test_volumes_that_can_hold_stagings_data_become_empty_dirs_with_notes() -> None:
    """An allow-list: only volumes made for the pod (emptyDir, ephemeral claims) or views of
    API objects and images stay; hostPath, nfs, csi and every other type is replaced."""
    obj = sharing_target()
    spec = db()
    pod = pod_of(derived(obj, spec))
    by_name = {v["name"]: v for v in pod["volumes"]}
    for volume in SHARING:
        assert by_name[volume["name"]] == {"name": volume["name"], "emptyDir": {}}, volume
    for volume in POD_LOCAL:
        assert by_name[volume["name"]] == volume  # kept as the target has it
    notes = derivation_notes(env_with(spec), spec, pod_template_of(obj))
    assert any(
        n.startswith("volume uploads: hostPath /var/lib/uploader replaced by an emptyDir")
        for n in notes
    ), notes
    assert any(
        n.startswith("volume media: nfs nfs.staging:/exports/media replaced by an emptyDir")
        for n in notes
    ), notes
    assert any(n.startswith("volume blobs: csi blob.csi.azure.com replaced") for n in notes)
    assert any(n.startswith("volume ebs: awsElasticBlockStore replaced") for n in notes)
    assert all("shared_volumes" in n for n in notes if n.startswith("volume ")), notes
    assert not [n for n in notes if any(v["name"] in n.split(":")[0] for v in POD_LOCAL)]


def test_persistent_volumes_do_not_share_host_paths_either() -> None:
    obj = sharing_target()
    manifests = derived(obj, db(volumes="persistent"))
    pod = pod_of(manifests)
    assert {v["name"]: v for v in pod["volumes"]}["uploads"] == {
        "name": "uploads",
        "emptyDir": {},
    }
    assert [m for m in manifests if m["kind"] == "PersistentVolumeClaim"] == []
    persistent = db(volumes="persistent")
    notes = derivation_notes(env_with(persistent), persistent, pod_template_of(obj))
    assert any(n.startswith("volume uploads: hostPath") for n in notes)


def test_shared_volumes_are_kept_by_name_with_a_warning() -> None:
    obj = sharing_target()
    obj["spec"]["template"]["spec"]["volumes"].append(
        {"name": "state", "persistentVolumeClaim": {"claimName": "uploader-state"}}
    )
    spec = db(shared_volumes=["uploads", "state"])
    pod = pod_of(derived(obj, spec))
    by_name = {v["name"]: v for v in pod["volumes"]}
    assert by_name["uploads"] == SHARING[0]
    assert by_name["state"] == {
        "name": "state",
        "persistentVolumeClaim": {"claimName": "uploader-state"},
    }
    assert by_name["media"] == {"name": "media", "emptyDir": {}}  # not named: replaced
    derived_pod = preview_pod(pod_template_of(obj), spec, env_with(spec))
    assert derived_pod.warnings == [
        "volume uploads (hostPath /var/lib/uploader) is shared with statefulset/db "
        "(feature.preview.shared_volumes): the preview can read and write staging's data there",
        "volume state (claim uploader-state) is shared with statefulset/db "
        "(feature.preview.shared_volumes): the preview can read and write staging's data there",
    ]
    assert any(n.startswith("volume uploads: shared with the target") for n in derived_pod.notes)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["nowhere"], r"shared_volumes: statefulset/db has no volume 'nowhere' \(volumes: "),
        (["data"], r"'data' is a claim template: each pod of statefulset/db has its own"),
    ],
)
def test_shared_volumes_must_name_a_volume_of_the_target(names: list[str], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        derived(statefulset(), db(shared_volumes=names))


def test_shared_volumes_come_from_the_config() -> None:
    config = validate(
        {"feature": {"preview": {"shared_volumes": ["uploads"]}}}, source=Path("m.json")
    )
    request = build_request(
        config, Flags(image="x:1", target="deployment/u"), default_namespace="staging"
    )
    assert request.service.shared_volumes == ["uploads"]
    targetless = validate(
        {"feature": {"preview": {"shared_volumes": ["uploads"]}}}, source=Path("m.json")
    )
    with pytest.raises(BadInput, match="shared_volumes needs a target"):
        build_request(targetless, Flags(image="x:1", target="targetless"), default_namespace="s")
