"""The Automation API adapter (`pulumi.automation`): one stack per environment key.

Every change of an environment is `apply(key, change)`: the inline program reads the
latest spec from the backend while the engine holds the stack's lock, applies the pure
change (preview_stack.changes) and declares the result. Maps Pulumi's errors to ours.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import importlib
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console

from adapters.backend.checkpoints import CheckpointStore, UnknownStackFile
from adapters.backend.files import FileStore
from adapters.backend.latest import read_latest_spec
from adapters.backend.locks import LockStore, here, our_holder, start_time_of
from adapters.backend.resolve import default_state_dir, identity, resolve
from adapters.backend.stores import Store, open_store
from adapters.k8s.cluster import Cluster, ClusterTarget
from adapters.settings import Settings
from preview_stack import backends, checkpoints, naming
from preview_stack.backends import Backend
from preview_stack.changes import (
    Applied,
    Change,
    DestroyAll,
    Rerouted,
    Unrouted,
    may_drop_targets,
)
from preview_stack.changes import apply as apply_change
from preview_stack.errors import BadInput, Busy, DeployFailed, NotFound, PreviewError, Unreachable
from preview_stack.objects import EnvironmentObjects, derive_environment, with_record_of
from preview_stack.reaping import (
    DEFAULT_STALE_LOCK_SECONDS,
    Lock,
    holder_from_json,
    lock_from_json,
    lock_is_stale,
    parse_locks,
)
from preview_stack.spec import EnvironmentSpec
from preview_stack.status import Unfinished, unfinished_from


class LazyModule(ModuleType):
    """Module `name`, imported on first attribute access: Pulumi's Automation API (with
    grpc and protobuf) costs about half a second of start-up that `status` never needs."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.__name__), attr)


if TYPE_CHECKING:  # the program (pulumi_kubernetes) is imported when an update runs
    from pulumi import automation as auto

    from preview_stack.objects import TargetReader
else:  # and the Automation API when a `pulumi` process is first needed: not by `status`
    auto = LazyModule("pulumi.automation")

