"""Reading a mirrord config file: render its template, parse JSON/YAML/TOML, validate.

Only the fields previews use are modelled; anything else mirrord knows is reported as a
warning (previews ignore it) rather than refused, so one config serves both tools.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from preview_stack import template
from preview_stack.errors import BadInput
from preview_stack.ttl import INFINITE

TARGET_KINDS = ("deployment", "statefulset", "rollout", "pod")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class TargetPath(BaseModel):
    """`deployment/users[/container/app]`, parsed."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["deployment", "statefulset", "rollout", "pod"]
    name: str
    container: str | None = None

    @classmethod
    def parse(cls, path: str) -> TargetPath:
        parts = path.strip().strip("/").split("/")
        if len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "container"):
            raise ValueError(
                f"target {path!r} must look like <kind>/<name> or "
                "<kind>/<name>/container/<container>"
            )
        kind = parts[0].lower()
        if kind not in TARGET_KINDS:
            raise ValueError(
                f"unknown target kind {parts[0]!r} in {path!r} (use one of: "
                f"{', '.join(TARGET_KINDS)})"
            )
        if not all(parts):
            raise ValueError(f"target {path!r} has an empty part")
        return cls.model_validate(
            {"kind": kind, "name": parts[1], "container": parts[3] if len(parts) == 4 else None}
        )

    def __str__(self) -> str:
        base = f"{self.kind}/{self.name}"
        return f"{base}/container/{self.container}" if self.container else base


class Target(_Model):
    path: TargetPath | None = None
    namespace: str | None = None

    @field_validator("path", mode="before")
    @classmethod
    def _parse_path(cls, value: Any) -> Any:
        if value is None or isinstance(value, TargetPath):
            return value
        if not isinstance(value, str):
            raise ValueError("must be a string like deployment/users")
        if value.strip() in ("", "targetless"):
            return None
        return TargetPath.parse(value)


class LabelRules(_Model):
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class PreviewFeature(_Model):
    image: str | None = None
    ttl_mins: int | Literal["infinite"] | None = None
    ttl_secs: int | Literal["infinite"] | None = None
    creation_timeout_secs: int = Field(default=60, gt=0, le=600)
    replicas: int = Field(default=1, ge=1, le=20)
    labels: LabelRules = Field(default_factory=LabelRules)

    @model_validator(mode="after")
    def _one_ttl(self) -> PreviewFeature:
        if self.ttl_mins is not None and self.ttl_secs is not None:
            raise ValueError("set either ttl_mins or ttl_secs, not both")
        for value in (self.ttl_mins, self.ttl_secs):
            if isinstance(value, int) and value <= 0:
                raise ValueError('the TTL must be a positive number or "infinite"')
        return self

    def ttl_seconds(self) -> int | Literal["default"] | None:
        """Seconds, None for infinite, or "default" when the file does not say."""
        if self.ttl_mins is not None:
            return None if self.ttl_mins == INFINITE else int(self.ttl_mins) * 60
        if self.ttl_secs is not None:
            return None if self.ttl_secs == INFINITE else int(self.ttl_secs)
        return "default"


class EnvFeature(_Model):
    include: list[str] | str | None = None
    exclude: list[str] | str | None = None
    override: dict[str, str] = Field(default_factory=dict)

    @field_validator("include", "exclude", mode="after")
    @classmethod
    def _split(cls, value: list[str] | str | None) -> list[str] | None:
        # mirrord also accepts "A;B*" strings.
        if isinstance(value, str):
            return [v for v in value.split(";") if v]
        return value


class HttpFilter(_Model):
    header_filter: str | None = None


class IncomingFeature(_Model):
    mode: Literal["steal", "mirror", "off"] = "mirror"
    ports: list[int] | None = None
    http_filter: HttpFilter = Field(default_factory=HttpFilter)

    @field_validator("ports", mode="after")
    @classmethod
    def _port_range(cls, value: list[int] | None) -> list[int] | None:
        for port in value or []:
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range 1-65535")
        return value


class NetworkFeature(_Model):
    incoming: IncomingFeature | None = None

    @field_validator("incoming", mode="before")
    @classmethod
    def _mode_shorthand(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value


class Features(_Model):
    preview: PreviewFeature = Field(default_factory=PreviewFeature)
    env: EnvFeature = Field(default_factory=EnvFeature)
    network: NetworkFeature = Field(default_factory=NetworkFeature)


class MirrordConfig(_Model):
    """The parts of a mirrord config that a preview environment uses."""

    key: str | None = None
    target: Target = Field(default_factory=Target)
    feature: Features = Field(default_factory=Features)

    @field_validator("target", mode="before")
    @classmethod
    def _target_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) or value is None else value


# Fields that are meaningful to mirrord but not to a preview: a warning each.
_IGNORED_NOTE = "ignored by preview environments"


def ignored_fields(config: MirrordConfig) -> list[str]:
    """Dotted paths of fields present in the file that previews do not use."""
    found: list[str] = []

    def walk(model: BaseModel, prefix: str) -> None:
        for name in model.model_extra or {}:
            found.append(f"{prefix}{name}")
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel) and not isinstance(value, TargetPath):
                walk(value, f"{prefix}{name}.")

    walk(config, "")
    return sorted(found)


def _parse_document(text: str, path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise BadInput(f"{where}: invalid YAML: {problem}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: invalid TOML: {exc}") from None


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("function-", "literal["))]
    return ".".join(parts) or "(top level)"


def validate(data: Any, *, source: Path) -> MirrordConfig:
    """Check a parsed (and rendered) config document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"{source}: the config must be an object at the top level")
    try:
        return MirrordConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise BadInput(f"{source}: {_field_path(first['loc'])}: {message}") from None


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise BadInput(f"config file {path} not found; pass -f/--config-file PATH") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"config file {path} cannot be read: {exc}") from None


def load(path: Path, variables: Mapping[str, str]) -> MirrordConfig:
    """Render, parse and validate; template values land as data, never as syntax."""
    rendered = template.render(read_text(path), variables, source=path, parse=_parse_document)
    return validate(rendered.data, source=path)


def declared_key(path: Path, variables: Mapping[str, str] | None = None) -> str | None:
    """The config's own `key` field, read before rendering (the key renders the rest).

    Names not in `variables` render as placeholders; a key that depends on one is not
    declared. A document that does not render or parse is reported later by `load`.
    """
    text = read_text(path)
    try:
        rendered = template.render(
            text, variables or {}, source=path, parse=_parse_document, placeholders=True
        )
    except BadInput:
        return None
    key = rendered.data.get("key") if isinstance(rendered.data, dict) else None
    return key if isinstance(key, str) and rendered.resolved(key) else None
