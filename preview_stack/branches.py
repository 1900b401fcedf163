"""Database branches (feature.db_branches): a branch server per branch id, filled by an
in-cluster copy Job, and the preview pods' connection variables pointed at it. Pure.

What a branch is made of, all in the environment's stack and in the target's namespace:
- a Secret: the branch server's generated password, its user and, for a URL connection,
  the rewritten URL (`url`, written by the copy Job: only it can read the source's URL);
- the server: a Deployment (the engine's image) keeping its data on a claim of its own
  (`storage`, default 1Gi of the default class; `ephemeral`: an emptyDir), and a ClusterIP
  Service;
- the copy Job: `preview-env db copy` in the preview-env image, the source's connection
  variables copied *by reference* from the target's container (secretKeyRef,
  configMapKeyRef, envFrom keys), never by value through the CLI;
- for a URL connection: a ServiceAccount whose Role may get and patch that one Secret.

The branch's address is its Service's ClusterIP (no cluster DNS is assumed): the program
replaces each `cluster_ip(server)` placeholder with the Service's address once it exists.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from preview_stack import copy_plan, naming
from preview_stack.errors import BadInput
from preview_stack.spec import DbBranch, EnvironmentSpec, ServiceSpec

Manifest = dict[str, Any]

LABEL_BRANCH = f"{naming.DOMAIN}/db-branch"  # the branch id (as a label value)
ANNOTATION_BRANCH = f"{naming.DOMAIN}/db-branch"  # the branch id, unhashed
ANNOTATION_CONFIG = f"{naming.DOMAIN}/db-branch-config"  # a hash: a change rebuilds the branch
COMPONENT_SERVER = "db-branch"
COMPONENT_COPY = "db-branch-copy"
CLUSTER_IP = re.compile(r"^\$\(preview-env:cluster-ip:([a-z0-9-]+)\)$")
SOURCE_PREFIX = "PREVIEW_ENV_SOURCE"
BRANCH_PREFIX = "PREVIEW_ENV_BRANCH"
_DATA_DIRS = {"pg": "/var/lib/postgresql/data", "mysql": "/var/lib/mysql"}


def cluster_ip(server: str) -> str:
    """A placeholder for the branch Service's ClusterIP (the program fills it in)."""
    return f"$(preview-env:cluster-ip:{server})"


def server_name(key: str, branch: DbBranch) -> str:
    return naming.workload_name(f"db-{branch.id}", key)


def job_name(key: str, branch: DbBranch) -> str:
    return naming.fit(f"{server_name(key, branch)}-copy", 52)  # pods add 6 characters


def config_hash(branch: DbBranch) -> str:
    """What the branch's contents depend on; not the password (kept for life)."""
    facts = branch.model_dump(exclude={"password"})
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def _labels(key: str, branch: DbBranch, component: str) -> dict[str, str]:
    """Object labels: the key (so sweeps find them) but pods get `pod_labels` instead, so
    they never count as the environment's preview pods."""
    return {**pod_labels(key, branch, component), naming.LABEL_KEY: key}


def pod_labels(key: str, branch: DbBranch, component: str) -> dict[str, str]:
    return {
        naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
        naming.LABEL_PART_OF: key,
        naming.LABEL_COMPONENT: component,
        LABEL_BRANCH: naming.label_value(branch.id),
    }


def _meta(
    env: EnvironmentSpec, service: ServiceSpec, branch: DbBranch, name: str, component: str
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": service.namespace,
        "labels": _labels(env.key, branch, component),
        "annotations": {
            naming.ANNOTATION_OWNER: env.owner,
            naming.ANNOTATION_EXPIRES_AT: env.expires_at or "never",
            ANNOTATION_BRANCH: branch.id,
            ANNOTATION_CONFIG: config_hash(branch),
        },
    }


def _placement(pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    """Where the target's pods may run, the branch's may too."""
    placed: dict[str, Any] = {}
    for field in ("nodeSelector", "tolerations"):
        if pod_spec.get(field):
            placed[field] = pod_spec[field]
    node_affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity")
    if node_affinity:
        placed["affinity"] = {"nodeAffinity": node_affinity}
    return placed


def _data_volume(server: str, branch: DbBranch) -> dict[str, Any]:
    """The server's data: its claim, or (storage: ephemeral) an emptyDir."""
    if branch.storage_size is None:
        return {"name": "data", "emptyDir": {}}
    return {"name": "data", "persistentVolumeClaim": {"claimName": server}}


def _claim(
    env: EnvironmentSpec, service: ServiceSpec, branch: DbBranch, server: str
) -> list[Manifest]:
    """The server's own claim (none with storage: ephemeral): the copied data outlives the
    server's pod (a restart, an eviction, a rollout) and goes with the environment."""
    if branch.storage_size is None:
        return []
    meta = _meta(env, service, branch, server, COMPONENT_SERVER)
    # Not awaited: with a WaitForFirstConsumer class it binds only once the server's pod
    # exists; the server's Deployment waits for it instead (and times out naming it).
    meta["annotations"]["pulumi.com/skipAwait"] = "true"
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": branch.storage_size}},
    }
    if branch.storage_class:
        spec["storageClassName"] = branch.storage_class
    return [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}]


