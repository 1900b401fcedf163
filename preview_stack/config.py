"""Reading a mirrord config file: render its template, parse JSON/YAML/TOML, validate.

Only the fields previews use are modelled; anything else mirrord knows is reported as a
warning (previews ignore it) rather than refused, so one config serves both tools.
"""

from __future__ import annotations

import base64
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from preview_stack import template
from preview_stack.errors import BadInput
from preview_stack.queues import SplitQueue, parse_split_queues
from preview_stack.ttl import INFINITE

TARGET_KINDS = ("deployment", "statefulset", "rollout", "pod", "cronjob")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class TargetPath(BaseModel):
    """`deployment/users[/container/app]`, parsed."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["deployment", "statefulset", "rollout", "pod", "cronjob"]
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


class FileMountConfig(_Model):
    """One file injected into the chosen container: `path` (absolute, in the container) and
    exactly one payload: `text`, `binary` (base64) or `from_file` (a local path, relative
    to the working directory)."""

    path: str
    text: str | None = None
    binary: str | None = None
    from_file: str | None = None

    @model_validator(mode="after")
    def _one_payload(self) -> FileMountConfig:
        given = [n for n in ("text", "binary", "from_file") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"file {self.path!r}: give exactly one of text, binary (base64) or from_file"
            )
        if not self.path.startswith("/") or self.path.endswith("/") or "/../" in self.path:
            raise ValueError(f"file path {self.path!r} must be an absolute file path")
        if self.binary is not None:
            try:
                base64.b64decode(self.binary, validate=True)
            except ValueError:
                raise ValueError(f"file {self.path!r}: binary is not valid base64") from None
        return self


class CronJobFeature(_Model):
    schedule: str | None = None
    trigger_on_start: bool = True


class PreviewFeature(_Model):
    image: str | None = None
    ttl_mins: int | Literal["infinite"] | None = None
    ttl_secs: int | Literal["infinite"] | None = None
    creation_timeout_secs: int = Field(default=60, gt=0, le=600)
    replicas: int = Field(default=1, ge=1, le=20)
    labels: LabelRules = Field(default_factory=LabelRules)
    volumes: Literal["ephemeral", "persistent"] = "ephemeral"
    # Volumes of the target kept as they are (hostPath, nfs, a claim, ...): the preview then
    # reads and writes staging's data there. Every other such volume becomes an emptyDir.
    shared_volumes: list[str] = Field(default_factory=list)
    config_mounts: list[FileMountConfig] = Field(default_factory=list)
    secret_mounts: list[FileMountConfig] = Field(default_factory=list)
    cronjob: CronJobFeature = Field(default_factory=CronJobFeature)

    @model_validator(mode="after")
    def _unique_paths(self) -> PreviewFeature:
        paths = [m.path for m in [*self.config_mounts, *self.secret_mounts]]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise ValueError(f"files mounted twice: {', '.join(twice)}")
        return self

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
    env_file: str | None = None

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


DB_ENGINES = ("pg", "mysql")
DB_COPY_MODES = ("empty", "schema", "all")
DB_PARAM_ROLES = ("host", "port", "user", "password", "database")


class _Strict(BaseModel):
    """db_branches: only the subset we implement; any other field is refused by name."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, value: Any) -> Any:
        if isinstance(value, dict):
            known = [f.alias or name for name, f in cls.model_fields.items()]
            unknown = sorted(set(value) - set(known))
            if unknown:
                raise ValueError(
                    f"{', '.join(map(repr, unknown))} is not supported in a database branch "
                    f"(use: {', '.join(known)})"
                )
        return value


class DbUrlSource(_Strict):
    type: Literal["env"] = "env"
    variable: str = Field(min_length=1)


class DbConnection(_Strict):
    """Where the target finds its database: one URL variable, or one variable per part."""

    url: DbUrlSource | None = None
    type: Literal["env"] = "env"
    params: dict[str, str] | None = None

    @model_validator(mode="after")
    def _url_or_params(self) -> DbConnection:
        if (self.url is None) == (self.params is None):
            raise ValueError(
                'give exactly one of connection.url {"type": "env", "variable": NAME} or '
                'connection.params {"host": NAME, ...}'
            )
        unknown = sorted(set(self.params or {}) - set(DB_PARAM_ROLES))
        if unknown:
            raise ValueError(
                f"connection.params: unknown part {', '.join(map(repr, unknown))} "
                f"(use: {', '.join(DB_PARAM_ROLES)})"
            )
        if self.params is not None and "host" not in self.params:
            raise ValueError("connection.params needs at least host: the variable naming it")
        return self


