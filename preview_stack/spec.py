"""The typed environment spec: what one stack declares. Merge rules live here too."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from preview_stack import naming
from preview_stack.config import IncomingFeature, TargetPath
from preview_stack.queue_prep import Preparation
from preview_stack.ttl import parse_rfc3339


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EnvRules(_Frozen):
    include: list[str] | None = None
    exclude: list[str] | None = None
    override: dict[str, str] = Field(default_factory=dict)


class LabelRules(_Frozen):
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class ShareLink(_Frozen):
    """A host on a Gateway (`namespace/name`) that reaches the preview: `<key>-<token>.<domain>`,
    unguessable and kept for the environment's life, or `<key>.<domain>` when `token` is None
    (`--stable-share-host`)."""

    gateway: str
    domain: str
    token: str | None = None


class FileMount(_Frozen):
    """A file injected into the chosen container: from feature.preview.config_mounts (a
    ConfigMap of the environment) or secret_mounts (a Secret: never in the record)."""

    path: str
    data: str  # base64 of the payload
    text: bool  # UTF-8 text (ConfigMap `data`) or bytes (`binaryData`)
    secret: bool = False


class CronJobRules(_Frozen):
    schedule: str | None = None  # None: the target's
    trigger_on_start: bool = True


# The image with `preview-env` and the engines' client tools (the Containerfile's).
DEFAULT_COPY_IMAGE = "ghcr.io/preview-env/preview-env:0.1.0"
COPY_IMAGE_ENV = "PREVIEW_ENV_DB_COPY_IMAGE"


class DbTable(_Frozen):
    name: str
    filter: str | None = None  # a SQL WHERE clause; None: every row


class DbBranch(_Frozen):
    """A database branch a service uses (feature.db_branches): a server of its own in the
    environment's stack, filled by an in-cluster copy from the database the target uses.
    Services of one environment naming the same `id` share one branch."""

    id: str
    engine: Literal["pg", "mysql"]
    image: str  # the branch server's
    database: str | None = None  # `name`: the source database (None: the connection's)
    mode: Literal["empty", "schema", "all"] = "empty"
    tables: list[DbTable] = Field(default_factory=list)
    url_variable: str | None = None  # connection.url
    params: dict[str, str] = Field(default_factory=dict)  # part -> variable (connection.params)
    password: str  # generated for the branch server; a secret, never in the record
    copy_image: str = DEFAULT_COPY_IMAGE  # runs `preview-env db copy` in the cluster
    # The server's claim: its size (None: an emptyDir, lost with the pod) and class (None:
    # the cluster's default).
    storage_size: str | None = "1Gi"
    storage_class: str | None = None

    @property
    def port(self) -> int:
        return 5432 if self.engine == "pg" else 3306

    @property
    def user(self) -> str:
        return "preview" if self.engine == "pg" else "root"

    @property
    def variables(self) -> list[str]:
        """The target's variables this branch reads (and the preview's it rewrites)."""
        return [self.url_variable] if self.url_variable else list(self.params.values())

    def same_branch(self, other: DbBranch) -> bool:
        """Two declarations of one shared id must agree on what the branch is."""
        fields = ("engine", "image", "database", "mode", "tables", "storage_size", "storage_class")
        return all(getattr(self, f) == getattr(other, f) for f in fields)


class QueueUse(_Frozen):
    """A prepared queue this service splits (feature.split_queues): the preparation as
    `start` found it, and the key's filter (exact values for rmq)."""

    preparation: Preparation
    filter: dict[str, str]
    mode: Literal["steal", "mirror"] = "steal"


class ServiceSpec(_Frozen):
    """One preview workload: a target replaced by `image`, or a targetless image."""

    target: TargetPath | None = None
    namespace: str
    image: str
    replicas: int = 1
    env: EnvRules = Field(default_factory=EnvRules)
    labels: LabelRules = Field(default_factory=LabelRules)
    incoming: IncomingFeature | None = None
    creation_timeout_secs: int = 60
    routing: bool = True  # False: `--routing none`, the preview Service alone
    share: ShareLink | None = None
    volumes: Literal["ephemeral", "persistent"] = "ephemeral"
    shared_volumes: list[str] = Field(default_factory=list)  # kept as the target has them
    files: list[FileMount] = Field(default_factory=list)
    cronjob: CronJobRules = Field(default_factory=CronJobRules)
    db_branches: list[DbBranch] = Field(default_factory=list)
    split_queues: list[QueueUse] = Field(default_factory=list)

    @property
    def target_id(self) -> str:
        """Identity within an environment: same id in a later start replaces this one."""
        if self.target is None:
            return f"{self.namespace}/targetless/{naming.image_base_name(self.image)}"
        return f"{self.namespace}/{self.target.kind}/{self.target.name}"

    @property
    def target_label(self) -> str:
        if self.target is None:
            return naming.target_label("targetless", naming.image_base_name(self.image))
        return naming.target_label(self.target.kind, self.target.name)

    @property
    def display_target(self) -> str:
        if self.target is None:
            return "targetless"
        return f"{self.target.kind}/{self.target.name}"

    def matches(self, selector: str) -> bool:
        """`clean -t`: match `deployment/users`, `users`, or `ns/deployment/users`."""
        parts = selector.strip("/").split("/")
        if len(parts) >= 4 and parts[-2] == "container":
            parts = parts[:-2]
        candidate = "/".join(parts)
        if self.target is None:
            base = naming.image_base_name(self.image)
            return candidate in (self.target_id, "targetless", f"targetless/{base}", base)
        short = f"{self.target.kind}/{self.target.name}"
        return candidate in (self.target_id, short, self.target.name)


class EnvironmentSpec(_Frozen):
    """Everything one stack declares; kept in the backend (outputs) and in the cluster."""

    key: str
    owner: str
    created_at: str  # RFC 3339, UTC
    expires_at: str | None  # RFC 3339, UTC; None = infinite
    ttl_seconds: int | None
    services: list[ServiceSpec]

    def expiry(self) -> dt.datetime | None:
        return parse_rfc3339(self.expires_at) if self.expires_at else None

    def with_service(self, service: ServiceSpec) -> EnvironmentSpec:
        """Add `service`, replacing any with the same target id (order kept)."""
        kept = [s for s in self.services if s.target_id != service.target_id]
        if len(kept) == len(self.services):
            return self.model_copy(update={"services": [*self.services, service]})
        replaced = [service if s.target_id == service.target_id else s for s in self.services]
        return self.model_copy(update={"services": replaced})

    def without(self, selector: str) -> tuple[EnvironmentSpec, list[ServiceSpec]]:
        removed = [s for s in self.services if s.matches(selector)]
        kept = [s for s in self.services if not s.matches(selector)]
        return self.model_copy(update={"services": kept}), removed

    def record_namespace(self) -> str:
        return self.services[0].namespace

    def branches(self) -> list[tuple[DbBranch, ServiceSpec]]:
        """Each branch once, with the first service declaring it (whose target it copies)."""
        seen: dict[str, tuple[DbBranch, ServiceSpec]] = {}
        for service in self.services:
            for branch in service.db_branches:
                seen.setdefault(branch.id, (branch, service))
        return list(seen.values())
