"""Target workload JSON + ServiceSpec -> preview manifests. Pure: returns new dicts.

The preview pod is the target's pod template with the image replaced in one container;
it loses the target's labels (except those the user keeps) so the target's Services never
select it, and gets preview Services of its own with the same ports. Whatever would share
staging's state or identity, or keep the preview from being scheduled where the target is,
is rewritten (see `preview_pod`; each rewrite is reported as a note):

- claim templates and persistentVolumeClaim volumes become per-preview storage, and every
  other volume that could hold staging's data (hostPath, nfs, csi, ...: all but the
  pod-local types in POD_LOCAL_VOLUMES) an emptyDir, unless feature.preview.shared_volumes
  names it;
- hostNetwork and hostPort go;
- pod (anti-)affinity and topology spread terms that select the target's pods select the
  preview's own pods instead;
- per-pod identity (hostname, subdomain, nodeName) and runtime annotations go;
- env rules apply to envFrom too (expanded into references), overrides replace in place.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from preview_stack import branches, naming, queue_prep, routing
from preview_stack.errors import BadInput, NotFound
from preview_stack.spec import EnvironmentSpec, QueueUse, ServiceSpec

Manifest = dict[str, Any]
SA_TOKEN_VOLUME_PREFIX = "kube-api-access-"
# Set by the API server or the kubelet on a live Pod; meaningless in a template.
_POD_RUNTIME_FIELDS = ("nodeName", "priority", "ephemeralContainers", "overhead")
# Per-pod identity: a preview with the target's hostname and subdomain would answer for the
# target's pod in its headless Service's DNS.
_POD_IDENTITY_FIELDS = ("hostname", "subdomain")
# Annotations the API server, controllers, kubelet or CNI put on a live Pod.
_RUNTIME_ANNOTATION = re.compile(
    r"^(?:[^/]*\.)?(?:kubernetes\.io|k8s\.io|cni\.cncf\.io|projectcalico\.org|cilium\.io|"
    r"openshift\.io|kwok\.x-k8s\.io)/"
)
_TEMPLATE_RUNTIME_ANNOTATION = ("kubectl.kubernetes.io/", "deployment.kubernetes.io/")
FILES_VOLUME = "preview-env-files"
SECRET_FILES_VOLUME = "preview-env-secret-files"
FILES_OWNER_ANNOTATION = f"{naming.DOMAIN}/owned-by-configmap"
# Volume types that cannot hold staging's data, kept as the target has them: storage made
# for the pod and gone with it (emptyDir; ephemeral: a claim the pod creates and owns, from
# its template, never an existing one), read-only views of API objects (configMap, secret,
# downwardAPI, projected) and images. Every other type (hostPath, nfs, csi, iscsi, cephfs,
# rbd, cloud disks, flexVolume, gitRepo and any type added later) becomes an emptyDir;
# persistentVolumeClaim has rules of its own (`_replace_claims`).
POD_LOCAL_VOLUMES = frozenset(
    {"emptyDir", "configMap", "secret", "downwardAPI", "projected", "ephemeral", "image"}
)


@dataclass(frozen=True)
class TargetWorkload:
    """What we read from the cluster for one target: its pod template and labels."""

    kind: str
    name: str
    namespace: str
    pod_labels: Mapping[str, str]
    pod_spec: Mapping[str, Any]
    pod_annotations: Mapping[str, str]
    # StatefulSet volumeClaimTemplates.
    claim_templates: Sequence[Mapping[str, Any]] = ()
    # The spec of each claim a persistentVolumeClaim volume names (read by the cluster
    # module; absent when it could not be read).
    claims: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Keys of each ConfigMap/Secret an envFrom names ("configmap/NAME", "secret/NAME"), or
    # why they could not be read. Only names: Secret values never pass through here.
    env_sources: Mapping[str, Sequence[str] | str] = field(default_factory=dict)
    # A CronJob's spec (its jobTemplate holds the pod template); None for other kinds.
    cronjob_spec: Mapping[str, Any] | None = None


def env_source_refs(pod_spec: Mapping[str, Any]) -> list[str]:
    """ "configmap/NAME" and "secret/NAME" for each envFrom of every container."""
    refs: list[str] = []
    for group in ("initContainers", "containers"):
        for container in pod_spec.get(group, []) or []:
            for source in container.get("envFrom", []) or []:
                ref = _env_from_ref(source)
                if ref and ref not in refs:
                    refs.append(ref)
    return refs


def _env_from_ref(source: Mapping[str, Any]) -> str | None:
    if source.get("configMapRef"):
        return f"configmap/{source['configMapRef'].get('name')}"
    if source.get("secretRef"):
        return f"secret/{source['secretRef'].get('name')}"
    return None


def claim_names(pod_spec: Mapping[str, Any]) -> list[str]:
    """The claims the pod's persistentVolumeClaim volumes name."""
    return [
        str(v["persistentVolumeClaim"]["claimName"])
        for v in pod_spec.get("volumes", []) or []
        if v.get("persistentVolumeClaim")
    ]


