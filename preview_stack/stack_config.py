"""Stack config of the `pulumi up` front door -> EnvironmentSpec (pure).

(Not named platform.py: Pulumi runs preview_stack/ as a directory program with it first on
sys.path, where that name would shadow the standard library.)

Config keys (namespace `preview-env`):
- `services`: list of {target, namespace, container, image, replicas, env, incoming,
  db_branches} (`target` as in mirrord: `deployment/users`, or omitted for targetless;
  `db_branches` as mirrord's feature.db_branches);
- `dbCopyImage`: the image database branches' copy Jobs run (default: preview-env's own);
- `mirrordConfig` + `image`: a mirrord config file instead of `services`;
- `ttl`: `90m`, `2h`, `infinite` (default 60m); `expiresAt`: an absolute RFC 3339 expiry
  that wins over `ttl`; `owner`.
The key is the stack name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from preview_stack import naming
from preview_stack.changes import Declare
from preview_stack.config import DbBranchConfig, IncomingFeature, TargetPath
from preview_stack.errors import BadInput
from preview_stack.request import db_branches
from preview_stack.spec import EnvRules, LabelRules, ServiceSpec
from preview_stack.ttl import DEFAULT_TTL_SECONDS, parse_duration, parse_rfc3339, rfc3339


class PlatformService(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    target: str | None = None
    namespace: str
    container: str | None = None
    image: str
    replicas: int = Field(default=1, ge=1, le=20)
    env: EnvRules = Field(default_factory=EnvRules)
    labels: LabelRules = Field(default_factory=LabelRules)
    incoming: IncomingFeature | None = None
    creation_timeout_secs: int = Field(default=60, gt=0, le=600)
    db_branches: list[DbBranchConfig] = Field(default_factory=list)

    def to_spec(self, copy_image: str | None = None) -> ServiceSpec:
        target = None
        if self.target and self.target != "targetless":
            parsed = TargetPath.parse(self.target)
            if self.container:
                parsed = parsed.model_copy(update={"container": self.container})
            target = parsed
        return ServiceSpec(
            target=target,
            namespace=self.namespace,
            image=self.image,
            replicas=self.replicas,
            env=self.env,
            labels=self.labels,
            incoming=self.incoming,
            creation_timeout_secs=self.creation_timeout_secs,
            db_branches=db_branches(
                self.db_branches,
                target,
                target_label=naming.target_label(target.kind, target.name) if target else "",
                copy_image=copy_image,
            ),
        )


def parse_services(raw: Any, copy_image: str | None = None) -> list[ServiceSpec]:
    if not isinstance(raw, list) or not raw:
        raise BadInput(
            "preview-env:services must be a non-empty list of {target, namespace, image, ...}"
        )
    specs = []
    for index, item in enumerate(raw):
        try:
            specs.append(PlatformService.model_validate(item).to_spec(copy_image))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise BadInput(f"preview-env:services[{index}].{where}: {message}") from None
        except ValueError as exc:
            raise BadInput(f"preview-env:services[{index}].target: {exc}") from None
        except BadInput as exc:
            raise BadInput(f"preview-env:services[{index}]: {exc}") from None
    return specs


def declared_change(
    *,
    key: str,
    services: list[ServiceSpec],
    ttl: str | None,
    expires_at: str | None,
    owner: str,
) -> Declare:
    """The `pulumi up` change: the config's services. An update that changes nothing keeps
    the expiry (so `pulumi preview` right after a start shows no changes); others move it
    to the later of the current expiry and now + TTL; only `expiresAt` sets it outright."""
    problem = naming.key_problem(key)
    if problem:
        raise BadInput(f"invalid stack name for an environment key: {problem}")
    ttl_seconds = DEFAULT_TTL_SECONDS if ttl is None else parse_duration(ttl)
    expiry: str | None = None
    if expires_at is not None:
        try:
            expiry = rfc3339(parse_rfc3339(expires_at))
        except ValueError:
            raise BadInput(
                f"preview-env:expiresAt {expires_at!r} is not an RFC 3339 time "
                "(e.g. 2026-12-01T18:00:00Z)"
            ) from None
    return Declare(
        services=tuple(services), ttl_seconds=ttl_seconds, owner=owner, expires_at=expiry
    )