def _secret_ref(name: str, key: str) -> dict[str, Any]:
    return {"valueFrom": {"secretKeyRef": {"name": name, "key": key}}}


def connection_source(
    branch: DbBranch,
    container: Mapping[str, Any],
    env_sources: Mapping[str, Sequence[str] | str],
    *,
    where: str,
) -> dict[str, dict[str, Any]]:
    """For each variable the branch reads, how the target's container gets it: its env
    entry (a value or a reference), or a key reference into the envFrom source defining it.
    A variable the container does not have is bad input."""
    explicit = {e["name"]: e for e in container.get("env") or [] if "name" in e}
    found: dict[str, dict[str, Any]] = {}
    for variable in branch.variables:
        if variable in explicit:
            entry = {k: v for k, v in explicit[variable].items() if k != "name"}
            found[variable] = entry
            continue
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if not variable.startswith(prefix):
                continue
            for kind, field, ref in (
                ("configmap", "configMapRef", "configMapKeyRef"),
                ("secret", "secretRef", "secretKeyRef"),
            ):
                if field not in source:
                    continue
                name = source[field].get("name", "")
                keys = env_sources.get(f"{kind}/{name}")
                if isinstance(keys, str) or keys is None:
                    continue
                if variable[len(prefix) :] in keys:
                    found.setdefault(
                        variable,
                        {"valueFrom": {ref: {"name": name, "key": variable[len(prefix) :]}}},
                    )
    missing = [v for v in branch.variables if v not in found]
    if missing:
        has = sorted(explicit) or ["no env entries"]
        raise BadInput(
            f"database branch {branch.id!r}: {where} has no variable "
            f"{', '.join(missing)} (env: {', '.join(has)}); fix connection in "
            "feature.db_branches"
        )
    return found


