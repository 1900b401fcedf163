"""Pulumi backend URLs, parsed once into a `Backend` value, and Pulumi's diy layout (pure).

Nothing here reads a file, the network or the environment: adapters.backend.resolve finds
the URL (flag, PULUMI_BACKEND_URL, `pulumi login`), makes a file backend's path absolute
and keeps its id; adapters.backend's stores read what the layout below names. Both entry
points (the CLI and `pulumi up`) parse through here, so objects made through either carry
the same owner label for the same stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from pydantic import BaseModel, ConfigDict

from preview_stack.checkpoints import STACK_SUFFIXES

SECRETS_PROVIDER_VAR = "PREVIEW_ENV_SECRETS_PROVIDER"
PASSPHRASE_VARS = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")
# Self-managed blob and database backends: stacks there need a real secrets manager.
SELF_MANAGED = ("postgres", "postgresql", "s3", "gs", "azblob")
# Pulumi v3.274's PostgreSQL backend lists stacks with 10 workers, each holding one pooled
# connection while asking for a second, from a pool of 2 x GOMAXPROCS: with 4 stacks or
# more on a 2-core machine `pulumi stack ls` hangs for ever (reproduced). One worker never
# waits on itself; listing stays O(1) processes, only slower per stack.
POSTGRES_LIST_PARALLEL = 1

# ---------------------------------------------------------------- Pulumi's diy layout
# Keys under a self-managed backend's root, the same in a directory, an S3 bucket (under
# its prefix) and a PostgreSQL table (under the database name): Pulumi's diy backends
# write all three through gocloud's blob API. Checked against Pulumi v3.274.
ORGANIZATION = "organization"  # the only organization of a diy backend
META = ".pulumi/meta.yaml"
STACKS = ".pulumi/stacks"
LOCKS = ".pulumi/locks"
# Beside Pulumi's own: who holds a lock (preview_stack.reaping.Holder), and a file
# backend's random id (adapters.backend.resolve.identity).
HOLDERS = ".pulumi/preview-env/holders"
BACKEND_ID_FILE = ".pulumi/preview-env-backend-id"


def stacks_folder(project: str) -> str:
    """Where the checkpoints of `project`'s stacks are: `<stack>.json[.gz|.zst]`."""
    return f"{STACKS}/{project}"


def checkpoint_keys(project: str, stack: str) -> list[str]:
    """Every name the checkpoint of `stack` may have (Pulumi writes one of them)."""
    return [f"{stacks_folder(project)}/{stack}{suffix}" for suffix in STACK_SUFFIXES]


def locks_folder(project: str, stack: str | None = None) -> str:
    """Where Pulumi keeps the lock objects of `stack` (`<id>.json`), or of every stack."""
    folder = f"{LOCKS}/{ORGANIZATION}/{project}"
    return f"{folder}/{stack}" if stack is not None else folder


def holders_folder(project: str, stack: str) -> str:
    """Where preview-env keeps the holder records of `stack`'s locks (`<id>.json`)."""
    return f"{HOLDERS}/{ORGANIZATION}/{project}/{stack}"


# ---------------------------------------------------------------- the Backend value
# Query parameters of Pulumi's s3:// URLs (gocloud.dev s3blob) with which the bucket is
# read here exactly as `pulumi` reads it (see S3Location.direct).
S3_DIRECT_PARAMS = {"endpoint", "region", "use_path_style", "s3ForcePathStyle"}
AWS_ENDPOINT = "s3.amazonaws.com"