LOCK_WAIT_SECONDS = float(os.environ.get("PREVIEW_ENV_LOCK_WAIT", "300"))
# Backend reads at once for `status` and `reap` when a stack's checkpoint cannot be read
# directly (one `pulumi stack output` each).
SPEC_READS_AT_ONCE = 8
EventHandler = Callable[["auto.EngineEvent"], None]
T = TypeVar("T")
OutputHandler = Callable[[str], None]
# Warnings go to stderr as the CLI's own do (cli.context.err_console).
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def route_drain_seconds() -> float:
    """How long a removed route may still be served (PREVIEW_ENV_ROUTE_DRAIN, default 5 s):
    Traefik applies provider changes at most every 2 s (providersThrottleDuration), then
    reloads; other controllers are alike."""
    return float(os.environ.get("PREVIEW_ENV_ROUTE_DRAIN", "5"))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class Stacks:
    """Stacks of the `preview-env` project in one backend, deploying to one cluster."""

    def __init__(self, backend: Backend, cluster: ClusterTarget, *, verbose: bool = False) -> None:
        self.backend = backend
        self.cluster = cluster
        self.verbose = verbose
        problem = backends.secrets_problem(backend, os.environ)
        if problem:
            raise BadInput(problem)
        env = {
            "PULUMI_BACKEND_URL": backend.url,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
        }
        if not any(os.environ.get(v) for v in backends.PASSPHRASE_VARS) and not os.environ.get(
            backends.SECRETS_PROVIDER_VAR
        ):
            # Only reached for private backends (file, Pulumi Cloud): see secrets_problem.
            env["PULUMI_CONFIG_PASSPHRASE"] = ""
        if cluster.kubeconfig:
            env["KUBECONFIG"] = cluster.kubeconfig
        if backend.kind == "postgres" and "PULUMI_DIY_BACKEND_PARALLEL" not in os.environ:
            env["PULUMI_DIY_BACKEND_PARALLEL"] = str(backends.POSTGRES_LIST_PARALLEL)
        self.env_vars = env
        if backend.kind == "file":
            # State files hold encrypted secrets and plain specs: private to this user,
            # whatever the shell's umask (the `pulumi` processes inherit ours).
            os.umask(0o077)
        self._identity: str | None = None
        self._unfinished: dict[str, Unfinished] = {}
        self._kube: Cluster | None = None
        # One client of the backend's store for its checkpoints and its lock files.
        self.store: Store | None = open_store(backend, naming.PROJECT)
        self.checkpoints: CheckpointStore | None = self.store.checkpoints() if self.store else None
        # Keys whose dead holder's lock we took over: its update may have created objects
        # it never recorded; the next update removes them under the lock.
        self._orphans_possible: set[str] = set()
        self._warned_unknown = False

    # ------------------------------------------------------------------ identity
    def stack_id(self, key: str) -> str:
        """The owner label value of this backend's stack `key` (see naming.LABEL_STACK)."""
        if self._identity is None:
            self._identity = identity(self.backend)
        return naming.stack_identity(self._identity, key)

    # ------------------------------------------------------------------ workspace
    def _options(self) -> auto.LocalWorkspaceOptions:
        return auto.LocalWorkspaceOptions(
            env_vars=self.env_vars,
            pulumi_command=_pulumi_command(),
            secrets_provider=os.environ.get(backends.SECRETS_PROVIDER_VAR) or None,
            project_settings=auto.ProjectSettings(
                name=naming.PROJECT,
                runtime="python",
                backend=auto.ProjectBackend(url=self.backend.url),
            ),
        )

    def _workspace(self) -> auto.LocalWorkspace:
        try:
            options = self._options()
            return auto.LocalWorkspace(
                env_vars=options.env_vars,
                project_settings=options.project_settings,
                pulumi_command=options.pulumi_command,
            )
        except auto.CommandError as exc:
            raise self._backend_error(exc) from None

    def _retrying(self, call: Callable[[], T], what: str | None = None) -> T:
        """`call` (a backend read or stack selection), tried again while the backend shows a
        momentary condition (see `_transient`); other Pulumi errors become ours. A missing
        stack (StackNotFoundError) is left to the caller."""
        for attempt in range(5):
            try:
                return call()
            except auto.StackNotFoundError:
                raise
            except auto.CommandError as exc:
                if not _transient(exc) or attempt == 4:
                    raise self._backend_error(exc, what) from None
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def _listed(self) -> dict[str, bool] | None:
        """The checkpoint store's listing; None without a store or when it fails (then
        `pulumi` answers). A file the store cannot name the stack of is said once on stderr:
        `pulumi` lists what it knows, and nothing is skipped in silence."""
        if self.checkpoints is None:
            return None
        try:
            return self.checkpoints.stacks()
        except UnknownStackFile as exc:
            if not self._warned_unknown:
                self._warned_unknown = True
                err_console.print(f"warning: {exc}; asking `pulumi` instead", markup=False)
            return None
        except OSError:
            return None

    def _removed(self, key: str, exc: auto.CommandError) -> bool:
        """Whether the failed `pulumi` command `exc` on stack `key` failed because the stack
        is gone, whatever it said. Pulumi says "no stack named" only when the stack is
        missing as a command selects it; one removed after that (a teammate's `clean` or
        the reaper, between `pulumi up`'s selection and its lock) makes the self-managed
        backends fail otherwise: `up` panics on a nil stack (pkg/backend/diy/state.go
        getTarget, Pulumi v3.274), `stack rm` and `stack export` fail reading a missing
        checkpoint. So the backend is asked afresh: the checkpoint store's listing, else
        `pulumi stack select` (file, S3, PostgreSQL and Pulumi Cloud alike)."""
        if "no stack named" in str(exc):
            return True
        listed = self._listed()
        if listed is not None:
            return key not in listed
        try:
            self._stack(key, _noop, "select")
        except auto.StackNotFoundError:
            return True
        except auto.CommandError:
            return False  # the backend cannot tell: the original error stands
        return False

    def environments(self) -> dict[str, bool]:
        """Every environment key with a stack, mapped to whether an update is running: the
        checkpoint store's listing (its lock files), else one `pulumi stack ls`. Platform
        stacks (naming.platform_stack) are no environments: `platform_stacks` lists them."""
        return {
            name: busy
            for name, busy in self._all_stacks().items()
            if naming.platform_stack_parts(name) is None
        }

    def platform_stacks(self, kind: str) -> list[str]:
        """The names of this backend's platform stacks of `kind` (`waypoint`, `queue`)."""
        return sorted(
            name
            for name in self._all_stacks()
            if (parts := naming.platform_stack_parts(name)) and parts[0] == kind
        )

    def _all_stacks(self) -> dict[str, bool]:
        listed = self._listed()
        if listed is not None:
            return listed
        summaries = self._retrying(
            lambda: self._workspace().list_stacks(), f"cannot list stacks in {self._shown}"
        )
        return {s.name.rsplit("/", 1)[-1]: bool(s.update_in_progress) for s in summaries}

    def apply_platform(
        self,
        name: str,
        program: Callable[[], None],
        *,
        on_event: EventHandler,
        on_output: OutputHandler,
        lock_wait: float = LOCK_WAIT_SECONDS,
    ) -> None:
        """Deploy platform stack `name` (naming.platform_stack) from `program`, creating
        it when missing, under its lock. Raises Busy, DeployFailed or the program's
        PreviewError (re-raised as is, so a refusal keeps its own message and exit code)."""
        assert naming.platform_stack_parts(name), name
        errors: list[PreviewError] = []

        def guarded() -> None:
            try:
                program()
            except PreviewError as exc:
                errors.append(exc)
                raise

        stack = self._create_or_select(name, guarded)
        try:
            self._up_locked(stack, on_event, on_output, lock_wait)
        except DeployFailed:
            if errors:
                raise errors[0] from None
            raise

    def destroy_platform(
        self,
        name: str,
        *,
        on_event: EventHandler,
        on_output: OutputHandler,
        program: Callable[[], None] | None = None,
        lock_wait: float = LOCK_WAIT_SECONDS,
    ) -> bool:
        """Remove every object of platform stack `name`, then the stack; False when gone.
        `program` declares nothing but may register the delete hooks its objects name."""
        assert naming.platform_stack_parts(name), name
        try:
            stack = self._select(name, program or _noop)
            self._up_locked(stack, on_event, on_output, lock_wait)
        except NotFound:
            return False
        self.remove_if_empty(name)
        return True

    def _up_locked(
        self,
        stack: auto.Stack,
        on_event: EventHandler,
        on_output: OutputHandler,
        lock_wait: float,
    ) -> None:
        """`pulumi up` of a platform stack under its lock (no stale-lock takeover)."""

        def up() -> None:
            stack.up(on_event=on_event, on_output=on_output, color="never")

        self._locked(stack.name, up, lock_wait=lock_wait, stale_lock_after=None)

    def lock_store(self) -> LockStore | None:
        """The backend's lock objects (adapters.backend.stores); None for Pulumi Cloud."""
        return self.store

    def lock_holders(self, key: str) -> list[Lock]:
        """Who holds `key`'s lock, read without taking or touching anything: Pulumi keeps
        each lock as `.pulumi/locks/<org>/<project>/<stack>/<id>.json` (pid, user, host,
        time) in a file, S3 or PostgreSQL backend alike (adapters.backend.stores: one listing).
        Pulumi Cloud, or a store that cannot be read, gives an empty list: the state then
        says only that the stack is locked (a `pulumi` operation that would make the engine
        name the holder takes the lock when it is free, which a read-only `status` must
        never do)."""
        store = self.lock_store()
        if store is None:
            return []
        try:
            found = store.locks(key)
        except Exception:  # any client's error: the holder stays unnamed
            return []
        return [lock for _name, where, text in found if (lock := lock_from_json(text, where))]

    def unfinished(self, key: str) -> Unfinished:
        """What the backend holds for `key` when it has no committed spec: its state's
        objects (`pulumi stack export`, secrets left encrypted) and its last update's result
        (`pulumi stack history`). Read-only; only called for such stacks. Unreadable parts
        count as nothing (the state is then `orphaned`, as before)."""
        if key in self._unfinished:
            return self._unfinished[key]
        stack = f"{self._organization()}/{naming.PROJECT}/{key}"
        cwd = self._workspace().work_dir

        def read(*args: str) -> object:
            pulumi = shutil.which("pulumi") or "pulumi"
            done = subprocess.run(
                [pulumi, *args, "--stack", stack, "--non-interactive"],
                capture_output=True,
                text=True,
                env={**os.environ, **self.env_vars},
                cwd=cwd,
                check=False,
            )
            try:
                return json.loads(done.stdout) if done.returncode == 0 else None
            except ValueError:
                return None

        found = unfinished_from(
            read("stack", "history", "--json", "--page-size", "1"), read("stack", "export")
        )
        self._unfinished[key] = found
        return found

    def owner(self, key: str, spec: EnvironmentSpec | PreviewError | None) -> str | None:
        """Whose environment `key` is: its spec's owner; for a stack without a committed
        spec (a kept failed first start), the owner its objects were declared with."""
        if isinstance(spec, EnvironmentSpec):
            return spec.owner
        if spec is None:
            return self.unfinished(key).owner
        return None

    @property
    def _shown(self) -> str:
        return self.backend.redacted

    def _backend_error(self, exc: auto.CommandError, what: str | None = None) -> PreviewError:
        if backends.wrong_passphrase(str(exc)):
            return Unreachable(backends.wrong_passphrase_message(f"the stacks in {self._shown}"))
        return Unreachable(
            f"{what or f'the Pulumi backend {self._shown} failed'}: {_last_line(exc)}"
        )

    def _stack(self, key: str, program: Callable[[], None], mode: str) -> auto.Stack:
        """Stack `key` of an inline `program` (as auto.select_stack/create_stack make it)."""
        options = self._options()
        options.program = program
        assert options.project_settings is not None
        options.project_settings.main = os.getcwd()
        return _stack_class()(key, auto.LocalWorkspace(**options.__dict__), mode)

    def _select(self, key: str, program: Callable[[], None]) -> auto.Stack:
        """The existing stack `key`; NotFound when this backend has none. Where the
        checkpoint store shows the stack, `pulumi stack select` is skipped (every command
        names its stack; one removed meanwhile makes the update say NotFound)."""
        listed = self._listed()
        if listed is not None and key in listed:
            stack = self._stack(key, program, _KNOWN)
            self._configure(stack)
            return stack
        try:
            stack = self._retrying(lambda: self._stack(key, program, "select"))
        except auto.StackNotFoundError:
            raise NotFound(f"no environment {key!r} in this backend") from None
        self._configure(stack)
        return stack

    def _create_or_select(self, key: str, program: Callable[[], None]) -> auto.Stack:
        """Select `key`, creating it if needed; a racing creator's stack is simply selected.

        Creating takes the stack's lock in Pulumi's self-managed backends, so a creation that
        meets a teammate's creation or removal waits a moment and looks again.
        """
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        # Where the store shows no such stack, `pulumi stack init` comes first.
        listed = self._listed()
        create_first = listed is not None and key not in listed
        while True:
            if not create_first:
                try:
                    return self._select(key, program)
                except NotFound:
                    pass
            create_first = False
            try:
                stack = self._stack(key, program, "create")
            except auto.StackAlreadyExistsError:
                continue  # another first start created it a moment ago: select it
            except auto.CommandError as exc:
                if "already exists" in str(exc):
                    continue
                if not _transient(exc) or time.monotonic() >= deadline:
                    raise self._backend_error(exc) from None
                time.sleep(0.5)
                continue
            self._configure(stack)
            return stack

    def _configure(self, stack: auto.Stack) -> None:
        if self.cluster.context:
            stack.set_config("kubernetes:context", auto.ConfigValue(self.cluster.context))

    def specs(
        self, keys: Iterable[str], parallel: int = SPEC_READS_AT_ONCE
    ) -> dict[str, EnvironmentSpec | PreviewError | None]:
        """The latest spec of each stack, read from the backend (the authority; records in
        the cluster are never trusted): its redacted `publicSpec` straight from the
        checkpoint where it can, else `pulumi stack output`, several at once. A stack that
        cannot be read maps to its error; an emptied one (or one whose first update is
        running) to None."""
        found: dict[str, EnvironmentSpec | PreviewError | None] = {}
        rest = []
        ordered = sorted(set(keys))
        # Files are read one after the other (no I/O wait to overlap); S3 reads at once.
        workers = (
            1 if isinstance(self.checkpoints, FileStore) else max(1, min(parallel, len(ordered)))
        )
        with ThreadPoolExecutor(workers) as pool:
            read = pool.map(lambda k: self._from_checkpoint(k, checkpoints.public_spec), ordered)
            pairs = list(zip(ordered, read, strict=True))
        for key, known in pairs:
            if isinstance(known, checkpoints.Unreadable):
                rest.append(key)
            else:
                found[key] = known
        return {**found, **self._specs_from_pulumi(rest, parallel)}

    def _from_checkpoint(
        self,
        key: str,
        pick: Callable[[dict[str, Any]], EnvironmentSpec | checkpoints.Unreadable | None],
    ) -> EnvironmentSpec | checkpoints.Unreadable | None:
        """`pick` of stack `key`'s outputs read from its checkpoint, without `pulumi`."""
        if self.checkpoints is None:
            return checkpoints.UNREADABLE
        try:
            raw = self.checkpoints.read(key)
        except OSError:
            return checkpoints.UNREADABLE
        if raw is None:
            return checkpoints.UNREADABLE  # gone, or never there: pulumi says which
        outputs = checkpoints.stack_outputs(raw)
        return outputs if isinstance(outputs, checkpoints.Unreadable) else pick(outputs)

    def _specs_from_pulumi(
        self, keys: list[str], parallel: int
    ) -> dict[str, EnvironmentSpec | PreviewError | None]:
        """Today's path, one `pulumi stack output` per stack."""
        if not keys:
            return {}
        organization, work_dir = self._organization(), self._workspace().work_dir

        def read(key: str) -> EnvironmentSpec | PreviewError | None:
            try:
                return read_latest_spec(
                    key, organization=organization, env=self.env_vars, cwd=work_dir
                )
            except PreviewError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(keys)))) as pool:
            return dict(zip(keys, pool.map(read, keys), strict=True))

    def _organization(self) -> str:
        return backends.ORGANIZATION if self.backend.kind != "cloud" else self._cloud_org()

    def _cloud_org(self) -> str:
        whoami = self._workspace().who_am_i()
        return whoami.user

    # ------------------------------------------------------------------ changes
    def apply(
        self,
        key: str,
        change: Change,
        reader: TargetReader,
        *,
        on_event: EventHandler,
        on_output: OutputHandler,
        create: bool = True,
        refresh: bool = False,
        lock_wait: float = LOCK_WAIT_SECONDS,
        stale_lock_after: float | None = DEFAULT_STALE_LOCK_SECONDS,
    ) -> Applied:
        """Apply `change` (see `_apply`), draining routes first: when the key owns routes, a
        first update switches off those of the targets the change drops (`Unrouted`), and
        the change follows `route_drain_seconds()` later, so no request meets a route whose
        preview is gone. A change refused after the drain restores the routes."""
        options: dict[str, Any] = {
            "on_event": on_event,
            "on_output": on_output,
            "refresh": refresh,
            "lock_wait": lock_wait,
            "stale_lock_after": stale_lock_after,
        }
        unrouted = Unrouted(change)
        if may_drop_targets(change) and self._owns_routes(key):
            with contextlib.suppress(NotFound):  # no stack: the change says what it means
                self._apply(key, unrouted, reader, create=False, **options)
            if unrouted.dropped:
                time.sleep(route_drain_seconds())
        try:
            return self._apply(key, change, reader, create=create, **options)
        except PreviewError as exc:
            if unrouted.dropped and not isinstance(exc, NotFound):
                self._apply(key, Rerouted(tuple(unrouted.dropped)), reader, create=False, **options)
            raise

    def _owns_routes(self, key: str) -> bool:
        """Whether stack `key` has routes in the cluster (one list per route kind); True
        when the cluster cannot say (an extra update costs less than a dropped request)."""
        try:
            return bool(self._cluster().routes(key=key, stack_id=self.stack_id(key)))
        except PreviewError:
            return True

    def _cluster(self) -> Cluster:
        """The cluster's client, made on first use (most commands never need it here)."""
        if self._kube is None:
            self._kube = Cluster(self.cluster)
        return self._kube

    def _apply(
        self,
        key: str,
        change: Change,
        reader: TargetReader,
        *,
        on_event: EventHandler,
        on_output: OutputHandler,
        create: bool = True,
        refresh: bool = False,
        lock_wait: float = LOCK_WAIT_SECONDS,
        stale_lock_after: float | None = DEFAULT_STALE_LOCK_SECONDS,
    ) -> Applied:
        """Apply `change` to the latest spec under the stack's lock and deploy the result.

        A change that leaves nothing also removes, under the lock, this stack's objects that
        no state records, and then the emptied stack (`remove_if_empty`).
        Raises the change's own PreviewError (nothing deployed), Busy when the lock stays
        held, DeployFailed (its `applied` set) when the deploy fails.
        """
        stack_id = self.stack_id(key)
        # A stack removed between its selection (or creation) and the update is created
        # again when `create` is set, as often as a teammate's `clean` or the reaper removes
        # it meanwhile (a clean, then the reaper removing the empty stack just created),
        # until the lock wait is over. Pulumi does not always say so (see `_removed`).
        recreate_until = time.monotonic() + max(lock_wait, 60.0)
        reselected = False
        while True:
            applied = Applied()
            workdir: list[str] = []  # the workspace's directory (its Pulumi.yaml names it)
            ran: list[bool] = []  # set when the engine runs the program

            def program(
                applied: Applied = applied, workdir: list[str] = workdir, ran: list[bool] = ran
            ) -> None:
                ran.append(True)
                applied.error = None
                try:
                    before = self._latest(key, workdir[0] if workdir else None)
                    applied.before = before
                    after = applied.after = apply_change(change, key, before, _now())
                    objects = None if after is None else derive_environment(after, reader, stack_id)
                    if isinstance(change, Unrouted) and objects is not None and before:
                        objects = with_record_of(objects, before, stack_id)
                    applied.objects = objects
                    if after is None or key in self._orphans_possible:
                        self._sweep_orphans(key, before, after, objects, stack_id)
                    from adapters.program import declare

                    declare(after, objects)
                except PreviewError as exc:
                    applied.error = exc
                    raise

            stack = self._create_or_select(key, program) if create else self._select(key, program)
            workdir.append(stack.workspace.work_dir)

            def up(stack: auto.Stack = stack) -> None:
                stack.up(on_event=on_event, on_output=on_output, color="never", refresh=refresh)

            try:
                self._locked(key, up, lock_wait=lock_wait, stale_lock_after=stale_lock_after)
            except DeployFailed as exc:
                if applied.error is not None:
                    raise applied.error from None
                if not ran and not reselected:
                    # Failed before its program ran: nothing was deployed. The stack may
                    # have been removed after its selection and created again by a
                    # teammate's start before `_removed` looked: select it afresh, once.
                    reselected = True
                    continue
                exc.applied = applied
                raise
            except NotFound:
                if create and time.monotonic() < recreate_until:
                    continue
                raise
            if applied.after is None:
                self.remove_if_empty(key)
            return applied

    def _latest(self, key: str, cwd: str | None) -> EnvironmentSpec | None:
        """Under the lock (called by the program): the spec last deployed, from the
        checkpoint when nothing of it is secret, else `pulumi stack output --show-secrets`."""
        known = self._from_checkpoint(key, checkpoints.full_spec)
        if not isinstance(known, checkpoints.Unreadable):
            return known
        import pulumi

        return read_latest_spec(
            key, organization=pulumi.get_organization(), env=self.env_vars, cwd=cwd
        )

    def _sweep_orphans(
        self,
        key: str,
        before: EnvironmentSpec | None,
        env: EnvironmentSpec | None,
        objects: EnvironmentObjects | None,
        stack_id: str,
    ) -> None:
        """Under the lock: delete this stack's objects that the update will not declare
        (a killed update's unrecorded creates; recorded ones Pulumi deletes anyway). Only
        under the lock: a teammate's start that re-creates the key later gets the same
        stack id, and its objects must never be swept."""
        keep = set()
        if objects is not None:
            for manifest in objects.manifests:
                meta = manifest["metadata"]
                keep.add((manifest["kind"].lower(), meta["namespace"], meta["name"]))
        namespaces = {s.namespace for e in (before, env) if e for s in e.services}
        self._cluster().sweep(key, stack_id, keep=keep, namespaces=namespaces)
        self._orphans_possible.discard(key)

    def remove_if_empty(self, key: str) -> bool:
        """Remove the stack when it holds nothing but itself; True if removed (or gone).

        Called after a change left no environment. `pulumi stack rm` without --force takes
        the stack's lock and refuses a stack that still holds resources, so a teammate's
        start that slipped in keeps its environment and nothing races.
        """
        try:
            self._workspace().remove_stack(key)
        except auto.CommandError as exc:
            text = str(exc)
            if "still contains resources" in text or "locked" in text:
                return False
            if self._removed(key, exc):
                return True
            raise self._backend_error(exc) from None
        return True

    def destroy(
        self,
        key: str,
        reader: TargetReader,
        *,
        on_event: EventHandler,
        on_output: OutputHandler,
        lock_wait: float = LOCK_WAIT_SECONDS,
        stale_lock_after: float | None = None,
        attempts: int = 3,
    ) -> bool:
        """Remove every object and the stack; False when this backend has none.

        One update that declares nothing (no refresh first: the provider takes an object
        already deleted by hand as deleted, and a refresh costs a read per object), so
        leftovers are swept under the lock and the stack goes only if it is still empty:
        a teammate's start that slipped in keeps its environment. A lock whose holder is
        gone is recovered when `stale_lock_after` is given (rule in preview_stack.reaping).
        Deploy failures are retried with backoff.
        """
        delay = 2.0
        for attempt in range(1, attempts + 1):
            try:
                self.apply(
                    key,
                    DestroyAll(),
                    reader,
                    on_event=on_event,
                    on_output=on_output,
                    create=False,
                    lock_wait=lock_wait,
                    stale_lock_after=stale_lock_after,
                )
                return True
            except NotFound:
                return False
            except DeployFailed:
                if attempt == attempts:
                    raise
                time.sleep(delay)
                delay *= 2
        return True

    # ------------------------------------------------------------------ locks
    def _locked(
        self,
        key: str,
        action: Callable[[], object],
        *,
        lock_wait: float,
        stale_lock_after: float | None,
    ) -> None:
        """Run `action` (an update); while another holds the lock, wait up to `lock_wait`,
        taking over a stale lock when `stale_lock_after` is given."""
        deadline = time.monotonic() + lock_wait
        while True:
            try:
                self._attempt(key, action)
                return
            except _Retry as retry:
                if time.monotonic() >= deadline:
                    raise Busy(
                        f"environment {key!r} stayed busy or unreadable ({retry}); retry later"
                    ) from None
                time.sleep(0.5)
                continue
            except auto.ConcurrentUpdateError as exc:
                locks = parse_locks(str(exc))
                if stale_lock_after is not None and locks:
                    try:
                        if self._take_over(key, action, stale_lock_after):
                            return
                    except auto.ConcurrentUpdateError as fresh:
                        locks = parse_locks(str(fresh)) or locks
                    except _Retry:
                        pass  # a momentary backend condition: the loop tries again
                if time.monotonic() >= deadline:
                    holders = ", ".join(lock.describe() for lock in locks) or "someone else"
                    raise Busy(
                        f"environment {key!r} is being updated by {holders} (its stack is "
                        f"locked); retry later, or check `preview-env status -k {key}`",
                        locks=locks,
                    ) from None
                time.sleep(1.0)

    def _attempt(self, key: str, action: Callable[[], object]) -> None:
        """One try of `action`; Pulumi's errors become ours, a held lock is re-raised.
        While it runs, the lock it takes gets its holder record (see _HolderWatch)."""
        try:
            with _HolderWatch(self.lock_store(), key):
                action()
        except auto.ConcurrentUpdateError:
            raise
        except auto.CommandError as exc:
            text = str(exc)
            if _transient(exc):
                raise _Retry(_summary(exc)) from None
            if backends.wrong_passphrase(text):
                raise self._backend_error(exc) from None
            if self._removed(key, exc):  # `apply` creates it again when it may
                raise NotFound(f"no environment {key!r} in this backend") from None
            raise DeployFailed(f"pulumi failed for {key!r}: {_summary(exc)}") from None

    def _take_over(self, key: str, action: Callable[[], object], stale_after: float) -> bool:
        """Under this user's file lock per stack: look at the locks afresh (by trying
        again), remove them if stale and run `action`. True when `action` ran; False when
        the locks were not stale. Only the judged lock objects are removed (by their ids),
        so a fresh lock another waiter took meanwhile is never touched; the file lock only
        spares this user's waiters the same work."""
        name = naming.stack_identity(self.backend.redacted, key)
        with _guard(name):
            try:
                self._attempt(key, action)
                return True
            except auto.ConcurrentUpdateError as exc:
                if not self._recover(key, parse_locks(str(exc)), stale_after):
                    return False
            self._attempt(key, action)
            return True

    def _recover(self, key: str, locks: list[Lock], stale_after: float) -> bool:
        """Take over `locks` when every one is stale (preview_stack.reaping.lock_is_stale,
        judged on the lock objects as the store holds them and their holder records): the
        killed update's pending operations are cleared, then exactly those lock objects
        are removed. True when done (or when they were released meanwhile)."""
        store = self.lock_store()
        if not locks or store is None:
            return False
        wanted = {lock.path.rsplit("/", 1)[-1] for lock in locks}
        now = dt.datetime.now(dt.UTC)
        where = here()
        judged = []
        try:
            for name, place, text in store.locks(key):
                lock = lock_from_json(text, place)
                if name not in wanted or lock is None:
                    continue
                holder = holder_from_json(store.read_holder(key, name))
                if not lock_is_stale(
                    lock,
                    now=now,
                    holder=holder,
                    here=where,
                    start_time_of=start_time_of,
                    threshold_seconds=stale_after,
                ):
                    return False
                judged.append(name)
        except Exception:  # the store cannot be read: nothing is taken over
            return False
        if not judged:
            return True  # released meanwhile: retry the update
        stack = self._select(key, _noop)
        self._orphans_possible.add(key)
        self._clear_pending(stack, judged, store, key)
        return True

    def _clear_pending(
        self, stack: auto.Stack, judged: list[str], store: LockStore, key: str
    ) -> None:
        """Remove the judged lock objects, and the pending operations the killed update
        left. The state is read while the stale locks still keep every update out, and
        written back (the import takes the lock) only if nothing changed it since."""
        try:
            before = stack.export_stack()
        except auto.CommandError as exc:
            if not self._removed(key, exc):
                raise self._backend_error(exc) from None
            before = None
        for name in judged:
            try:
                store.delete_lock(key, name)
                store.delete_holder(key, name)
            except Exception as exc:
                raise Unreachable(
                    f"cannot remove the stale lock {name} of {key!r} in {self._shown}: {exc}"
                ) from None
        deployment = dict(before.deployment or {}) if before else {}
        if not before or not deployment.get("pending_operations"):
            return
        try:
            if stack.export_stack().deployment != before.deployment:
                return  # another update ran meanwhile: its state stands
            deployment["pending_operations"] = []
            stack.import_stack(auto.Deployment(version=before.version, deployment=deployment))
        except auto.ConcurrentUpdateError:
            return  # another update started: it proceeds (Pulumi warns of pending ones)
        except auto.CommandError as exc:
            if not self._removed(key, exc):
                raise self._backend_error(exc) from None