def _source_env(branch: DbBranch, source: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    if branch.url_variable:
        return [{"name": f"{SOURCE_PREFIX}_URL", **source[branch.url_variable]}]
    env = [
        {"name": f"{SOURCE_PREFIX}_{part.upper()}", **source[variable]}
        for part, variable in branch.params.items()
    ]
    if branch.database:
        env = [e for e in env if e["name"] != f"{SOURCE_PREFIX}_DATABASE"]
        env.append({"name": f"{SOURCE_PREFIX}_DATABASE", "value": branch.database})
    return env


def source_value_names() -> tuple[str, ...]:
    """The copy Job's variables whose literal values (copied from the target) are secret."""
    return tuple(f"{SOURCE_PREFIX}_{p}" for p in ("URL", "HOST", "PORT", "USER", "PASSWORD"))


def copy_args(branch: DbBranch, *, wait: int, url_secret: str | None) -> list[str]:
    """`preview-env db copy ...` as the Job runs it: the same command as on a laptop."""
    tables = {t.name: t.filter for t in branch.tables}
    return copy_plan.job_args(branch.engine, branch.mode, tables, wait, url_secret)


def branch_manifests(
    env: EnvironmentSpec,
    service: ServiceSpec,
    branch: DbBranch,
    pod_spec: Mapping[str, Any],
    source: Mapping[str, dict[str, Any]],
) -> list[Manifest]:
    """Secret, server Deployment and Service, RBAC (URL connections) and the copy Job."""
    key = env.key
    server = server_name(key, branch)
    job = job_name(key, branch)
    placement = _placement(pod_spec)
    password = _secret_ref(server, "password")
    if branch.engine == "pg":
        server_env = [
            {"name": "POSTGRES_USER", "value": branch.user},
            {"name": "POSTGRES_PASSWORD", **password},
        ]
    else:
        server_env = [
            {"name": "MYSQL_ROOT_PASSWORD", **password},
            {"name": "MARIADB_ROOT_PASSWORD", **password},
        ]
    server_labels = pod_labels(key, branch, COMPONENT_SERVER)
    manifests: list[Manifest] = [
        *_claim(env, service, branch, server),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(env, service, branch, server, COMPONENT_SERVER),
            "type": "Opaque",
            "stringData": {"user": branch.user, "password": branch.password, "url": ""},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(env, service, branch, server, COMPONENT_SERVER),
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": dict(server_labels)},
                "template": {
                    "metadata": {
                        "labels": dict(server_labels),
                        "annotations": {ANNOTATION_CONFIG: config_hash(branch)},
                    },
                    "spec": {
                        **placement,
                        "automountServiceAccountToken": False,
                        "containers": [
                            {
                                "name": branch.engine,
                                "image": branch.image,
                                "env": server_env,
                                "ports": [{"name": branch.engine, "containerPort": branch.port}],
                                "readinessProbe": {
                                    "tcpSocket": {"port": branch.port},
                                    "periodSeconds": 1,
                                },
                                "volumeMounts": [
                                    # a subdirectory: a fresh filesystem's lost+found
                                    # makes initdb and mysqld refuse the mount's root
                                    {
                                        "name": "data",
                                        "mountPath": _DATA_DIRS[branch.engine],
                                        "subPath": "data",
                                    }
                                ],
                            }
                        ],
                        "volumes": [_data_volume(server, branch)],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                **_meta(env, service, branch, server, COMPONENT_SERVER),
                "annotations": {
                    **_meta(env, service, branch, server, COMPONENT_SERVER)["annotations"],
                    "pulumi.com/skipAwait": "true",
                },
            },
            "spec": {
                "type": "ClusterIP",
                "selector": dict(server_labels),
                "ports": [{"name": branch.engine, "port": branch.port, "targetPort": branch.port}],
            },
        },
    ]
    url_secret = server if branch.url_variable else None
    if url_secret:
        meta = _meta(env, service, branch, job, COMPONENT_COPY)
        manifests += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": meta,
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["secrets"],
                        "resourceNames": [server],
                        "verbs": ["get", "patch"],
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": job},
                "subjects": [
                    {"kind": "ServiceAccount", "name": job, "namespace": service.namespace}
                ],
            },
        ]
    branch_env = [
        {"name": f"{BRANCH_PREFIX}_HOST", "value": cluster_ip(server)},
        {"name": f"{BRANCH_PREFIX}_PORT", "value": str(branch.port)},
        {"name": f"{BRANCH_PREFIX}_USER", "value": branch.user},
        {"name": f"{BRANCH_PREFIX}_PASSWORD", **password},
        {"name": f"{BRANCH_PREFIX}_DATABASE", "value": branch.database or ""},
        {"name": "PREVIEW_ENV_TERMINATION_LOG", "value": "/dev/termination-log"},
    ]
    copy_labels = pod_labels(key, branch, COMPONENT_COPY)
    manifests.append(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _meta(env, service, branch, job, COMPONENT_COPY),
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": service.creation_timeout_secs,
                "template": {
                    "metadata": {
                        "labels": copy_labels,
                        "annotations": {ANNOTATION_CONFIG: config_hash(branch)},
                    },
                    "spec": {
                        **placement,
                        "restartPolicy": "Never",
                        **(
                            {"serviceAccountName": job}
                            if url_secret
                            else {"automountServiceAccountToken": False}
                        ),
                        "containers": [
                            {
                                "name": "copy",
                                "image": branch.copy_image,
                                # the image's entrypoint is `preview-env`
                                "args": copy_args(
                                    branch,
                                    wait=service.creation_timeout_secs,
                                    url_secret=url_secret,
                                ),
                                "env": _source_env(branch, source) + branch_env,
                                "terminationMessagePolicy": "FallbackToLogsOnError",
                                # pg_dump's schema archive, whatever the root filesystem
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            }
                        ],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        }
    )
    return manifests


def rewrite_connection(
    variables: list[dict[str, Any]], key: str, branches: Sequence[DbBranch]
) -> list[dict[str, Any]]:
    """The preview container's env with each branch's connection variables pointing at the
    branch: the URL from the branch Secret (rewritten in-cluster), or the params replaced.
    Variables that came from envFrom get an explicit entry (it wins over envFrom)."""
    result = [dict(v) for v in variables]
    for branch in branches:
        server = server_name(key, branch)
        replacements: dict[str, dict[str, Any]] = {}
        if branch.url_variable:
            replacements[branch.url_variable] = _secret_ref(server, "url")
        else:
            values: dict[str, dict[str, Any]] = {
                "host": {"value": cluster_ip(server)},
                "port": {"value": str(branch.port)},
                "user": {"value": branch.user},
                "password": _secret_ref(server, "password"),
            }
            if branch.database:
                values["database"] = {"value": branch.database}
            replacements = {
                variable: values[part] for part, variable in branch.params.items() if part in values
            }
        for variable, entry in replacements.items():
            new = {"name": variable, **entry}
            index = next((i for i, v in enumerate(result) if v.get("name") == variable), None)
            if index is None:
                result.append(new)
            else:
                result[index] = new
    return result