def pod_template_of(obj: Mapping[str, Any]) -> TargetWorkload:
    """The pod template of a Deployment, StatefulSet, Rollout, CronJob or bare Pod object."""
    kind = str(obj.get("kind", ""))
    meta = obj.get("metadata", {})
    cronjob_spec = None
    if kind == "Pod":
        template_meta, spec = meta, obj.get("spec", {})
    elif kind == "CronJob":
        cronjob_spec = obj.get("spec", {})
        template = cronjob_spec.get("jobTemplate", {}).get("spec", {}).get("template") or {}
        template_meta, spec = template.get("metadata", {}), template.get("spec", {})
    else:
        template = obj.get("spec", {}).get("template")
        if not template:
            raise BadInput(
                f"{kind.lower()}/{meta.get('name')} has no pod template "
                "(an Argo Rollout with workloadRef is read through its Deployment)"
            )
        template_meta, spec = template.get("metadata", {}), template.get("spec", {})
    return TargetWorkload(
        kind=kind.lower(),
        name=str(meta.get("name")),
        namespace=str(meta.get("namespace", "default")),
        pod_labels=dict(template_meta.get("labels") or {}),
        pod_spec=spec,
        pod_annotations=dict(template_meta.get("annotations") or {}),
        claim_templates=list(obj.get("spec", {}).get("volumeClaimTemplates") or [])
        if kind == "StatefulSet"
        else [],
        cronjob_spec=cronjob_spec,
    )


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service selector matches when every pair is in `labels` (empty selects nothing)."""
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def kept_labels(labels: Mapping[str, str], spec: ServiceSpec) -> dict[str, str]:
    includes = [naming.glob_to_regex(g) for g in spec.labels.include]
    excludes = [naming.glob_to_regex(g) for g in spec.labels.exclude]
    return {
        k: v
        for k, v in labels.items()
        if any(r.match(k) for r in includes) and not any(r.match(k) for r in excludes)
    }


def preview_labels(key: str, spec: ServiceSpec) -> dict[str, str]:
    """The labels that select exactly this environment's pods for this target."""
    return {naming.LABEL_KEY: key, naming.LABEL_TARGET: spec.target_label}


def object_labels(key: str, spec: ServiceSpec, component: str) -> dict[str, str]:
    return {
        **preview_labels(key, spec),
        naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
        naming.LABEL_PART_OF: key,
        naming.LABEL_COMPONENT: component,
    }


def object_annotations(env: EnvironmentSpec, spec: ServiceSpec) -> dict[str, str]:
    annotations = {
        naming.ANNOTATION_OWNER: env.owner,
        naming.ANNOTATION_CREATED_AT: env.created_at,
        naming.ANNOTATION_EXPIRES_AT: env.expires_at or "never",
        naming.ANNOTATION_TARGET: spec.target_id,
        naming.ANNOTATION_IMAGE: spec.image,
    }
    return annotations


def _expand_env_from(
    container: Mapping[str, Any], sources: Mapping[str, Sequence[str] | str]
) -> list[dict[str, Any]]:
    """The container's envFrom as explicit references (ConfigMap/Secret key refs: values
    are never read), in Kubernetes' precedence: a later source wins, `env` wins over all."""
    expanded: dict[str, dict[str, Any]] = {}
    for source in container.get("envFrom", []) or []:
        ref = _env_from_ref(source)
        if ref is None:
            continue
        kind, name = ref.split("/", 1)
        ref_field = "configMapRef" if kind == "configmap" else "secretRef"
        optional = bool(source[ref_field].get("optional"))
        keys = sources.get(ref, "it was not read")
        if isinstance(keys, str):
            if optional and keys == "not found":
                continue  # an optional source that does not exist adds nothing
            raise BadInput(
                f"feature.env include/exclude cannot be applied to container "
                f"{container.get('name')!r}: the keys of envFrom {kind} {name} cannot be read "
                f"({keys}); grant read access to it, or drop feature.env.include/exclude"
            )
        key_ref = "configMapKeyRef" if kind == "configmap" else "secretKeyRef"
        for key in keys:
            var = f"{source.get('prefix', '')}{key}"
            reference: dict[str, Any] = {"name": name, "key": key}
            if optional:
                reference["optional"] = True
            expanded.pop(var, None)
            expanded[var] = {"name": var, "valueFrom": {key_ref: reference}}
    defined = {str(v.get("name")) for v in container.get("env", []) or []}
    return [v for n, v in expanded.items() if n not in defined]