class S3Location(BaseModel):
    """An `s3://bucket[/path]?endpoint=...&region=...` backend (gocloud's s3blob form:
    `endpoint`, `region`, `prefix`, `profile`, `disableSSL`, `use_path_style`)."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    prefix: str  # key prefix of the backend's root: "" or "some/path/"
    endpoint: str  # host[:port], as the client takes it
    secure: bool
    region: str | None
    profile: str | None
    # An explicit http(s) endpoint, path style and no other parameters: the layouts whose
    # checkpoints are read directly (with a region and AWS_* keys: adapters.backend.s3).
    direct: bool


class PostgresLocation(BaseModel):
    """A `postgres://` backend: Pulumi keeps each blob as a row (`key`, `data`) of its
    table (`table` parameter, default `pulumi_state`), keys prefixed with the database."""

    model_config = ConfigDict(frozen=True)

    user: str | None  # None: PGUSER, else postgres (adapters.backend.postgres)
    password: str | None
    host: str
    port: int
    dbname: str
    sslmode: str
    table: str
    prefix: str  # "" or "<database>/"

    @property
    def safe_table(self) -> bool:
        """Whether `table` can be written into SQL as it is (letters, digits, `_`, `.`)."""
        return self.table.replace("_", "").replace(".", "").isalnum()


class Backend(BaseModel):
    """A Pulumi backend URL parsed once, as Pulumi parses it; passed down from where the
    CLI or `pulumi up` resolved it."""

    model_config = ConfigDict(frozen=True)

    url: str  # as `pulumi` is given it, credentials included
    kind: str  # `file`, `cloud` (Pulumi Cloud over https), `postgres`, `s3`, `gs`, `azblob`...
    file_root: Path | None = None  # a `file://` backend's directory (absolute once resolved)
    s3: S3Location | None = None
    postgres: PostgresLocation | None = None

    @classmethod
    def parse(cls, url: str) -> Backend:
        kind = _kind(url)
        if url.lower().startswith("file://"):
            raw = url[len("file://") :].split("?", 1)[0]
            return cls(url=url, kind=kind, file_root=Path(raw or "."))
        if kind == "s3":
            return cls(url=url, kind=kind, s3=_s3(url))
        if kind == "postgres":
            return cls(url=url, kind=kind, postgres=_postgres(url))
        return cls(url=url, kind=kind)

    @property
    def redacted(self) -> str:
        """The URL without a password, for messages."""
        parsed = urlparse(self.url)
        if parsed.password:
            netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
            return parsed._replace(netloc=netloc).geturl()
        return self.url

    @property
    def url_identity(self) -> str:
        """What names a backend that is not a directory in owner labels: host, port, path
        and the parameters that select other data, never credentials (a file backend is
        named by the id it keeps: adapters.backend.resolve.identity)."""
        parsed = urlparse(self.url)
        host = (parsed.hostname or "").lower()
        port = f":{parsed.port}" if parsed.port else ""
        params = parse_qs(parsed.query)
        # Parameters that select other data; credentials and tuning parameters do not.
        significant = {k: params[k] for k in ("table", "endpoint", "prefix") if k in params}
        extra = "?" + "&".join(f"{k}={v[0]}" for k, v in sorted(significant.items()))
        return f"{self.kind}://{host}{port}{parsed.path.rstrip('/')}{extra if significant else ''}"


def _kind(url: str) -> str:
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        return "cloud"
    return "postgres" if scheme == "postgresql" else scheme


def _s3(url: str) -> S3Location:
    parsed = urlparse(url)
    params = parse_qs(parsed.query)
    one = {k: v[0] for k, v in params.items()}
    raw_endpoint = one.get("endpoint", "")
    endpoint = raw_endpoint or AWS_ENDPOINT
    secure = one.get("disableSSL", one.get("disable_https", "false")).lower() != "true"
    if "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
        secure = scheme.lower() == "https"
    prefix = "/".join(p.strip("/") for p in (parsed.path, one.get("prefix", "")) if p.strip("/"))
    path_style = one.get("use_path_style", one.get("s3ForcePathStyle", "")).lower() == "true"
    direct = (
        bool(parsed.netloc)
        and not set(params) - S3_DIRECT_PARAMS
        and all(len(v) == 1 for v in params.values())
        and path_style
        and raw_endpoint.startswith(("http://", "https://"))
    )
    return S3Location(
        bucket=parsed.netloc,
        prefix=f"{prefix}/" if prefix else "",
        endpoint=endpoint.rstrip("/"),
        secure=secure,
        region=one.get("region") or None,
        profile=one.get("profile"),
        direct=direct,
    )


def _postgres(url: str) -> PostgresLocation:
    parsed = urlparse(url)
    params = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    # Pulumi prefixes every key of a non-file backend with its URL's path (here the
    # database name): `postgres/.pulumi/locks/...`.
    path = parsed.path.strip("/")
    return PostgresLocation(
        user=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        host=parsed.hostname or "localhost",
        port=parsed.port or 5432,
        dbname=unquote(parsed.path.lstrip("/")) or "postgres",
        sslmode=params.get("sslmode", "require"),
        table=params.get("table", "pulumi_state"),
        prefix=f"{path}/" if path else "",
    )


# ---------------------------------------------------------------- secrets
def secrets_problem(backend: Backend, environ: Mapping[str, str]) -> str | None:
    """Why stacks on `backend` cannot be created or read safely with this environment, or
    None.

    An empty passphrase is fine for a private file backend. On a shared self-managed backend,
    a stack created with it could never be decrypted by CI or the reaper, which hold the
    team's real passphrase: refuse before touching anything.
    """
    if backend.kind not in SELF_MANAGED:
        return None
    if environ.get(SECRETS_PROVIDER_VAR):
        return None
    if any(environ.get(var) for var in PASSPHRASE_VARS):
        return None
    return (
        f"the shared backend {backend.redacted} needs a secrets manager: set "
        "PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) to your team's "
        f"passphrase, or {SECRETS_PROVIDER_VAR} to a KMS/Vault URL"
    )


def wrong_passphrase(pulumi_output: str) -> bool:
    """Whether Pulumi's output says the passphrase does not open the stack's secrets."""
    return "incorrect passphrase" in pulumi_output or "passphrase must be set" in pulumi_output


def wrong_passphrase_message(what: str) -> str:
    return (
        f"{what} were encrypted with another passphrase; set PULUMI_CONFIG_PASSPHRASE "
        "(or PULUMI_CONFIG_PASSPHRASE_FILE) to the team's one"
    )