class _HolderWatch:
    """While an update runs: once the lock it takes is there (a lock on this host held by
    a `pulumi` process of ours), write its holder record beside it; removed when the
    update ends. A killed update leaves the record, which lets a later takeover on the
    same boot and PID namespace prove the holder gone (preview_stack.reaping)."""

    POLL_SECONDS = 0.5

    def __init__(self, store: LockStore | None, key: str) -> None:
        self.store, self.key = store, key
        self.written: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _HolderWatch:
        if self.store is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.store is not None and self.written is not None:
            with contextlib.suppress(Exception):
                self.store.delete_holder(self.key, self.written)

    def _watch(self) -> None:
        assert self.store is not None
        while not self._stop.wait(self.POLL_SECONDS):
            try:
                for name, place, text in self.store.locks(self.key):
                    lock = lock_from_json(text, place)
                    holder = our_holder(lock) if lock else None
                    if holder is not None:
                        self.store.write_holder(self.key, name, holder.to_json())
                        self.written = name
                        return
            except Exception:
                continue  # a momentary store error: look again


@contextlib.contextmanager
def _guard(name: str) -> Iterator[None]:
    """An exclusive file lock in this user's private state directory (never a shared
    temporary directory, where another user could plant the file or a symlink)."""
    folder = default_state_dir() / "takeover"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise Unreachable(f"{folder} is not a directory of this user; remove it")
    if info.st_mode & 0o077:
        folder.chmod(0o700)
    handle = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