def container_env(
    container: Mapping[str, Any],
    spec: ServiceSpec,
    key: str,
    sources: Mapping[str, Sequence[str] | str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, envFrom) of the chosen container under `spec.env`.

    include/exclude apply to every variable, envFrom's too: when they are set, envFrom is
    expanded into explicit references first. An override replaces a variable where it is
    defined (so `$(VAR)` references after it still expand); new ones are appended, then
    PREVIEW_ENV_KEY.
    """
    rules = spec.env
    includes = [naming.glob_to_regex(g) for g in rules.include or []]
    excludes = [naming.glob_to_regex(g) for g in rules.exclude or []]
    env_from = [copy.deepcopy(dict(s)) for s in container.get("envFrom", []) or []]
    variables = [copy.deepcopy(dict(v)) for v in container.get("env", []) or []]
    if (includes or excludes) and env_from:
        variables = _expand_env_from(container, sources) + variables
        env_from = []
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for var in variables:
        name = str(var.get("name", ""))
        if includes and not any(r.match(name) for r in includes):
            continue
        if any(r.match(name) for r in excludes) or name == naming.ENV_KEY_VAR:
            continue
        if name in rules.override:
            if name in seen:
                continue
            var = {"name": name, "value": rules.override[name]}
        seen.add(name)
        result.append(var)
    # An override of a variable envFrom defines goes first (where envFrom's are: before
    # every `env` entry, so `$(VAR)` there sees the override); new ones go last.
    from_env_from = set()
    for source in env_from:
        ref = _env_from_ref(source)
        keys = sources.get(ref or "", "")
        if not isinstance(keys, str):
            from_env_from |= {f"{source.get('prefix', '')}{k}" for k in keys}
    missing = [n for n in rules.override if n not in seen]
    first = [{"name": n, "value": rules.override[n]} for n in missing if n in from_env_from]
    last = [{"name": n, "value": rules.override[n]} for n in missing if n not in from_env_from]
    result = first + result + last
    result.append({"name": naming.ENV_KEY_VAR, "value": key})
    return result, env_from


def _filter_env(env: Sequence[Mapping[str, Any]], spec: ServiceSpec, key: str) -> list[Any]:
    return container_env({"env": env}, spec, key, {})[0]


def choose_container(pod_spec: Mapping[str, Any], spec: ServiceSpec) -> str:
    """The container whose image is replaced: `/container/NAME` (a container or an init
    container), else the first container."""
    names = [str(c.get("name")) for c in pod_spec.get("containers", [])]
    if not names:
        raise BadInput("the target's pod template has no containers")
    wanted = spec.target.container if spec.target else None
    if wanted is None:
        return names[0]
    init_names = [str(c.get("name")) for c in pod_spec.get("initContainers", []) or []]
    if wanted not in names + init_names:
        listing = ", ".join(names) + (
            f"; init containers: {', '.join(init_names)}" if init_names else ""
        )
        raise NotFound(
            f"container {wanted!r} not found in {spec.display_target} (containers: {listing})"
        )
    return wanted


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector against `labels` (None selects nothing, {} everything)."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        k, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(k) not in values:
            return False
        if op == "NotIn" and k in labels and labels[k] in values:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def _selects_every_pod(selector: Mapping[str, Any]) -> bool:
    return not selector.get("matchLabels") and not selector.get("matchExpressions")


@dataclass
class _Pod:
    """A preview pod spec being derived, and what was changed (for the start output)."""

    spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    claims: list[Manifest] = field(default_factory=list)  # per-preview PVCs (persistent)
    # Volumes kept shared with the target (feature.preview.shared_volumes): said loudly.
    warnings: list[str] = field(default_factory=list)


def _rewrite_scheduling(pod: _Pod, target: TargetWorkload, own: Mapping[str, str]) -> None:
    """Pod (anti-)affinity and topology spread terms that select the target's pods select the
    preview's own pods instead (the preview no longer carries the target's labels; against
    the target's pods, required anti-affinity could leave no node); a term selecting every
    pod is dropped (narrowed to the preview's pods it would mean something else)."""
    affinity = pod.spec.get("affinity") or {}

    def rewrite(term: dict[str, Any], where: str) -> dict[str, Any] | None:
        selector = term.get("labelSelector")
        namespaces = term.get("namespaces") or []
        if not selector_matches(selector, target.pod_labels):
            return term
        if namespaces and target.namespace not in namespaces:
            return term
        assert selector is not None
        if _selects_every_pod(selector):
            pod.notes.append(f"{where}: a term selecting every pod dropped")
            return None
        pod.notes.append(f"{where}: a term selecting the target's pods now selects the preview's")
        kept = {k: v for k, v in term.items() if k not in ("namespaces", "namespaceSelector")}
        return {**kept, "labelSelector": {"matchLabels": dict(own)}}

    for kind in ("podAffinity", "podAntiAffinity"):
        block = affinity.get(kind)
        if not block:
            continue
        required = []
        for term in block.get("requiredDuringSchedulingIgnoredDuringExecution") or []:
            new = rewrite(term, f"{kind} (required)")
            if new is not None:
                required.append(new)
        preferred = []
        for weighted in block.get("preferredDuringSchedulingIgnoredDuringExecution") or []:
            new = rewrite(weighted.get("podAffinityTerm", {}), f"{kind} (preferred)")
            if new is not None:
                preferred.append({**weighted, "podAffinityTerm": new})
        updated = {
            **({"requiredDuringSchedulingIgnoredDuringExecution": required} if required else {}),
            **({"preferredDuringSchedulingIgnoredDuringExecution": preferred} if preferred else {}),
        }
        if updated:
            affinity[kind] = updated
        else:
            del affinity[kind]
    if "affinity" in pod.spec:
        pod.spec["affinity"] = affinity
    constraints = []
    for constraint in pod.spec.get("topologySpreadConstraints") or []:
        new = rewrite(constraint, "topologySpreadConstraints")
        if new is not None:
            constraints.append(new)
    if "topologySpreadConstraints" in pod.spec:
        pod.spec["topologySpreadConstraints"] = constraints


def _drop_host_networking(pod: _Pod) -> None:
    """hostNetwork and hostPort would collide with the target's pods on every node it runs
    on (an unschedulable preview, or a failed port bind); the preview's Service reaches it."""
    if pod.spec.pop("hostNetwork", None):
        pod.notes.append("hostNetwork dropped: the preview gets its own pod network")
    for group in ("initContainers", "containers"):
        for container in pod.spec.get(group, []) or []:
            for port in container.get("ports", []) or []:
                if "hostPort" in port:
                    host = port.pop("hostPort")
                    port.pop("hostIP", None)
                    pod.notes.append(
                        f"container {container.get('name')}: hostPort {host} dropped "
                        f"(containerPort {port.get('containerPort')} stays)"
                    )


def _storage_request(spec: Mapping[str, Any]) -> str | None:
    value = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    return str(value) if value else None


def _replace_claims(
    pod: _Pod,
    target: TargetWorkload,
    spec: ServiceSpec,
    env: EnvironmentSpec,
    workload: str,
) -> None:
    """Claim templates and claims become the preview's own storage: an emptyDir sized from
    the claim's request, or (feature.preview.volumes: persistent) a claim of its own with
    the same class, size and access modes, deleted with the environment."""
    volumes: list[dict[str, Any]] = list(pod.spec.get("volumes") or [])
    wanted: list[tuple[str, str, Mapping[str, Any] | None]] = []  # (volume, origin, claim spec)
    for template in target.claim_templates:
        name = str(template.get("metadata", {}).get("name"))
        if any(v.get("name") == name for v in volumes):
            continue
        wanted.append((name, f"claim template {name}", template.get("spec") or {}))
        volumes.append({"name": name})
    for volume in volumes:
        claim = volume.get("persistentVolumeClaim")
        if claim and volume.get("name") not in spec.shared_volumes:
            claim_name = str(claim.get("claimName"))
            wanted.append(
                (str(volume["name"]), f"claim {claim_name}", target.claims.get(claim_name))
            )
    for name, origin, claim_spec in wanted:
        volume = next(v for v in volumes if v.get("name") == name)
        volume.pop("persistentVolumeClaim", None)
        size = _storage_request(claim_spec or {})
        if spec.volumes == "persistent":
            if claim_spec is None:
                raise BadInput(
                    f"feature.preview.volumes: persistent needs the class and size of "
                    f"{origin} of {spec.display_target}, which cannot be read; grant read "
                    "access to persistentvolumeclaims or use volumes: ephemeral"
                )
            claim_name = naming.fit(f"{name}-{workload}-{env.key}")
            claim_body: dict[str, Any] = {
                "accessModes": list(claim_spec.get("accessModes") or ["ReadWriteOnce"]),
                "resources": {"requests": {"storage": size or "1Gi"}},
            }
            for copied in ("storageClassName", "volumeMode"):
                if claim_spec.get(copied):
                    claim_body[copied] = claim_spec[copied]
            pod.claims.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {
                        "name": claim_name,
                        "namespace": spec.namespace,
                        "labels": object_labels(env.key, spec, "volume"),
                        "annotations": {
                            **object_annotations(env, spec),
                            # Bound when a provisioner (or a matching volume) serves it;
                            # the workload's own await waits for the pod that needs it.
                            "pulumi.com/skipAwait": "true",
                        },
                    },
                    "spec": claim_body,
                }
            )
            volume["persistentVolumeClaim"] = {"claimName": claim_name}
            where = claim_body.get("storageClassName", "the default class")
            pod.notes.append(
                f"volume {name}: {origin} replaced by the preview's own claim {claim_name} "
                f"({where}, {claim_body['resources']['requests']['storage']})"
            )
        else:
            volume["emptyDir"] = {"sizeLimit": size} if size else {}
            sized = f"sizeLimit {size}" if size else "size unknown: the claim was not read"
            pod.notes.append(f"volume {name}: {origin} replaced by an emptyDir ({sized})")
    if volumes:
        pod.spec["volumes"] = volumes


