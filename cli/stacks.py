"""The only module that touches `pulumi.automation`: one stack per environment key.

Maps Pulumi's errors to ours; retries briefly when another update holds the lock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pulumi import automation as auto

from cli.context import Settings
from preview_stack import naming
from preview_stack.cluster import Cluster, ClusterTarget
from preview_stack.errors import BadInput, Busy, DeployFailed, Unreachable
from preview_stack.reaping import Lock, lock_is_stale
from preview_stack.spec import EnvironmentSpec

LOCK_WAIT_SECONDS = 20.0
EventHandler = Callable[[auto.EngineEvent], None]
OutputHandler = Callable[[str], None]


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


def file_backend_root(url: str) -> Path | None:
    """The directory of a `file://` backend, None for any other kind."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(parsed.path or url.removeprefix("file://")).expanduser()


def resolve_backend(flag: str | None) -> str:
    """--backend, else PULUMI_BACKEND_URL, else the logged-in backend, else a local dir."""
    url = flag or os.environ.get("PULUMI_BACKEND_URL") or logged_in_backend()
    if not url:
        url = f"file://{default_state_dir() / 'backend'}"
    path = file_backend_root(url)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(
                f"backend {url} cannot be created: {exc.strerror}; pass "
                "--backend file://<writable dir>"
            ) from None
        if not os.access(path, os.W_OK):
            raise BadInput(f"backend {url} is not writable; pass --backend file://<writable dir>")
    return url