_KNOWN = "known"  # with _stack_class(): neither select nor create, the stack exists


@functools.cache
def _stack_class() -> Callable[[str, auto.Workspace, str], auto.Stack]:
    """A stack whose `up` skips the Automation API's reads after every update (its outputs
    twice and its history: three `pulumi` processes) that nothing here uses, and that can
    be made for a stack known to exist without `pulumi stack select`. Made on first use:
    the Automation API is imported only by commands that run `pulumi`."""
    from pulumi.automation._stack import StackInitMode

    modes = {"select": StackInitMode.SELECT, "create": StackInitMode.CREATE}

    class _Stack(auto.Stack):
        def __init__(self, name: str, workspace: auto.Workspace, mode: str) -> None:
            if mode == _KNOWN:
                self.name, self.workspace = name, workspace
                self._mode = StackInitMode.SELECT
                return
            super().__init__(name, workspace, modes[mode])

        def outputs(self) -> auto.OutputMap:
            return {}

        def info(self, show_secrets: bool = True) -> auto.UpdateSummary | None:
            return auto.UpdateSummary(
                kind="update",
                start_time=_now(),
                message="",
                environment={},
                config={},
                result="succeeded",
            )

    return _Stack


@functools.cache
def _pulumi_command() -> auto.PulumiCommand:
    """One `pulumi version` per process: each LocalWorkspace otherwise runs its own. A
    `pulumi` that does not run is one line naming it, not a traceback."""
    try:
        return auto.PulumiCommand()
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        last = (said.strip().splitlines() or [f"exit {exc.returncode}"])[-1]
        raise Unreachable(f"`pulumi version` failed: {last}; check the pulumi on PATH") from None
    except OSError as exc:
        raise Unreachable(f"cannot run pulumi: {exc}; install it or fix PATH") from None


