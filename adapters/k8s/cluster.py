"""The cluster: kubeconfig, target reads, live objects, sweeps and logs.

Thin: it fetches objects as Kubernetes-native JSON dicts (client.py, no typed models) and
maps client errors to ours. Which objects are whose is the core's (preview_stack.naming's
selectors and owner labels).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import config as kconfig
from kubernetes.client.api_client import ApiClient
from kubernetes.client.configuration import Configuration
from kubernetes.config.config_exception import ConfigException

from adapters.k8s.client import RESOURCES, ApiException, KubeApi
from preview_stack import naming, queue_prep
from preview_stack.derive import TargetWorkload, claim_names, env_source_refs, pod_template_of
from preview_stack.errors import Busy, NotFound, PreviewError, Unreachable
from preview_stack.inventory import LiveObjects
from preview_stack.queue_prep import Preparation
from preview_stack.routing import GatewaySupport, gateways_of
from preview_stack.spec import ServiceSpec

ROUTE_KINDS = ("httproute", "grpcroute")
# Kinds whose name another stack could hold (what `foreign_holder` checks).
_HELD_KINDS = ("Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "CronJob", "Job",
               "Secret")  # fmt: skip


@dataclass(frozen=True)
class ClusterTarget:
    """Which cluster: a kubeconfig path (None = default rules) and a context."""

    kubeconfig: str | None = None
    context: str | None = None


@contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        if exc.status in (401, 403):
            raise Unreachable(
                f"the cluster refused {what} ({exc.status} {exc.reason}); check your "
                "kubeconfig user and its RBAC rights"
            ) from None
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise Unreachable(
            f"cannot reach the cluster for {what}: {type(exc).__name__}; check --kubeconfig "
            "and --context"
        ) from None


def api_message(exc: ApiException) -> str:
    """The API server's own message in an error response (a Status object), one line."""
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
    try:
        message = json.loads(body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    text = str(message or body or "no message").strip()
    return " ".join(text.split())[:500]


def _backend_namespaces(route: Mapping[str, Any]) -> set[str]:
    """The namespaces a route's backendRefs name explicitly."""
    return {
        str(ref["namespace"])
        for rule in (route.get("spec") or {}).get("rules") or []
        for ref in rule.get("backendRefs") or []
        if ref.get("namespace")
    }


def _in_cluster(target: ClusterTarget) -> bool:
    """In a pod (the reaper CronJob) with no kubeconfig given or found: the pod's identity."""
    if target.kubeconfig or os.environ.get("KUBECONFIG"):
        return False
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.path.exists(
        os.path.expanduser("~/.kube/config")
    )


def merge_patch_secret(namespace: str, name: str, string_data: Mapping[str, str]) -> None:
    """Merge-patch `string_data` into Secret `namespace/name` as this pod's service account
    (the default kubeconfig outside a pod): `db copy` in a branch's copy Job. Unreachable
    names the reason when the kubeconfig, the connection or the API refuses."""
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            kconfig.load_incluster_config()
        else:
            kconfig.load_kube_config()
        KubeApi(ApiClient()).merge_patch(
            RESOURCES["secret"].path(namespace, name), {"stringData": dict(string_data)}
        )
    except (ApiException, ConfigException, OSError, urllib3.exceptions.HTTPError) as exc:
        reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise Unreachable(str(reason)) from None


@dataclass(frozen=True)
class PodLogs:
    """One preview container's log, read through the API server (`pods/log`)."""

    api: KubeApi
    pod: str
    namespace: str
    container: str
    tail: int | None = None
    since_seconds: int | None = None

    def lines(self, *, follow: bool = False) -> Iterator[str]:
        """Its lines as they are read: all of them at once, or as they come with `follow`."""
        chunks = self.api.stream(
            RESOURCES["pod"].path(self.namespace, self.pod) + "/log",
            container=self.container,
            follow="true" if follow else None,
            tailLines=self.tail,
            sinceSeconds=self.since_seconds,
        )
        with _errors(f"reading the logs of pod {self.namespace}/{self.pod}"):
            pending = b""
            try:
                for chunk in chunks:
                    pending += chunk
                    *whole, pending = pending.split(b"\n")
                    yield from (line.decode(errors="replace") for line in whole)
            except ApiException as exc:
                if exc.status in (400, 404):  # not started yet, or gone meanwhile
                    return
                if exc.status in (401, 403):
                    raise
                # The API server could not get them from the pod's kubelet (500: the
                # node is unreachable, or its kubelet refused): say so, in one line.
                raise Unreachable(
                    f"cannot read the logs of pod {self.namespace}/{self.pod} (container "
                    f"{self.container}): HTTP {exc.status} {exc.reason}: {api_message(exc)}"
                ) from None
            if pending:
                yield pending.decode(errors="replace")


class Cluster:
    """Reads from one cluster. Everything returns plain JSON dicts."""

    def __init__(self, target: ClusterTarget) -> None:
        self.target = target
        configuration = Configuration()
        try:
            if _in_cluster(target):
                kconfig.load_incluster_config(client_configuration=configuration)
            else:
                kconfig.load_kube_config(
                    config_file=target.kubeconfig,
                    context=target.context,
                    client_configuration=configuration,
                )
        except (ConfigException, OSError, TypeError) as exc:
            raise Unreachable(f"cannot load the kubeconfig: {exc}") from None
        configuration.retries = 1
        self.api = KubeApi(ApiClient(configuration))
        # Namespaces this identity may not list in (see `_list`): reported, not fatal.
        self.unlisted: set[str] = set()

    def default_namespace(self) -> str:
        try:
            _, active = kconfig.list_kube_config_contexts(config_file=self.target.kubeconfig)
        except (ConfigException, OSError):
            return "default"
        if self.target.context:
            contexts, _ = kconfig.list_kube_config_contexts(config_file=self.target.kubeconfig)
            active = next((c for c in contexts if c["name"] == self.target.context), active)
        return str((active or {}).get("context", {}).get("namespace") or "default")

    def _get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.api.get(RESOURCES[kind].path(namespace, name))

    def check_namespace(self, namespace: str) -> None:
        """A clear error for a missing namespace. Namespace-scoped users may not read
        namespaces (cluster-scoped): then the target's own read tells."""
        with _errors(f"reading namespace {namespace}"):
            try:
                self._get("namespace", namespace)
            except ApiException as exc:
                if exc.status == 403:
                    return
                if exc.status != 404:
                    raise
                listed = self.api.list(RESOURCES["namespace"].path())
                names = sorted(n["metadata"]["name"] for n in listed)
                raise NotFound(
                    f"namespace {namespace!r} not found (namespaces: {', '.join(names)})"
                ) from None

    def _names(self, kind: str, namespace: str) -> list[str]:
        listed = self.api.list(RESOURCES[kind].path(namespace))
        return sorted(i["metadata"]["name"] for i in listed)

    def workload(self, spec: ServiceSpec) -> TargetWorkload | None:
        """The target's pod template, or None in targetless mode."""
        if spec.target is None:
            return None
        kind, name, ns = spec.target.kind, spec.target.name, spec.namespace
        with _errors(f"reading {kind}/{name}"):
            try:
                obj = self._get(kind, name, ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self.check_namespace(ns)
                try:
                    existing = self._names(kind, ns)
                except ApiException:
                    existing = []
                listing = ", ".join(f"{kind}/{n}" for n in existing) or "none"
                raise NotFound(
                    f"target {kind}/{name} not found in namespace {ns} "
                    f"(existing {kind}s: {listing})"
                ) from None
            ref = obj.get("spec", {}).get("workloadRef") if kind == "rollout" else None
            if ref and not obj.get("spec", {}).get("template"):
                ref_kind = str(ref.get("kind", "Deployment")).lower()
                inner = self._get(ref_kind, ref["name"], ns)
                obj = {**obj, "spec": {**obj["spec"], "template": inner["spec"]["template"]}}
            workload = pod_template_of(obj)
            return dataclasses.replace(
                workload,
                claims=self._claims(ns, claim_names(workload.pod_spec)),
                env_sources={
                    ref: self._env_source_keys(ns, ref)
                    for ref in env_source_refs(workload.pod_spec)
                },
            )

    def _claims(self, namespace: str, names: list[str]) -> dict[str, dict[str, Any]]:
        """The specs of the claims the target mounts (class, size, access modes): those this
        identity may read."""
        claims = {}
        for name in names:
            try:
                found = self._get("persistentvolumeclaim", name, namespace)
            except ApiException as exc:
                if exc.status in (403, 404):
                    continue
                raise
            claims[name] = found.get("spec", {})
        return claims

    def _env_source_keys(self, namespace: str, ref: str) -> list[str] | str:
        """The keys of an envFrom source ("configmap/NAME" or "secret/NAME"), or why they
        cannot be read. Only key names leave this function: Secret values are dropped here."""
        kind, name = ref.split("/", 1)
        try:
            obj = self._get(kind, name, namespace)
            keys = [*(obj.get("data") or {}), *(obj.get("binaryData") or {})]
            del obj
        except ApiException as exc:
            if exc.status == 404:
                return "not found"
            if exc.status == 403:
                return f"403 Forbidden: no get rights on {kind}s"
            raise
        return sorted(keys)

    def services(self, namespace: str) -> list[dict[str, Any]]:
        with _errors(f"listing services in {namespace}"):
            items = self.api.list(RESOURCES["service"].path(namespace))
        return [s for s in items if not naming.is_managed(s)]

    def _list(
        self,
        kind: str,
        selector: str,
        namespaces: Collection[str] | None,
        *,
        strict: bool = False,
        optional: bool = False,
    ) -> list[dict[str, Any]]:
        """One cluster-wide list call; for a user without cluster-wide rights (403), one
        call per namespace in `namespaces` (the environments' own, from the backend). A
        namespace the user may not list either is left out (`self.unlisted`), or with
        `strict` refused (its ApiException 403); an `optional` kind's rights may be missing
        without hiding anything else (left out, not in `self.unlisted`)."""
        resource = RESOURCES[kind]
        try:
            return self.api.list(resource.path(), selector)
        except ApiException as exc:
            if exc.status != 403 or namespaces is None:
                raise
        items: list[dict[str, Any]] = []
        for namespace in sorted(set(namespaces)):
            try:
                items += self.api.list(resource.path(namespace), selector)
            except ApiException as exc:
                if exc.status != 403 or strict:
                    raise
                if not optional:
                    self.unlisted.add(namespace)
        return items

    def configmaps(self, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        """ConfigMaps matching `selector` in `namespace` (all namespaces when None)."""
        with _errors(f"listing ConfigMaps in {namespace or 'all namespaces'}"):
            return self.api.list(RESOURCES["configmap"].path(namespace), selector)

    def queue_preparations(
        self, namespace: str, platform_stacks: Collection[str] | None = None
    ) -> dict[str, Preparation]:
        """The queues prepared for splitting in `namespace`, by id, from their records;
        with `platform_stacks` (the backend's `queue` stacks), only those whose stack
        exists: a record alone is a hint anyone with ConfigMap rights could plant."""
        found: dict[str, Preparation] = {}
        selector = queue_prep.selector(queue_prep.COMPONENT_PREPARATION)
        for obj in self.configmaps(namespace, selector):
            prep = queue_prep.parse_record(obj)
            if prep is None or prep.namespace != namespace:
                continue
            stack = naming.platform_stack("queue", namespace, prep.id)
            if platform_stacks is None or stack in platform_stacks:
                found[prep.id] = prep
        return found

    def keeper_status(self, namespace: str, queue_id: str) -> queue_prep.KeeperStatus | None:
        """What a queue's keeper last wrote (None: no keeper, or no right to read it)."""
        try:
            found = self.configmap(namespace, queue_prep.status_name(queue_id))
        except Unreachable:
            return None
        return queue_prep.parse_status(found)

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        with _errors(f"reading ConfigMap {namespace}/{name}"):
            try:
                return self._get("configmap", name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def patch_configmap(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        with _errors(f"writing ConfigMap {namespace}/{name}"):
            self.api.merge_patch(RESOURCES["configmap"].path(namespace, name), {"data": data})

    def records(
        self, key: str | None = None, namespaces: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """Environment record ConfigMaps: hints for people using kubectl, never trusted."""
        selector = naming.selector(key=key or None, components=("record",))
        with _errors("listing environment records"):
            return self._list("configmap", selector, namespaces)

    def preview_pods(
        self, key: str | None = None, namespaces: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """Preview pods (of `key`, else all): one call, or one per namespace (see _list)."""
        selector = naming.selector(key=key or None, keyed=True)
        with _errors("listing preview pods"):
            return self._list("pod", selector, namespaces)

    def preview_workloads(
        self, key: str | None = None, namespaces: Collection[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """Preview Deployments and their ReplicaSets (of `key`, else all): what tells the
        pods of a Deployment's current template from an older one's (preview_stack.rollouts).
        None when this identity may not list them everywhere it would list the pods."""
        selector = naming.selector(key=key or None, keyed=True)
        with _errors("listing preview deployments"):
            try:
                return (
                    self._list("deployment", selector, namespaces, strict=True),
                    self._list("replicaset", selector, namespaces, strict=True),
                )
            except ApiException as exc:
                if exc.status == 403:
                    return None
                raise

    def copy_jobs(
        self, key: str | None, namespaces: Collection[str] | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Database branch copy Jobs, and the pods of the copies and of the branch servers
        (of `key`, else all): two list calls."""
        copies = naming.selector(part_of=key or None, components=("db-branch-copy",))
        servers = naming.selector(part_of=key or None, components=("db-branch-copy", "db-branch"))
        with _errors("listing database branch copies"):
            jobs = self._list("job", copies, namespaces)
            pods = self._list("pod", servers, namespaces)
        return jobs, pods

    def _routes(
        self, selector: str | None, namespaces: Collection[str] | None
    ) -> list[dict[str, Any]]:
        """HTTPRoutes and GRPCRoutes: one call per kind, or one per namespace (see `_list`);
        none of a kind the cluster does not serve."""
        found: list[dict[str, Any]] = []
        with _errors("listing HTTPRoutes and GRPCRoutes"):
            for kind in ROUTE_KINDS:
                try:
                    # GRPCRoutes came later: a role granting HTTPRoutes alone still works.
                    found += self._list(
                        kind, selector or "", namespaces, optional=kind == "grpcroute"
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        return found

    def routes(
        self,
        namespaces: Collection[str] | None = None,
        *,
        key: str | None = None,
        stack_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """preview-env's HTTPRoutes and GRPCRoutes (of `key` and stack `stack_id` when
        given); none when the cluster has no Gateway API."""
        return self._routes(naming.selector(key=key, stack=stack_id), namespaces)

    def routes_to(self, namespace: str) -> list[dict[str, Any]]:
        """The HTTPRoutes and GRPCRoutes, not preview-env's, that may send traffic to
        Services in `namespace`: its own, and those of other namespaces naming a backend
        there (through a ReferenceGrant) where this user may create routes, since a twin
        lives beside its original. Listed cluster-wide, else in `namespace` alone."""
        found = []
        for route in self._routes(None, {namespace}):
            where = route["metadata"]["namespace"]
            if naming.is_managed(route):
                continue
            if where != namespace and not (
                namespace in _backend_namespaces(route) and self._may_create(route, where)
            ):
                continue
            found.append(route)
        return found

    def _may_create(self, route: Mapping[str, Any], namespace: str) -> bool:
        """Whether this user may create routes of `route`'s kind in `namespace`."""
        plural = f"{str(route['kind']).lower()}s"
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "create",
                    "group": "gateway.networking.k8s.io",
                    "resource": plural,
                }
            },
        }
        with _errors(f"asking whether {plural} may be created in {namespace}"):
            answer = self.api.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
        return bool((answer.get("status") or {}).get("allowed"))

    def gateways(self, namespace: str) -> list[str] | None:
        """The names of the Gateways in `namespace` (None: this user may not list them)."""
        with _errors(f"listing Gateways in {namespace}"):
            try:
                return self._names("gateway", namespace)
            except ApiException as exc:
                if exc.status in (403, 404):
                    return None
                raise

    def gateway_support(self, gateways: Collection[str]) -> dict[str, GatewaySupport]:
        """What the class of each Gateway (`ns/name`) says it supports; Gateways or classes
        this user may not read, or that are gone, are left out (nothing assumed)."""
        found: dict[str, GatewaySupport] = {}
        classes: dict[str, dict[str, Any] | None] = {}
        with _errors("reading Gateways and GatewayClasses"):
            for gateway in sorted(gateways):
                namespace, _, name = gateway.partition("/")
                try:
                    class_name = self._get("gateway", name, namespace)["spec"]["gatewayClassName"]
                    if class_name not in classes:
                        classes[class_name] = self._get("gatewayclass", class_name)
                except ApiException as exc:
                    if exc.status in (403, 404):
                        continue
                    raise
                gateway_class = classes[class_name] or {}
                listed = (gateway_class.get("status") or {}).get("supportedFeatures") or []
                names = frozenset(f["name"] if isinstance(f, dict) else str(f) for f in listed)
                found[gateway] = GatewaySupport(
                    class_name=class_name,
                    controller=str((gateway_class.get("spec") or {}).get("controllerName", "")),
                    features=names or None,
                )
        return found

    def live_objects(self, key: str | None, namespaces: Collection[str]) -> LiveObjects:
        """preview-env's pods, HTTPRoutes and records (of `key`, else all) as `status`
        sorts them out (preview_stack.inventory): cluster-wide, else in `namespaces`."""
        workloads = self.preview_workloads(key, namespaces)
        routes = self.routes(namespaces, key=key or None)
        return LiveObjects(
            pods=self.preview_pods(key, namespaces),
            routes=routes,
            records=self.records(key, namespaces),
            gateways=self.gateway_support(gateways_of(routes)),
            deployments=workloads[0] if workloads else [],
            replicasets=workloads[1] if workloads else [],
        )

    def pod_logs(
        self,
        key: str,
        stack_id: str,
        services: Collection[tuple[str, str, str]],
        *,
        container: str | None = None,
        tail: int | None = None,
        since_seconds: int | None = None,
    ) -> list[PodLogs]:
        """The logs of this stack's preview pods of `services` (namespace, target label,
        image): the container running the preview image unless `container` names one."""
        wanted = {(ns, label): image for ns, label, image in services}
        found = []
        for pod in self.preview_pods(key, {ns for ns, _, _ in services}):
            meta, spec = pod["metadata"], pod.get("spec", {})
            target = naming.labels_of(pod).get(naming.LABEL_TARGET, "")
            image = wanted.get((meta["namespace"], target))
            if image is None or not naming.owned_by(pod, stack_id):
                continue
            if meta.get("deletionTimestamp"):
                continue
            names = [c["name"] for c in spec.get("initContainers", []) + spec["containers"]]
            if container is not None and container not in names:
                raise NotFound(
                    f"pod {meta['name']} has no container {container!r} "
                    f"(containers: {', '.join(names)})"
                )
            own = next((c["name"] for c in spec["containers"] if c.get("image") == image), None)
            found.append(
                PodLogs(
                    self.api,
                    meta["name"],
                    meta["namespace"],
                    container or own or spec["containers"][0]["name"],
                    tail,
                    since_seconds,
                )
            )
        return sorted(found, key=lambda p: (p.namespace, p.pod))

    def log_tail(self, pod: Mapping[str, Any], lines: int = 10) -> tuple[str, list[str]]:
        """The container that is failing in `pod` and the last lines it printed (its
        previous run when it restarted: a crash loop's current container has none yet)."""
        statuses = pod.get("status", {}).get("containerStatuses") or []
        failing = next((c for c in statuses if not c.get("ready")), None)
        if failing is None:
            return "", []
        state = failing.get("state") or {}
        # Waiting to restart: the lines are the previous run's; ended or running: this run's.
        previous = bool(failing.get("restartCount")) and "waiting" in state
        meta = pod["metadata"]
        try:
            text = self.api.text(
                RESOURCES["pod"].path(meta["namespace"], meta["name"]) + "/log",
                container=failing["name"],
                tailLines=lines,
                previous="true" if previous else None,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError):
            return failing["name"], []  # no logs yet (never started, or the node is gone)
        return failing["name"], str(text or "").splitlines()[-lines:]

    def has_gateway_api(self) -> bool:
        """Whether the cluster serves HTTPRoutes (gateway.networking.k8s.io/v1)."""
        with _errors("reading the cluster's API resources"):
            try:
                found = self.api.get("/apis/gateway.networking.k8s.io/v1")
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
        return any(r.get("name") == "httproutes" for r in found.get("resources") or [])

    def foreign_holder(self, manifest: Mapping[str, Any], stack_id: str) -> str | None:
        """Who holds the object `manifest` would create, when another stack does (its owner
        annotation and key); None when it is free or ours."""
        meta = manifest["metadata"]
        name, namespace, kind = meta["name"], meta["namespace"], manifest["kind"]
        with _errors(f"reading {kind.lower()} {namespace}/{name}"):
            if kind not in _HELD_KINDS:
                return None  # routes are named after the preview Service, checked above
            try:
                found = self._get(kind.lower(), name, namespace)
                if kind == "Secret":
                    found = {"metadata": found.get("metadata", {})}  # never its values
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
        if naming.owned_by(found, stack_id):
            return None
        annotations = found.get("metadata", {}).get("annotations") or {}
        owner = annotations.get(naming.ANNOTATION_OWNER) or "someone outside preview-env"
        holder_key = naming.key_of(found)
        where = f"{kind.lower()} {namespace}/{name}"
        if holder_key and naming.is_managed(found):
            return f"{where} belongs to environment {holder_key!r} of another backend ({owner})"
        return f"{where} exists and is not preview-env's"

    def sweep(
        self,
        key: str,
        stack_id: str,
        keep: Collection[tuple[str, str, str]] = (),
        namespaces: Collection[str] = (),
    ) -> list[str]:
        """Delete objects of this stack (`stack_id` label) that its state no longer tracks.

        A killed update can leave objects it was creating out of the stack's state; after a
        destroy, nothing of the stack should remain. Objects of the same key from another
        backend carry another stack id and are never touched. Returns what was deleted.
        """
        selector = naming.selector(key=key, stack=stack_id)
        deleted: list[str] = []
        # Routes first, before what they route to (Stacks.apply has already drained the
        # routes it knew of; these are leftovers).
        # Secrets hold file mounts; the reaper may not list them: Pulumi's state decides.
        kinds = [
            *ROUTE_KINDS,
            "deployment",
            "service",
            "configmap",
            "secret",
            "persistentvolumeclaim",
            "cronjob",
            "job",
        ]
        with _errors(f"removing leftover objects of {key}"):
            for kind in kinds:
                try:
                    listed = self._list(kind, selector, namespaces)
                except ApiException as exc:
                    if exc.status == 404 and kind in ROUTE_KINDS:
                        continue  # no Gateway API
                    if exc.status != 403:
                        raise
                    continue  # e.g. the reaper may not list Secrets
                for item in listed:
                    meta = item["metadata"]
                    if (kind, meta["namespace"], meta["name"]) in keep:
                        continue
                    if meta.get("ownerReferences"):
                        continue  # a CronJob's runs, a files Secret: they go with their owner
                    try:
                        self.api.delete(RESOURCES[kind].path(meta["namespace"], meta["name"]))
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
                    deleted.append(f"{kind}/{meta['namespace']}/{meta['name']}")
        return deleted


__all__ = ["Cluster", "ClusterTarget", "PreviewError", "merge_patch_secret"]


class Waypoints:
    """The reads and the one write (the selector swap) of waypoints (preview_stack.waypoints)
    over a cluster: plain JSON in and out, client errors mapped to ours."""

    def __init__(self, cluster: Cluster) -> None:
        self.api = cluster.api

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        with _errors(f"reading service {namespace}/{name}"):
            try:
                return self.api.get(RESOURCES["service"].path(namespace, name))
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def patch_service(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        """Apply a JSON Patch to the Service; a failed `test` (someone else changed the
        selector meanwhile) is a refusal, not a retry."""
        with _errors(f"patching service {namespace}/{name}"):
            try:
                self.api.json_patch(RESOURCES["service"].path(namespace, name), ops)
            except ApiException as exc:
                if exc.status == 422:
                    raise Busy(
                        f"service {namespace}/{name} changed while its selector was being "
                        "swapped; nothing was changed, retry"
                    ) from None
                raise

    def ready_pods(self, namespace: str, service: str) -> set[str]:
        """Names of the pods the Service's EndpointSlices list as ready."""
        path = RESOURCES["endpointslice"].path(namespace)
        with _errors(f"reading the endpoints of service {namespace}/{service}"):
            slices = self.api.list(path, f"kubernetes.io/service-name={service}")
        return {
            str(e["targetRef"]["name"])
            for s in slices
            for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready", True) and e.get("targetRef")
        }

    def pods(self, namespace: str, selector: Mapping[str, str]) -> set[str]:
        """Names of the Running, Ready pods `selector` selects."""
        text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        with _errors(f"listing pods in {namespace}"):
            found = self.api.list(RESOURCES["pod"].path(namespace), text)
        return {
            str(p["metadata"]["name"])
            for p in found
            if not p["metadata"].get("deletionTimestamp")
            and any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        }

    def gateways(self, label: str) -> list[dict[str, Any]]:
        """Every Gateway carrying `label` (the waypoints'), in all namespaces."""
        with _errors("listing Gateways"):
            try:
                return self.api.list(RESOURCES["gateway"].path(), label)
            except ApiException as exc:
                if exc.status == 404:
                    return []
                raise

    def routes_on(self, namespace: str, gateway: str) -> list[str]:
        """Names of preview-env's HTTPRoutes in `namespace` attached to Gateway `gateway`
        there (previews' twins on a waypoint)."""
        path = RESOURCES["httproute"].path(namespace)
        with _errors(f"listing HTTPRoutes in {namespace}"):
            listed = self.api.list(path, f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}")
        return sorted(
            str(r["metadata"]["name"])
            for r in listed
            if any(
                p.get("name") == gateway and p.get("namespace", namespace) == namespace
                for p in (r.get("spec") or {}).get("parentRefs") or []
            )
        )