def _volume_type(volume: Mapping[str, Any]) -> str:
    return next((k for k in volume if k != "name"), "emptyDir")  # none given: an emptyDir


def _describe_volume(volume: Mapping[str, Any]) -> str:
    """`hostPath /var/lib/x`, `nfs server:/path`, `csi driver`, `claim name`, or the type."""
    kind = _volume_type(volume)
    source = volume.get(kind)
    source = source if isinstance(source, Mapping) else {}
    if kind == "hostPath":
        return f"hostPath {source.get('path')}"
    if kind == "nfs":
        return f"nfs {source.get('server')}:{source.get('path')}"
    if kind in ("csi", "flexVolume"):
        return f"{kind} {source.get('driver')}"
    if kind == "persistentVolumeClaim":
        return f"claim {source.get('claimName')}"
    return kind


def _check_shared_volumes(target: TargetWorkload, spec: ServiceSpec) -> None:
    """feature.preview.shared_volumes must name volumes the target's pods mount."""
    names = [str(v.get("name")) for v in target.pod_spec.get("volumes") or []]
    templates = [str(t.get("metadata", {}).get("name")) for t in target.claim_templates]
    for name in spec.shared_volumes:
        if name in templates and name not in names:
            raise BadInput(
                f"feature.preview.shared_volumes: {name!r} is a claim template: each pod of "
                f"{spec.display_target} has its own claim, none to share; remove it"
            )
        if name not in names:
            listing = ", ".join(names) or "none"
            raise BadInput(
                f"feature.preview.shared_volumes: {spec.display_target} has no volume "
                f"{name!r} (volumes: {listing}); name one of its volumes"
            )


