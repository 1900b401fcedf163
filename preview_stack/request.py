"""From a mirrord config and CLI flags to one ServiceSpec (pure). Flags override the file."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from preview_stack import copy_plan, naming
from preview_stack.config import (
    DbBranchConfig,
    FileMountConfig,
    MirrordConfig,
    TargetPath,
    parse_dotenv,
)
from preview_stack.errors import BadInput
from preview_stack.queue_prep import Preparation
from preview_stack.queues import queue_uses
from preview_stack.reaping import MAX_CREATION_TIMEOUT_SECONDS
from preview_stack.spec import (
    DEFAULT_COPY_IMAGE,
    CronJobRules,
    DbBranch,
    DbTable,
    EnvRules,
    FileMount,
    LabelRules,
    ServiceSpec,
    ShareLink,
)
from preview_stack.ttl import DEFAULT_TTL_SECONDS, parse_duration


@dataclass(frozen=True)
class Flags:
    """What `start` was told on the command line (None = not given)."""

    image: str | None = None
    target: str | None = None
    namespace: str | None = None
    ttl: str | None = None
    timeout: int | None = None
    replicas: int | None = None
    routing: bool = True
    gateway: str | None = None
    share_domain: str | None = None
    share_token: str | None = None  # None: the stable host <key>.<domain>
    db_copy_image: str | None = None  # None: DEFAULT_COPY_IMAGE


@dataclass(frozen=True)
class Request:
    service: ServiceSpec
    ttl_seconds: int | None


def resolve_key(
    *,
    flag: str | None,
    env_var: str | None,
    config_key: str | None,
    existing: Collection[str],
    generate: Callable[[], str] | None = None,
) -> tuple[str, bool]:
    """The environment key and whether it was generated. Validated either way."""
    for candidate in (flag, env_var, config_key):
        if candidate:
            problem = naming.key_problem(candidate)
            if problem:
                raise BadInput(f"invalid key: {problem}")
            return candidate, False
    make = generate or (lambda: secrets.token_hex(3)[:5])
    for _ in range(100):
        key = make()
        if key not in existing and naming.key_problem(key) is None:
            return key, True
    raise BadInput("could not generate a free key; pass -k/--key")


ReadFile = Callable[..., bytes]  # (path, *, what) -> bytes; BadInput when unreadable


def _no_files(path: str, *, what: str) -> bytes:
    raise BadInput(f"{what} {path!r}: local files are not read here")


def _files(mounts: Sequence[FileMountConfig], *, secret: bool, read: ReadFile) -> list[FileMount]:
    field = "secret_mounts" if secret else "config_mounts"
    files = []
    for mount in mounts:
        if mount.text is not None:
            payload, text = mount.text.encode(), True
        elif mount.binary is not None:
            payload, text = base64.b64decode(mount.binary), False
        else:
            assert mount.from_file is not None
            payload = read(mount.from_file, what=f"feature.preview.{field} from_file")
            try:
                payload.decode()
                text = True
            except UnicodeDecodeError:
                text = False
        files.append(
            FileMount(
                path=mount.path,
                data=base64.b64encode(payload).decode(),
                text=text,
                secret=secret,
            )
        )
    return files


# The engines' official images at a current major version (`version` picks another).
DEFAULT_DB_VERSIONS = {"pg": "17", "mysql": "8.4"}
DB_IMAGES = {"pg": "postgres", "mysql": "mysql"}


def db_branches(
    branches: Sequence[DbBranchConfig],
    target: TargetPath | None,
    *,
    target_label: str,
    copy_image: str | None = None,
) -> list[DbBranch]:
    """feature.db_branches as specs: ids defaulted (one branch per entry), images resolved,
    and a fresh password each (a later start of the same id keeps the first one)."""
    if branches and target is None:
        raise BadInput(
            "feature.db_branches needs a target: the connection variables are the target's; "
            "set target or remove db_branches"
        )
    specs = []
    for index, branch in enumerate(branches):
        copy = branch.copy_
        if copy.mode == "all":
            filtered = sorted(n for n, t in copy.tables.items() if t.filter is not None)
            if filtered:
                raise BadInput(
                    f"feature.db_branches[{index}]: a filter on {', '.join(filtered)} has no "
                    'effect with copy.mode "all"; use mode "schema" or "empty", or drop it'
                )
        _check_copy(index, branch)
        image = branch.image or (
            f"{DB_IMAGES[branch.type]}:{branch.version or DEFAULT_DB_VERSIONS[branch.type]}"
        )
        connection = branch.connection
        specs.append(
            DbBranch(
                id=branch.id or f"{target_label}-{index}",
                engine=branch.type,
                image=image,
                database=branch.name,
                mode=copy.mode,
                tables=[
                    DbTable(name=name, filter=table.filter)
                    for name, table in copy.tables.items()
                    if copy.mode != "all"
                ],
                url_variable=connection.url.variable if connection.url else None,
                params=dict(connection.params or {}),
                password=secrets.token_hex(16),
                copy_image=copy_image or DEFAULT_COPY_IMAGE,
                storage_size=None if branch.storage == "ephemeral" else branch.storage.size,
                storage_class=None if branch.storage == "ephemeral" else branch.storage.class_,
            )
        )
    ids = [b.id for b in specs]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise BadInput(
            f"feature.db_branches: id {', '.join(twice)} is used twice by one target; "
            "give each entry its own id"
        )
    return specs


def _check_copy(index: int, branch: DbBranchConfig) -> None:
    """What the copy Job would refuse, refused at start, before anything is created: the
    database name, table names, and each filter parsed as one SQL expression."""
    try:
        if branch.name is not None:
            copy_plan.check_name("database", branch.name, branch.type)
        for name, table in branch.copy_.tables.items():
            copy_plan.check_name("table", name, branch.type)
            if table.filter is not None:
                if not table.filter.strip():
                    raise BadInput(f"copy.tables filter of {name} is empty (remove it)")
                copy_plan.check_filter(branch.type, name, table.filter)
    except BadInput as exc:
        raise BadInput(f"feature.db_branches[{index}]: {exc}") from None


def build_request(
    config: MirrordConfig,
    flags: Flags,
    *,
    default_namespace: str,
    read_file: ReadFile = _no_files,
    preparations: Callable[[str], Mapping[str, Preparation]] = lambda _ns: {},
) -> Request:
    """`read_file` reads the local files the config names (env_file, from_file);
    `preparations` the queues prepared for splitting in a namespace (by queue id)."""
    preview = config.feature.preview
    target: TargetPath | None
    if flags.target is not None:
        try:
            target = None if flags.target in ("", "targetless") else TargetPath.parse(flags.target)
        except ValueError as exc:
            raise BadInput(f"--target: {exc}") from None
    else:
        target = config.target.path
    namespace = flags.namespace or config.target.namespace or default_namespace
    image = flags.image or preview.image
    if not image:
        raise BadInput(
            "no image given: pass -i/--image IMAGE or set feature.preview.image in the config"
        )
    ttl_seconds: int | None
    if flags.ttl is not None:
        ttl_seconds = parse_duration(flags.ttl)
    else:
        from_file: int | Literal["default"] | None = preview.ttl_seconds()
        ttl_seconds = DEFAULT_TTL_SECONDS if from_file == "default" else from_file
    # Filters were checked when the config was read (queues.py); each queue must be
    # prepared, for this broker type and this target, before anything is created.
    split_queues = queue_uses(
        config.feature.split_queues,
        preparations(namespace) if config.feature.split_queues else {},
        target,
        namespace,
    )
    if flags.replicas is not None and not 1 <= flags.replicas <= 20:
        raise BadInput(f"--replicas {flags.replicas}: use a number from 1 to 20")
    if flags.timeout is not None and flags.timeout <= 0:
        raise BadInput(f"--timeout {flags.timeout}: use a positive number of seconds")
    timeout = flags.timeout or preview.creation_timeout_secs
    if timeout > MAX_CREATION_TIMEOUT_SECONDS:
        raise BadInput(
            f"creation timeout {timeout}s is longer than {MAX_CREATION_TIMEOUT_SECONDS}s, the "
            "longest update a stale-lock rule can tell from a dead one; use --timeout 600 or less"
        )
    if (flags.gateway is None) != (flags.share_domain is None):
        raise BadInput("a share link needs both --gateway NAMESPACE/NAME and --share-domain DOMAIN")
    share = None
    if flags.gateway and flags.share_domain:
        if flags.gateway.count("/") != 1 or not all(flags.gateway.split("/")):
            raise BadInput(f"--gateway {flags.gateway!r}: use NAMESPACE/NAME")
        share = ShareLink(gateway=flags.gateway, domain=flags.share_domain, token=flags.share_token)
    env = config.feature.env
    from_env_file: dict[str, str] = {}
    if env.env_file:
        raw = read_file(env.env_file, what="feature.env.env_file")
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise BadInput(f"feature.env.env_file {env.env_file!r} is not UTF-8 text") from None
        from_env_file = parse_dotenv(text, source=env.env_file)
    files = _files(preview.config_mounts, secret=False, read=read_file)
    files += _files(preview.secret_mounts, secret=True, read=read_file)
    kind = target.kind if target else None
    if kind != "cronjob" and preview.cronjob.schedule is not None:
        raise BadInput(
            "feature.preview.cronjob.schedule applies to cronjob/NAME targets only; "
            "remove it or target a CronJob"
        )
    if target is None and preview.shared_volumes:
        raise BadInput(
            "feature.preview.shared_volumes needs a target whose volumes it names; remove it "
            "in targetless mode"
        )
    branches = db_branches(
        config.feature.db_branches,
        target,
        target_label=naming.target_label(target.kind, target.name) if target else "",
        copy_image=flags.db_copy_image,
    )
    service = ServiceSpec(
        target=target,
        namespace=namespace,
        image=image,
        replicas=flags.replicas or preview.replicas,
        env=EnvRules(
            include=env.include if isinstance(env.include, list) else None,
            exclude=env.exclude if isinstance(env.exclude, list) else None,
            # env_file values are overrides too (stored as secrets); the config's win.
            override={**from_env_file, **env.override},
        ),
        labels=LabelRules(
            include=list(preview.labels.include), exclude=list(preview.labels.exclude)
        ),
        incoming=config.feature.network.incoming,
        creation_timeout_secs=flags.timeout or preview.creation_timeout_secs,
        routing=flags.routing,
        share=share,
        volumes=preview.volumes,
        shared_volumes=list(dict.fromkeys(preview.shared_volumes)),
        files=files,
        cronjob=CronJobRules(
            schedule=preview.cronjob.schedule, trigger_on_start=preview.cronjob.trigger_on_start
        ),
        db_branches=branches,
        split_queues=split_queues,
    )
    return Request(service=service, ttl_seconds=ttl_seconds)
