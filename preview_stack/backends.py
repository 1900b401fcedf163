"""Pulumi backend URLs: parsed as Pulumi parses them, identified, and checked for secrets.

Shared by both entry points (the CLI and `pulumi up`), so objects made through either carry
the same owner label for the same stack.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from preview_stack.errors import BadInput

BACKEND_ID_FILE = ".pulumi/preview-env-backend-id"
SECRETS_PROVIDER_VAR = "PREVIEW_ENV_SECRETS_PROVIDER"
PASSPHRASE_VARS = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")
# Self-managed blob and database backends: stacks there need a real secrets manager.
SELF_MANAGED = ("postgres", "postgresql", "s3", "gs", "azblob")
# Pulumi v3.274's PostgreSQL backend lists stacks with 10 workers, each holding one pooled
# connection while asking for a second, from a pool of 2 x GOMAXPROCS: with 4 stacks or
# more on a 2-core machine `pulumi stack ls` hangs for ever (reproduced). One worker never
# waits on itself; listing stays O(1) processes, only slower per stack.
POSTGRES_LIST_PARALLEL = 1


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "preview-env"


def logged_in_backend() -> str | None:
    """The backend `pulumi login` chose, from PULUMI_HOME's credentials file."""
    home = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")
    try:
        current = json.loads((home / "credentials.json").read_text()).get("current")
    except (OSError, ValueError):
        return None
    return str(current) if current else None


def kind(url: str) -> str:
    """`file`, `cloud` (Pulumi Cloud over https), `postgres`, `s3`, `gs`, `azblob`, ..."""
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        return "cloud"
    return "postgres" if scheme == "postgresql" else scheme


def file_backend_root(url: str) -> Path | None:
    """The directory of a `file://` backend as Pulumi reads it (`~` expanded, a relative path
    taken from the working directory, query parameters dropped); None for other kinds."""
    if not url.lower().startswith("file://"):
        return None
    raw = url[len("file://") :].split("?", 1)[0]
    return Path(raw or ".").expanduser().resolve()


def resolve(flag: str | None) -> str:
    """--backend, else PULUMI_BACKEND_URL, else the logged-in backend, else a local dir.

    File backends come back absolute (Pulumi runs inline programs from a temporary
    directory, so a relative path would point elsewhere), created and private (0700).
    """
    url = flag or os.environ.get("PULUMI_BACKEND_URL") or logged_in_backend()
    default = not url
    if not url:
        url = f"file://{default_state_dir() / 'backend'}"
    path = file_backend_root(url)
    if path is None:
        return url
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if default:  # ours: private even if an older version created it readable
            path.parent.chmod(0o700)
            path.chmod(0o700)
    except OSError as exc:
        raise BadInput(
            f"backend {url} cannot be created: {exc.strerror}; pass --backend file://<writable dir>"
        ) from None
    if not os.access(path, os.W_OK):
        raise BadInput(f"backend {url} is not writable; pass --backend file://<writable dir>")
    query = url.split("?", 1)[1] if "?" in url else ""
    return f"file://{path}" + (f"?{query}" if query else "")


def identity(url: str) -> str:
    """What names this backend in owner labels: the same for every client of one backend,
    different for two backends, never containing credentials.

    File backends get a random id kept in the backend itself: two laptops' backends at the
    same path are different backends, one shared directory is one backend.
    """
    root = file_backend_root(url)
    if root is not None:
        marker = root / BACKEND_ID_FILE
        try:
            return f"file:{marker.read_text().strip()}"
        except OSError:
            pass
        marker.parent.mkdir(parents=True, exist_ok=True)
        candidate = marker.with_name(f"{marker.name}.{uuid.uuid4().hex}")
        candidate.write_text(uuid.uuid4().hex)
        try:
            os.link(candidate, marker)  # atomic: the first writer's id wins
        except FileExistsError:
            pass
        finally:
            candidate.unlink(missing_ok=True)
        return f"file:{marker.read_text().strip()}"
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    port = f":{parsed.port}" if parsed.port else ""
    params = parse_qs(parsed.query)
    # Parameters that select other data; credentials and tuning parameters do not.
    significant = {k: params[k] for k in ("table", "endpoint", "prefix") if k in params}
    extra = (
        "?" + "&".join(f"{k}={v[0]}" for k, v in sorted(significant.items())) if significant else ""
    )
    return f"{kind(url)}://{host}{port}{parsed.path.rstrip('/')}{extra}"


def secrets_problem(url: str, environ: dict[str, str] | os._Environ[str]) -> str | None:
    """Why stacks on `url` cannot be created or read safely with this environment, or None.

    An empty passphrase is fine for a private file backend. On a shared self-managed backend,
    a stack created with it could never be decrypted by CI or the reaper, which hold the
    team's real passphrase: refuse before touching anything.
    """
    if kind(url) not in SELF_MANAGED:
        return None
    if environ.get(SECRETS_PROVIDER_VAR):
        return None
    if any(environ.get(var) for var in PASSPHRASE_VARS):
        return None
    return (
        f"the shared backend {redact(url)} needs a secrets manager: set "
        "PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) to your team's "
        f"passphrase, or {SECRETS_PROVIDER_VAR} to a KMS/Vault URL"
    )


def redact(url: str) -> str:
    """`url` without a password, for messages."""
    parsed = urlparse(url)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return parsed._replace(netloc=netloc).geturl()
    return url


def wrong_passphrase(pulumi_output: str) -> bool:
    """Whether Pulumi's output says the passphrase does not open the stack's secrets."""
    return "incorrect passphrase" in pulumi_output or "passphrase must be set" in pulumi_output


def wrong_passphrase_message(what: str) -> str:
    return (
        f"{what} were encrypted with another passphrase; set PULUMI_CONFIG_PASSPHRASE "
        "(or PULUMI_CONFIG_PASSPHRASE_FILE) to the team's one"
    )