class DbTableCopy(_Strict):
    filter: str | None = None


class DbCopy(_Strict):
    mode: Literal["empty", "schema", "all"] = "empty"
    tables: dict[str, DbTableCopy] = Field(default_factory=dict)


# A Kubernetes quantity for a claim's size: digits with an optional binary or decimal suffix.
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


class DbStorage(_Strict):
    """Where a branch server keeps its data (ours, not mirrord's): its own claim, so the
    copied rows survive the server pod's restarts, evictions and rescheduling."""

    size: str = "1Gi"
    class_: str | None = Field(default=None, alias="class")

    @field_validator("size")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"storage size {value!r} is not a quantity (for example 1Gi, 500Mi)")
        return value


class DbBranchConfig(_Strict):
    """One entry of mirrord's `feature.db_branches` (the subset previews implement)."""

    type: str
    id: str | None = None
    name: str | None = None
    version: str | None = None
    image: str | None = None
    connection: DbConnection
    copy_: DbCopy = Field(default_factory=DbCopy, alias="copy")
    # A claim (default 1Gi of the cluster's default class), or "ephemeral": an emptyDir that
    # a restarted server pod loses (status then says so).
    storage: DbStorage | Literal["ephemeral"] = Field(default_factory=DbStorage)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, value: Any) -> Any:
        if isinstance(value, dict):
            known = {*cls.model_fields, "copy"} - {"copy_"}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(
                    f"{', '.join(map(repr, unknown))} is not supported in a database branch "
                    f"(use: {', '.join(sorted(known))})"
                )
        return value

    @field_validator("type")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value not in DB_ENGINES:
            raise ValueError(
                f"database type {value!r} is not supported (supported: {', '.join(DB_ENGINES)})"
            )
        return value

    @model_validator(mode="after")
    def _choices(self) -> DbBranchConfig:
        if self.version is not None and self.image is not None:
            raise ValueError("set either version or image for a database branch, not both")
        return self


class Features(_Model):
    preview: PreviewFeature = Field(default_factory=PreviewFeature)
    db_branches: list[DbBranchConfig] = Field(default_factory=list)
    env: EnvFeature = Field(default_factory=EnvFeature)
    network: NetworkFeature = Field(default_factory=NetworkFeature)
    split_queues: dict[str, SplitQueue] = Field(default_factory=dict)

    @field_validator("split_queues", mode="before")
    @classmethod
    def _queues(cls, value: Any) -> Any:
        """mirrord's object-or-list shape, read into queue id -> SplitQueue."""
        return parse_split_queues(value)


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


_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*?)\s*$")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


def parse_dotenv(text: str, *, source: str) -> dict[str, str]:
    """A dotenv file (`feature.env.env_file`, as in mirrord): `KEY=value` lines, optional
    `export `, `#` comments, 'single' (literal) or "double" (escapes) quotes."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DOTENV_LINE.match(line)
        if not match:
            raise BadInput(
                f"{source}:{number}: not a KEY=value line; quote values with spaces or "
                "comment the line out with #"
            )
        name, raw = match.groups()
        if raw[:1] in ("'", '"'):
            quote = raw[0]
            end = raw.find(quote, 1)
            while quote == '"' and end > 0 and raw[end - 1] == "\\":
                end = raw.find(quote, end + 1)
            rest = raw[end + 1 :].strip() if end > 0 else ""
            if end < 0 or (rest and not rest.startswith("#")):
                raise BadInput(f"{source}:{number}: unterminated or trailing text after {quote}")
            value = raw[1:end]
            if quote == '"':
                value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[0]), value)
        else:
            value = re.split(r"\s+#", raw, maxsplit=1)[0].strip()
        values[name] = value
    return values


def read_local_file(path: str, *, what: str) -> bytes:
    """A file the config points at (`env_file`, `from_file`), relative to the working
    directory; a missing one is bad input naming the field."""
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise BadInput(
            f"{what} {path!r} cannot be read ({exc.strerror or exc}); paths are relative to "
            "the working directory"
        ) from None