class _Retry(Exception):
    """A momentary backend condition: try the same update again."""


# A lock object listed, then released before it was read: Pulumi's diy backends list a
# stack's locks and read each one (to create, lock or remove a stack), and gocloud says
# NotFound the same way for files, S3 objects and PostgreSQL rows.
_LOCK_VANISHED = re.compile(
    re.escape(backends.LOCKS) + r"/\S*?\.json.*(NotFound|NoSuchKey|not found|no such file)", re.I
)


def _transient(exc: auto.CommandError) -> bool:
    """Pulumi's self-managed backends read checkpoints without the lock and lock to create
    or remove a stack: a concurrent writer shows as a truncated checkpoint ("failed to load
    checkpoint: EOF", a lock file gone while listed or read), a concurrent creator or
    remover as a locked stack."""
    text = str(exc)
    return (
        "failed to load checkpoint" in text
        or "unexpected end of JSON input" in text
        or "could not list bucket" in text  # a lock file removed while being listed
        or _LOCK_VANISHED.search(text) is not None
        or re.search(r"error: (unexpected )?EOF\s*$", text, re.M) is not None
        or isinstance(exc, auto.ConcurrentUpdateError)
    )


def _noop() -> None:
    return None


def _last_line(exc: auto.CommandError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["unknown error"])[-1]