def _replace_shared_storage(pod: _Pod, spec: ServiceSpec) -> None:
    """Every volume that could hold staging's data (anything but POD_LOCAL_VOLUMES and the
    claims `_replace_claims` rewrites) becomes an emptyDir, so the preview never writes
    staging's files; one named in feature.preview.shared_volumes stays, with a warning."""
    for volume in pod.spec.get("volumes") or []:
        name = str(volume.get("name"))
        kind = _volume_type(volume)
        if kind in POD_LOCAL_VOLUMES:
            continue
        described = _describe_volume(volume)
        if name in spec.shared_volumes:
            pod.warnings.append(
                f"volume {name} ({described}) is shared with {spec.display_target} "
                "(feature.preview.shared_volumes): the preview can read and write staging's "
                "data there"
            )
            pod.notes.append(
                f"volume {name}: shared with the target ({described}; "
                "feature.preview.shared_volumes)"
            )
            continue
        if kind == "persistentVolumeClaim":
            continue  # `_replace_claims`
        volume.clear()
        volume.update({"name": name, "emptyDir": {}})
        persistent = (
            "; volumes: persistent makes claims only of the target's claims"
            if spec.volumes == "persistent"
            else ""
        )
        pod.notes.append(
            f"volume {name}: {described} replaced by an emptyDir (it would share staging's "
            f"storage; feature.preview.shared_volumes keeps it{persistent})"
        )


def _mount_files(pod: _Pod, spec: ServiceSpec, env: EnvironmentSpec, workload: str) -> None:
    """feature.preview.config_mounts/secret_mounts: one file per subPath in the chosen
    container, from a ConfigMap or Secret of the environment (see `file_objects`)."""
    if not spec.files:
        return
    chosen = choose_container(pod.spec, spec)
    container = next(
        c
        for group in ("containers", "initContainers")
        for c in pod.spec.get(group, []) or []
        if c.get("name") == chosen
    )
    mounts = container.setdefault("volumeMounts", [])
    for secret in (False, True):
        files = [f for f in spec.files if f.secret == secret]
        if not files:
            continue
        volume = SECRET_FILES_VOLUME if secret else FILES_VOLUME
        source = (
            {"secret": {"secretName": files_object_name(workload, env.key, secret=True)}}
            if secret
            else {"configMap": {"name": files_object_name(workload, env.key, secret=False)}}
        )
        pod.spec.setdefault("volumes", []).append({"name": volume, **source})
        for index, file in enumerate(files):
            replaced = [m for m in mounts if m.get("mountPath") == file.path]
            for mount in replaced:
                mounts.remove(mount)
                pod.notes.append(f"{file.path}: the target's mount there is replaced by the file")
            mounts.append(
                {
                    "name": volume,
                    "mountPath": file.path,
                    "subPath": file_key(index, file.path),
                    "readOnly": True,
                }
            )


def file_key(index: int, path: str) -> str:
    """The ConfigMap/Secret key of a mounted file: unique, valid, readable."""
    base = re.sub(r"[^-._a-zA-Z0-9]+", "-", path.rsplit("/", 1)[-1]).strip("-.") or "file"
    return f"f{index}-{base}"[:253]


def files_object_name(workload: str, key: str, *, secret: bool) -> str:
    return naming.fit(f"{workload}-{key}-{'secret-files' if secret else 'files'}")


def file_objects(env: EnvironmentSpec, spec: ServiceSpec, workload: str) -> list[Manifest]:
    """The ConfigMap (config_mounts) and Secret (secret_mounts) holding the files. The
    ConfigMap is there whenever the Secret is: it owns the Secret (see program.py)."""
    manifests: list[Manifest] = []
    for secret in (False, True):
        files = [f for f in spec.files if f.secret == secret]
        if not spec.files or (secret and not files):
            continue
        meta: dict[str, Any] = {
            "name": files_object_name(workload, env.key, secret=secret),
            "namespace": spec.namespace,
            "labels": object_labels(env.key, spec, "files"),
            "annotations": object_annotations(env, spec),
        }
        if secret:  # the ConfigMap that owns it (program.py): deleted with it
            meta["annotations"][FILES_OWNER_ANNOTATION] = files_object_name(
                workload, env.key, secret=False
            )
        if secret:
            manifests.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": meta,
                    "type": "Opaque",
                    "data": {file_key(i, f.path): f.data for i, f in enumerate(files)},
                }
            )
            continue
        text = {
            file_key(i, f.path): base64.b64decode(f.data).decode()
            for i, f in enumerate(files)
            if f.text
        }
        binary = {file_key(i, f.path): f.data for i, f in enumerate(files) if not f.text}
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": meta,
                "data": text,
                **({"binaryData": binary} if binary else {}),
            }
        )
    return manifests