class Stacks:
    """Stacks of the `preview-env` project in one backend, deploying to one cluster."""

    def __init__(self, backend: str, cluster: ClusterTarget, *, verbose: bool = False) -> None:
        self.backend = backend
        self.cluster = cluster
        self.verbose = verbose
        env = {
            "PULUMI_BACKEND_URL": backend,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
        }
        if (
            "PULUMI_CONFIG_PASSPHRASE" not in os.environ
            and "PULUMI_CONFIG_PASSPHRASE_FILE" not in os.environ
        ):
            env["PULUMI_CONFIG_PASSPHRASE"] = ""  # we keep no secrets in stack config
        if cluster.kubeconfig:
            env["KUBECONFIG"] = cluster.kubeconfig
        self.env_vars = env

    def _options(self) -> auto.LocalWorkspaceOptions:
        return auto.LocalWorkspaceOptions(
            env_vars=self.env_vars,
            project_settings=auto.ProjectSettings(
                name=naming.PROJECT,
                runtime="python",
                backend=auto.ProjectBackend(url=self.backend),
            ),
        )

    def _workspace(self) -> auto.LocalWorkspace:
        try:
            options = self._options()
            return auto.LocalWorkspace(
                env_vars=options.env_vars, project_settings=options.project_settings
            )
        except auto.CommandError as exc:
            raise Unreachable(
                f"the Pulumi backend {self.backend} failed: {_last_line(exc)}"
            ) from None

    def keys(self) -> dict[str, bool]:
        """Every environment key with a stack, mapped to whether an update is running."""
        try:
            summaries = self._workspace().list_stacks()
        except auto.CommandError as exc:
            raise Unreachable(f"cannot list stacks in {self.backend}: {_last_line(exc)}") from None
        return {s.name: bool(s.update_in_progress) for s in summaries}

    def _stack(self, key: str, declare: Callable[[], object], *, create: bool) -> auto.Stack:
        def program() -> None:
            declare()

        try:
            if create:
                stack = auto.create_or_select_stack(
                    stack_name=key,
                    project_name=naming.PROJECT,
                    program=program,
                    opts=self._options(),
                )
            else:
                stack = auto.select_stack(
                    stack_name=key,
                    project_name=naming.PROJECT,
                    program=program,
                    opts=self._options(),
                )
        except auto.StackNotFoundError:
            raise
        except auto.CommandError as exc:
            raise Unreachable(
                f"the Pulumi backend {self.backend} failed: {_last_line(exc)}"
            ) from None
        if self.cluster.context:
            stack.set_config("kubernetes:context", auto.ConfigValue(self.cluster.context))
        return stack

    def outputs(self, key: str) -> EnvironmentSpec | None:
        """The spec a stack last deployed (backend copy), or None."""
        try:
            stack = self._stack(key, _noop, create=False)
        except auto.StackNotFoundError:
            return None
        raw: Any = stack.outputs().get("spec")
        if raw is None:
            return None
        return EnvironmentSpec.model_validate(raw.value)

    def up(
        self,
        key: str,
        program: Callable[[], object],
        *,
        on_event: EventHandler,
        on_output: OutputHandler,
        lock_wait: float = LOCK_WAIT_SECONDS,
    ) -> None:
        stack = self._stack(key, program, create=True)
        self._with_lock_retry(
            key,
            lambda: stack.up(on_event=on_event, on_output=on_output, color="never"),
            lock_wait=lock_wait,
        )

    def destroy(
        self,
        key: str,
        *,
        on_event: EventHandler,
        on_output: OutputHandler,
        lock_wait: float = LOCK_WAIT_SECONDS,
        stale_lock_after: float | None = None,
        attempts: int = 3,
    ) -> bool:
        """Refresh, destroy and remove the stack; False when there was none.

        Resources already deleted by hand are fine (refresh first). A lock whose holder is
        gone is recovered when `stale_lock_after` is given (rule in preview_stack.reaping).
        Other failures are retried with backoff.
        """
        try:
            stack = self._stack(key, _noop, create=False)
        except auto.StackNotFoundError:
            return False
        delay = 2.0
        for attempt in range(1, attempts + 1):
            try:
                self._with_lock_retry(
                    key,
                    lambda: stack.destroy(
                        on_event=on_event, on_output=on_output, refresh=True, color="never"
                    ),
                    lock_wait=lock_wait,
                )
                break
            except Busy:
                if stale_lock_after is None or not self.recover(key, stale_lock_after):
                    raise
            except DeployFailed:
                if attempt == attempts:
                    raise
                time.sleep(delay)
                delay *= 2
        stack.workspace.remove_stack(key)
        return True

    # ------------------------------------------------------------------ lock recovery
    def _lock_dir(self, key: str) -> Path | None:
        root = file_backend_root(self.backend)
        if root is None:
            return None  # only the file backend's lock files are readable from here
        return root / ".pulumi" / "locks" / "organization" / naming.PROJECT / key

    def locks(self, key: str) -> list[Lock]:
        directory = self._lock_dir(key)
        if directory is None or not directory.is_dir():
            return []
        found = []
        for path in directory.glob("*.json"):
            try:
                data = json.loads(path.read_text())
                stamp = dt.datetime.fromisoformat(str(data["timestamp"]).replace("Z", "+00:00"))
                found.append(
                    Lock(
                        pid=int(data["pid"]),
                        hostname=str(data["hostname"]),
                        timestamp=stamp,
                        path=str(path),
                    )
                )
            except (OSError, ValueError, KeyError):
                continue
        return found

    def recover(self, key: str, stale_after: float) -> bool:
        """Drop stale locks and the pending operations a killed update left; True if done."""
        now = dt.datetime.now(dt.UTC)
        host = socket.gethostname()
        held = self.locks(key)
        stale = [
            lock
            for lock in held
            if lock_is_stale(
                lock, now=now, this_host=host, pid_alive=_pid_alive, threshold_seconds=stale_after
            )
        ]
        if not stale or len(stale) != len(held):
            return False
        for lock in stale:
            Path(lock.path).unlink(missing_ok=True)
        stack = self._stack(key, _noop, create=False)
        exported = stack.export_stack()
        deployment = dict(exported.deployment or {})
        if deployment.get("pending_operations"):
            deployment["pending_operations"] = []
            stack.import_stack(auto.Deployment(version=exported.version, deployment=deployment))
        return True

    def _with_lock_retry(
        self, key: str, action: Callable[[], object], *, lock_wait: float = LOCK_WAIT_SECONDS
    ) -> None:
        deadline = time.monotonic() + lock_wait
        while True:
            try:
                action()
                return
            except auto.ConcurrentUpdateError:
                if time.monotonic() >= deadline:
                    raise Busy(
                        f"environment {key!r} is being updated by someone else (its stack is "
                        f"locked); retry later, or check `preview-env status -k {key}`"
                    ) from None
                time.sleep(2)
            except auto.CommandError as exc:
                raise DeployFailed(f"pulumi failed for {key!r}: {_summary(exc)}") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _noop() -> None:
    return None


def _last_line(exc: auto.CommandError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["unknown error"])[-1]


_GENERIC = ("update failed", "destroy failed", "Resource monitor has terminated", "preview failed")


def _summary(exc: auto.CommandError) -> str:
    """The distinct, specific error messages of a failed pulumi run, shortened."""
    found: list[str] = []
    for line in str(exc).splitlines():
        if "error:" not in line:
            continue
        message = line.rsplit("error: ", 1)[-1].strip()
        message = re.sub(r'"urn:pulumi:[^"]*::([^"]+)"', r"\1", message)
        if message and not message.startswith(_GENERIC) and message not in found:
            found.append(message)
    text = "; ".join(found) if found else _last_line(exc)
    return text if len(text) <= 400 else text[:397] + "..."


def connect(settings: Settings) -> tuple[Cluster, Stacks]:
    """The cluster and the backend every command works with, from the global options."""
    cluster = Cluster(ClusterTarget(settings.kubeconfig, settings.context))
    stacks = Stacks(resolve_backend(settings.backend), cluster.target, verbose=settings.verbose)
    return cluster, stacks