_GENERIC = ("update failed", "destroy failed", "Resource monitor has terminated", "preview failed")
# hashicorp/go-multierror's header: the errors themselves follow as `* ...` lines.
_SEVERAL = re.compile(r"^\d+ errors? occurred:?$")


def _summary(exc: auto.CommandError) -> str:
    """The distinct, specific error messages of a failed pulumi run in one line, the first
    resource's first: "N errors occurred:" stands for the `* ...` lines under it (the
    first is the resource's error, the others its detail: an image pull's failure)."""
    found: list[str] = []
    lines = str(exc).splitlines()
    for index, line in enumerate(lines):
        if "error:" not in line or line.strip().startswith("* "):
            continue
        message = line.rsplit("error: ", 1)[-1].strip()
        if _SEVERAL.match(message):
            bullets = [
                rest.strip().removeprefix("* ").strip()
                for rest in lines[index + 1 : index + 50]
                if rest.strip().startswith("* ")
            ]
            following = lines[index + 1 : index + 2]
            if not bullets or not (following and following[0].strip().startswith("* ")):
                continue  # the progress line's copy; Diagnostics carry the bullets
            message = "; ".join(bullets)  # the first is the resource's own error
        message = re.sub(r'"urn:pulumi:[^"]*::([^"]+)"', r"\1", message)
        if message and not message.startswith(_GENERIC) and message not in found:
            found.append(message)
    text = "; ".join(found) if found else _last_line(exc)
    return text if len(text) <= 400 else text[:397] + "..."


def connect(settings: Settings) -> tuple[Cluster, Stacks]:
    """The cluster and the backend every command works with, from the global options."""
    cluster = Cluster(ClusterTarget(settings.kubeconfig, settings.context))
    stacks = Stacks(resolve(settings.backend), cluster.target, verbose=settings.verbose)
    return cluster, stacks


__all__ = ["Applied", "Stacks", "connect"]