def preview_pod(
    target: TargetWorkload,
    spec: ServiceSpec,
    env: EnvironmentSpec,
    *,
    workload: str | None = None,
) -> _Pod:
    """The preview's pod spec: the target's, with the image replaced and every rule above."""
    key = env.key
    workload = workload or target.name
    pod = _Pod(copy.deepcopy(dict(target.pod_spec)))
    chosen = choose_container(pod.spec, spec)
    for name in _POD_RUNTIME_FIELDS:
        pod.spec.pop(name, None)
    for name in _POD_IDENTITY_FIELDS:
        if pod.spec.pop(name, None):
            pod.notes.append(f"{name} dropped: the preview is not the target's pod")
    if target.cronjob_spec is None:
        pod.spec["restartPolicy"] = "Always"
    token_volumes = {
        v["name"]
        for v in pod.spec.get("volumes", [])
        if v["name"].startswith(SA_TOKEN_VOLUME_PREFIX)
    }
    if token_volumes:
        pod.spec["volumes"] = [v for v in pod.spec["volumes"] if v["name"] not in token_volumes]
    for group in ("initContainers", "containers"):
        for container in pod.spec.get(group, []):
            if token_volumes and container.get("volumeMounts"):
                container["volumeMounts"] = [
                    m for m in container["volumeMounts"] if m["name"] not in token_volumes
                ]
            if container["name"] == chosen:
                container["image"] = spec.image
                variables, env_from = container_env(container, spec, key, target.env_sources)
                variables = branches.rewrite_connection(variables, key, spec.db_branches)
                container["env"] = _split_queue_env(variables, spec, key, pod.notes)
                if env_from:
                    container["envFrom"] = env_from
                else:
                    container.pop("envFrom", None)
    if spec.split_queues:  # the key's queues and bindings exist before the preview starts
        pod.spec["initContainers"] = [
            queue_prep.init_container(u.preparation, _key_split(u, key)) for u in spec.split_queues
        ] + list(pod.spec.get("initContainers") or [])
    _drop_host_networking(pod)
    _rewrite_scheduling(pod, target, preview_labels(key, spec))
    _check_shared_volumes(target, spec)
    _replace_claims(pod, target, spec, env, workload)
    _replace_shared_storage(pod, spec)
    _mount_files(pod, spec, env, workload)
    return pod


def _key_split(use: QueueUse, key: str) -> queue_prep.KeySplit:
    return queue_prep.key_split(use.preparation, key, use.filter, use.mode)


def _split_queue_env(
    variables: list[dict[str, Any]], spec: ServiceSpec, key: str, notes: list[str]
) -> list[dict[str, Any]]:
    """Each split queue's variable pointing at the key's queue (the target keeps its own)."""
    for use in spec.split_queues:
        prep = use.preparation
        queue = queue_prep.key_queue(prep, key)
        entry = {"name": prep.env, "value": queue}
        names = [v.get("name") for v in variables]
        if prep.env in names:
            variables = [entry if v.get("name") == prep.env else v for v in variables]
        else:
            variables = [*variables, entry]
        notes.append(f"{prep.env} reads {queue}, the key's queue split from {prep.source}")
    return variables


def derivation_notes(env: EnvironmentSpec, spec: ServiceSpec, target: TargetWorkload) -> list[str]:
    """What was changed on the way from the target's pod to the preview's (the notes of
    `derive_target`)."""
    return preview_pod(target, spec, env).notes


def check_isolation(
    labels: Mapping[str, str], services: Sequence[Mapping[str, Any]], namespace: str
) -> None:
    for service in services:
        selector = service.get("spec", {}).get("selector")
        if selects(selector, labels):
            name = service.get("metadata", {}).get("name")
            raise BadInput(
                f"the kept labels would put the preview pods behind Service {namespace}/{name} "
                f"(selector {selector}); narrow feature.preview.labels.include or add "
                "the label to labels.exclude"
            )


def _template_annotations(target: TargetWorkload) -> dict[str, str]:
    if target.kind == "pod":  # a live Pod: what the cluster wrote on it goes
        return {k: v for k, v in target.pod_annotations.items() if not _RUNTIME_ANNOTATION.match(k)}
    return {
        k: v
        for k, v in target.pod_annotations.items()
        if not k.startswith(_TEMPLATE_RUNTIME_ANNOTATION)
    }


def _preview_service(
    env: EnvironmentSpec,
    spec: ServiceSpec,
    target_service: Mapping[str, Any],
    selector: Mapping[str, str],
) -> Manifest | None:
    """A Service like `target_service` selecting only the preview pods: headless when it is,
    else ClusterIP (no node ports or load balancers)."""
    name = str(target_service["metadata"]["name"])
    target_spec = target_service.get("spec", {})
    headless = target_spec.get("clusterIP") == "None"
    ports = _service_ports(target_service)
    if not ports and not headless:
        return None  # a selector Service without ports is not a valid ClusterIP Service
    service_spec: dict[str, Any] = {"type": "ClusterIP", "selector": dict(selector)}
    if ports:
        service_spec["ports"] = ports
    if headless:
        service_spec["clusterIP"] = "None"
        if target_spec.get("publishNotReadyAddresses"):
            service_spec["publishNotReadyAddresses"] = True
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": naming.service_name(name, env.key),
            "namespace": spec.namespace,
            "labels": object_labels(env.key, spec, "service"),
            "annotations": {
                **object_annotations(env, spec),
                f"{naming.DOMAIN}/previews-service": name,
                # The workload's await already waits for Ready pods; the Service await
                # would only poll its endpoints again (about 10 s).
                "pulumi.com/skipAwait": "true",
            },
        },
        "spec": service_spec,
    }


def _cronjob_manifests(
    env: EnvironmentSpec,
    spec: ServiceSpec,
    target: TargetWorkload,
    name: str,
    pod_template: Mapping[str, Any],
) -> list[Manifest]:
    """A CronJob target: a copy of the CronJob running the preview pod, on the target's
    schedule (or feature.preview.cronjob.schedule), and a Job made from it at start."""
    assert target.cronjob_spec is not None
    source = copy.deepcopy(dict(target.cronjob_spec))
    job_spec = dict(source.get("jobTemplate", {}).get("spec", {}))
    job_spec.pop("selector", None)
    job_spec.pop("manualSelector", None)
    job_spec["template"] = pod_template
    labels = object_labels(env.key, spec, "workload")
    annotations = object_annotations(env, spec)
    cron_spec = {
        k: v
        for k, v in source.items()
        if k in ("schedule", "timeZone", "concurrencyPolicy", "suspend", "startingDeadlineSeconds")
        or k.endswith("HistoryLimit")
    }
    if spec.cronjob.schedule:
        cron_spec["schedule"] = spec.cronjob.schedule
    cron_spec["jobTemplate"] = {"metadata": {"labels": dict(labels)}, "spec": job_spec}
    manifests: list[Manifest] = [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {
                "name": naming.fit(name, 52),  # Job names add 11 characters
                "namespace": spec.namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": cron_spec,
        }
    ]
    if spec.cronjob.trigger_on_start:
        started = copy.deepcopy(job_spec)
        started.pop("ttlSecondsAfterFinished", None)  # kept: a vanished Job would run again
        manifests.append(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "name": naming.fit(f"{name}-start", 52),
                    "namespace": spec.namespace,
                    "labels": labels,
                    "annotations": {**annotations, "cronjob.kubernetes.io/instantiate": "manual"},
                },
                "spec": started,
            }
        )
    return manifests


def pod_template_of_manifest(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod template of a derived workload manifest (Deployment, Job, CronJob)."""
    kind = manifest.get("kind")
    if kind in ("Deployment", "Job"):
        template: dict[str, Any] = manifest["spec"]["template"]
        return template
    if kind == "CronJob":
        cron_template: dict[str, Any] = manifest["spec"]["jobTemplate"]["spec"]["template"]
        return cron_template
    return None


@dataclass(frozen=True)
class TargetObjects:
    """One target's objects, and what its derivation changed from the target's pod (notes)
    or kept shared with it (warnings): for `start` to say, without deriving again."""

    manifests: list[Manifest]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def derive_service(
    env: EnvironmentSpec,
    spec: ServiceSpec,
    target: TargetWorkload | None,
    namespace_services: Sequence[Mapping[str, Any]],
) -> list[Manifest]:
    """The workload, its storage and files, and preview Services for one ServiceSpec."""
    return derive_target(env, spec, target, namespace_services).manifests


def derive_target(
    env: EnvironmentSpec,
    spec: ServiceSpec,
    target: TargetWorkload | None,
    namespace_services: Sequence[Mapping[str, Any]],
    platform_routes: Sequence[Mapping[str, Any]] = (),
) -> TargetObjects:
    """`derive_service`, with the notes and warnings of the preview pod's derivation;
    `platform_routes`: the cluster's Gateway routes that may send traffic to the target's
    Services, which the key's stack twins (routing.twin_routes)."""
    key = env.key
    selector = preview_labels(key, spec)
    extra: list[Manifest] = []
    notes: list[str] = []
    warnings: list[str] = []
    if target is None:
        if spec.db_branches:
            raise BadInput(
                f"{spec.display_target}: database branches need a target to copy the "
                "connection from"
            )
        base = naming.image_base_name(spec.image)
        ports = (spec.incoming.ports if spec.incoming else None) or []
        container: dict[str, Any] = {
            "name": base,
            "image": spec.image,
            "env": _filter_env([], spec, key),
            **({"ports": [{"containerPort": p} for p in ports]} if ports else {}),
        }
        pod = _Pod({"containers": [container]})
        _mount_files(pod, spec, env, base)
        pod_spec = pod.spec
        pod_labels = {**selector}
        workload = base
        preview_services: list[Mapping[str, Any]] = (
            [
                {
                    "metadata": {"name": base},
                    "spec": {
                        "ports": [{"name": f"port-{p}", "port": p, "targetPort": p} for p in ports]
                    },
                }
            ]
            if ports
            else []
        )
        template_annotations: dict[str, str] = {}
        target_service_objects: list[Mapping[str, Any]] = []  # no target Service to route
    else:
        workload = target.name
        derived = preview_pod(target, spec, env)
        pod_spec = derived.spec
        notes, warnings = derived.notes, derived.warnings
        extra = _branch_manifests(env, spec, target) + derived.claims
        extra += _split_manifests(env, spec)
        pod_labels = {**kept_labels(target.pod_labels, spec), **selector}
        check_isolation(pod_labels, namespace_services, spec.namespace)
        target_service_objects = [
            {**s, "metadata": {**s["metadata"], "namespace": spec.namespace}}
            for s in namespace_services
            if selects(s.get("spec", {}).get("selector"), target.pod_labels)
        ]
        preview_services = list(target_service_objects)
        template_annotations = _template_annotations(target)
    extra += file_objects(env, spec, workload)
    pod_labels.update({naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_PART_OF: key})
    annotations = object_annotations(env, spec)
    template = {
        "metadata": {
            "labels": pod_labels,
            **({"annotations": template_annotations} if template_annotations else {}),
        },
        "spec": pod_spec,
    }
    name = naming.workload_name(workload, key)
    manifests: list[Manifest]
    if target is not None and target.cronjob_spec is not None:
        manifests = _cronjob_manifests(env, spec, target, name, template)
    else:
        manifests = [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": name,
                    "namespace": spec.namespace,
                    "labels": object_labels(key, spec, "workload"),
                    "annotations": annotations,
                },
                "spec": {
                    "replicas": spec.replicas,
                    "selector": {"matchLabels": selector},
                    "template": template,
                },
            }
        ]
    services = [
        m
        for m in (_preview_service(env, spec, s, selector) for s in preview_services)
        if m is not None
    ]
    manifests += services
    manifests += extra
    manifests += _routes(env, spec, target, target_service_objects, services, platform_routes)
    return TargetObjects(manifests, notes, warnings)


def _branch_manifests(
    env: EnvironmentSpec, spec: ServiceSpec, target: TargetWorkload
) -> list[Manifest]:
    """The branches this service declares first (a shared id is built once); every branch
    it uses must find its connection variables in the target's container."""
    if not spec.db_branches:
        return []
    chosen = choose_container(target.pod_spec, spec)
    every = [*target.pod_spec.get("initContainers", []), *target.pod_spec.get("containers", [])]
    container = next(c for c in every if c["name"] == chosen)
    where = f"container {chosen!r} of {target.kind.lower()}/{target.name}"
    owners = {branch.id: owner for branch, owner in env.branches()}
    manifests: list[Manifest] = []
    for branch in spec.db_branches:
        source = branches.connection_source(branch, container, target.env_sources, where=where)
        if owners.get(branch.id) == spec:
            manifests += branches.branch_manifests(env, spec, branch, target.pod_spec, source)
    return manifests


def _split_manifests(env: EnvironmentSpec, spec: ServiceSpec) -> list[Manifest]:
    """One split ConfigMap per split queue: the keeper keeps the key's queue while it lives."""
    manifests = []
    for use in spec.split_queues:
        made = queue_prep.split_manifest(
            use.preparation,
            _key_split(use, env.key),
            object_labels(env.key, spec, queue_prep.COMPONENT_SPLIT),
        )
        made["metadata"]["annotations"] = object_annotations(env, spec)
        manifests.append(made)
    return manifests


def _container_ports(target: TargetWorkload | None, spec: ServiceSpec) -> dict[str, int]:
    if target is None:
        return {}
    chosen = choose_container(target.pod_spec, spec)
    ports: dict[str, int] = {}
    for container in target.pod_spec.get("containers", []):
        if container.get("name") == chosen:
            for port in container.get("ports", []) or []:
                if port.get("name"):
                    ports[port["name"]] = int(port["containerPort"])
    return ports


def _routes(
    env: EnvironmentSpec,
    spec: ServiceSpec,
    target: TargetWorkload | None,
    target_services: Sequence[Mapping[str, Any]],
    preview_services: Sequence[Manifest],
    platform_routes: Sequence[Mapping[str, Any]],
) -> list[Manifest]:
    """Key-scoped routes for this service (see preview_stack.routing): on the target's
    Services (GAMMA), twins of the Gateway routes to them, and the share link."""
    if not spec.routing:
        return []
    labels = object_labels(env.key, spec, "route")
    annotations = object_annotations(env, spec)
    ports = _container_ports(target, spec)
    routes = routing.service_routes(
        key=env.key,
        incoming=spec.incoming,
        target_services=target_services,
        container_ports=ports,
        labels=labels,
        annotations=annotations,
    )
    routes += routing.twin_routes(
        key=env.key,
        incoming=spec.incoming,
        platform_routes=platform_routes,
        target_services=target_services,
        container_ports=ports,
        labels=labels,
        annotations=annotations,
    )
    if spec.share is not None:
        if not preview_services:
            raise BadInput(
                f"a share link for {spec.display_target} needs a preview Service: the target "
                "has no Service (in targetless mode, set feature.network.incoming.ports)"
            )
        routes.append(
            routing.share_route(
                key=env.key,
                incoming=spec.incoming,
                gateway=spec.share.gateway,
                host=routing.share_host(env.key, spec.share.domain, spec.share.token),
                preview_service=preview_services[0],
                labels=labels,
                annotations=annotations,
            )
        )
    return routes


def _service_ports(service: Mapping[str, Any]) -> list[Any]:
    ports = []
    for port in service.get("spec", {}).get("ports", []):
        kept = {
            k: v
            for k, v in port.items()
            if k in ("name", "port", "targetPort", "protocol", "appProtocol")
        }
        ports.append(kept)
    return ports


def record_manifest(env: EnvironmentSpec) -> Manifest:
    """A ConfigMap describing the environment to people with kubectl: never read by
    preview-env (the backend is the authority) and free of values (overrides are named,
    not shown: they may be tokens)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.record_name(env.key),
            "namespace": env.record_namespace(),
            "labels": {
                naming.LABEL_KEY: env.key,
                naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                naming.LABEL_PART_OF: env.key,
                naming.LABEL_COMPONENT: "record",
            },
            "annotations": {
                naming.ANNOTATION_OWNER: env.owner,
                naming.ANNOTATION_CREATED_AT: env.created_at,
                naming.ANNOTATION_EXPIRES_AT: env.expires_at or "never",
            },
        },
        "data": {naming.RECORD_DATA_KEY: redacted(env).model_dump_json()},
    }


def redacted(env: EnvironmentSpec) -> EnvironmentSpec:
    """`env` with every override value and file payload replaced: what may be shown or
    stored in clear."""
    return env.model_copy(
        update={
            "services": [
                s.model_copy(
                    update={
                        "env": s.env.model_copy(
                            update={"override": dict.fromkeys(s.env.override, REDACTED)}
                        ),
                        # Payloads stay out of the record: secrets, and size.
                        "files": [f.model_copy(update={"data": REDACTED}) for f in s.files],
                        "db_branches": [
                            b.model_copy(update={"password": REDACTED}) for b in s.db_branches
                        ],
                    }
                )
                for s in env.services
            ]
        }
    )


REDACTED = "(secret)"
