"""Pure changes of an environment, applied to the spec read while the stack's lock is held.

Every command that mutates an environment (start, extend, clean -t, clean, reap, `pulumi up`)
is one of these functions `(latest spec or None, now) -> new spec or None` (None: nothing
left, so the update deletes every object). The Pulumi program calls it with the spec it
reads from the backend while the engine holds the lock, so two commands on one key never
declare stale copies of each other's work.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from preview_stack.errors import BadInput, NotFound, PreviewError
from preview_stack.objects import EnvironmentObjects
from preview_stack.spec import DbBranch, EnvironmentSpec, ServiceSpec
from preview_stack.ttl import expiry, parse_rfc3339, rfc3339


@dataclass
class Applied:
    """What one change did, as seen under the lock: the spec before and after, the objects
    derived from `after` (once per update: swept, declared and reported from this one
    derivation), and the change's own error (nothing deployed)."""

    before: EnvironmentSpec | None = None
    after: EnvironmentSpec | None = None
    objects: EnvironmentObjects | None = None
    error: PreviewError | None = None


class NotDue(PreviewError):
    """The reaper's re-check under the lock found the environment extended or restarted."""


def later_expiry(current: str | None, now: dt.datetime, ttl_seconds: int | None) -> str | None:
    """The later of the current expiry and now + TTL; None (infinite) wins over any time."""
    if current is None or ttl_seconds is None:
        return None
    proposed = expiry(now, ttl_seconds)
    assert proposed is not None
    return rfc3339(max(parse_rfc3339(current), proposed))


def keep_branch_passwords(
    services: tuple[ServiceSpec, ...] | list[ServiceSpec], prior: EnvironmentSpec | None
) -> list[ServiceSpec]:
    """A database branch keeps its first password for the environment's life: its server was
    initialised with it, and every later pod must log in with the same one."""
    known = {b.id: b.password for s in (prior.services if prior else []) for b in s.db_branches}
    kept = []
    for service in services:
        branches = [
            b.model_copy(update={"password": known[b.id]}) if b.id in known else b
            for b in service.db_branches
        ]
        known.update({b.id: b.password for b in branches})
        kept.append(service.model_copy(update={"db_branches": branches}))
    return kept


def check_shared_branches(spec: EnvironmentSpec) -> EnvironmentSpec:
    """Services naming one branch id share one server: they must agree on what it is and
    live in its namespace (its password Secret is namespaced)."""
    first: dict[str, tuple[DbBranch, ServiceSpec]] = {}
    for service in spec.services:
        for branch in service.db_branches:
            if branch.id not in first:
                first[branch.id] = (branch, service)
                continue
            other, owner = first[branch.id]
            if not branch.same_branch(other):
                raise BadInput(
                    f"database branch {branch.id!r} is declared differently by "
                    f"{owner.display_target} and {service.display_target}; give one of them "
                    "another id or the same type, name, image and copy settings"
                )
            if owner.namespace != service.namespace:
                raise BadInput(
                    f"database branch {branch.id!r} is shared by {owner.display_target} in "
                    f"{owner.namespace} and {service.display_target} in {service.namespace}; "
                    "a shared branch serves one namespace: give one of them another id"
                )
    return spec


@dataclass(frozen=True)
class AddService:
    """`start`: add a target, or replace the one with the same target id."""

    service: ServiceSpec
    ttl_seconds: int | None
    owner: str

    def __call__(self, spec: EnvironmentSpec | None, now: dt.datetime) -> EnvironmentSpec:
        if spec is None:
            fresh = EnvironmentSpec(
                key="",  # set by the caller through `for_key`
                owner=self.owner,
                created_at=rfc3339(now),
                expires_at=rfc3339(now),  # replaced below: the later of this and now + TTL
                ttl_seconds=self.ttl_seconds,
                services=[],
            )
            spec = fresh
        (service,) = keep_branch_passwords([self._keeping_share_token(spec)], spec)
        return check_shared_branches(
            spec.with_service(service).model_copy(
                update={
                    "expires_at": later_expiry(spec.expires_at, now, self.ttl_seconds),
                    "ttl_seconds": self.ttl_seconds,
                }
            )
        )

    def _keeping_share_token(self, spec: EnvironmentSpec) -> ServiceSpec:
        """A share link keeps the environment's random host part for its whole life."""
        share = self.service.share
        if share is None or share.token is None:
            return self.service
        prior = next((s.share.token for s in spec.services if s.share and s.share.token), None)
        if prior is None:
            return self.service
        return self.service.model_copy(update={"share": share.model_copy(update={"token": prior})})

    def previous_of(self, spec: EnvironmentSpec | None) -> ServiceSpec | None:
        """This target's version before the change (what a failed start restores)."""
        if spec is None:
            return None
        return next((s for s in spec.services if s.target_id == self.service.target_id), None)


@dataclass(frozen=True)
class Restore:
    """A failed `start` undoes only itself: its target's previous version, or no target."""

    target_id: str
    previous: ServiceSpec | None

    def __call__(self, spec: EnvironmentSpec | None, now: dt.datetime) -> EnvironmentSpec | None:
        if spec is None:
            return None
        kept = [s for s in spec.services if s.target_id != self.target_id]
        if self.previous is not None:
            restored = spec.with_service(self.previous)
        else:
            restored = spec.model_copy(update={"services": kept})
        return restored if restored.services else None


@dataclass(frozen=True)
class RemoveTarget:
    """`clean -t`: drop the targets matching a selector; nothing left means no environment."""

    selector: str

    def __call__(self, spec: EnvironmentSpec | None, now: dt.datetime) -> EnvironmentSpec | None:
        if spec is None:
            return None
        rest, _removed = spec.without(self.selector)
        return rest if rest.services else None


@dataclass(frozen=True)
class SetExpiry:
    """`extend --ttl` (now + TTL, may shorten) or `extend --by` (current expiry + delta)."""

    key: str
    ttl_seconds: int | None = None
    by_seconds: int | None = None

    def __call__(self, spec: EnvironmentSpec | None, now: dt.datetime) -> EnvironmentSpec:
        if spec is None:
            raise NotFound(
                f"no environment {self.key!r} (never started, cleaned or already reaped); "
                "see `preview-env status`"
            )
        if self.by_seconds is None:
            new = expiry(now, self.ttl_seconds)
            return spec.model_copy(
                update={
                    "expires_at": rfc3339(new) if new else None,
                    "ttl_seconds": self.ttl_seconds,
                }
            )
        current = spec.expiry()
        if current is None:
            raise BadInput(f"environment {self.key!r} never expires; use --ttl to set an expiry")
        new = current + dt.timedelta(seconds=self.by_seconds)
        return spec.model_copy(
            update={"expires_at": rfc3339(new), "ttl_seconds": int((new - now).total_seconds())}
        )


Change = Callable[[EnvironmentSpec | None, dt.datetime], EnvironmentSpec | None]


@dataclass(frozen=True)
class Unrouted:
    """The first half of a change that removes routed previews: the latest spec with the
    routes of every target `change` would drop switched off, so their keys' requests go
    back to staging while the previews still answer. The change itself follows once the
    data plane has caught up (a controller serves a deleted route for a moment, and a route
    whose backend is gone answers 503). `dropped` says which targets it unrouted."""

    change: Change
    dropped: list[str] = field(default_factory=list)

    def __call__(self, spec: EnvironmentSpec | None, now: dt.datetime) -> EnvironmentSpec | None:
        after = self.change(spec, now)  # the change's own refusals stand, nothing deployed
        if spec is None:
            return None
        kept = {s.target_id for s in after.services} if after is not None else set()
        self.dropped[:] = [
            s.target_id for s in spec.services if s.routing and s.target_id not in kept
        ]
        return _routing(spec, set(self.dropped), False)


def may_drop_targets(change: Change) -> bool:
    """Whether `change` can remove a running preview (then its routes are drained first)."""
    return isinstance(change, DestroyAll | DestroyIfDue | RemoveTarget)


@dataclass(frozen=True)
class Rerouted:
    """Undo `Unrouted` when its change was refused after all (an `extend` won the race)."""

    targets: tuple[str, ...]

    def __call__(self, spec: EnvironmentSpec | None, now: dt.datetime) -> EnvironmentSpec | None:
        return None if spec is None else _routing(spec, set(self.targets), True)


def _routing(spec: EnvironmentSpec, targets: set[str], routing: bool) -> EnvironmentSpec:
    if not targets:
        return spec
    services = [
        s.model_copy(update={"routing": routing}) if s.target_id in targets else s
        for s in spec.services
    ]
    return spec.model_copy(update={"services": services})


@dataclass(frozen=True)
class DestroyAll:
    """`clean`: nothing of the environment remains."""

    def __call__(self, spec: EnvironmentSpec | None, now: dt.datetime) -> None:
        return None


@dataclass(frozen=True)
class DestroyIfDue:
    """The reaper: destroy only if the latest spec is still expired (an extend wins)."""

    def __call__(self, spec: EnvironmentSpec | None, now: dt.datetime) -> None:
        if spec is None:
            return None
        moment = spec.expiry()
        if moment is None or moment > now:
            shown = spec.expires_at or "never"
            raise NotDue(f"not due any more (expires {shown}); left alone")
        return None


@dataclass(frozen=True)
class Declare:
    """`pulumi up` from stack config: the config's services; expiry never shortened unless
    `expiresAt` is set explicitly."""

    services: tuple[ServiceSpec, ...]
    ttl_seconds: int | None
    owner: str
    expires_at: str | None = None

    def __call__(self, spec: EnvironmentSpec | None, now: dt.datetime) -> EnvironmentSpec:
        services = keep_branch_passwords(self.services, spec)
        if self.expires_at is not None:
            expires: str | None = self.expires_at
        elif spec is not None and services == spec.services:
            expires = spec.expires_at  # an unchanged re-run keeps the expiry
        else:
            current = spec.expires_at if spec is not None else rfc3339(now)
            expires = later_expiry(current, now, self.ttl_seconds)
        return check_shared_branches(
            EnvironmentSpec(
                key=spec.key if spec else "",
                owner=spec.owner if spec else self.owner,
                created_at=spec.created_at if spec else rfc3339(now),
                expires_at=expires,
                ttl_seconds=self.ttl_seconds,
                services=services,
            )
        )


def apply(
    change: object, key: str, spec: EnvironmentSpec | None, now: dt.datetime
) -> EnvironmentSpec | None:
    """Run `change` and stamp the key (a new spec does not know it)."""
    assert callable(change)
    result = change(spec, now)
    if result is None:
        return None
    assert isinstance(result, EnvironmentSpec)
    return result if result.key == key else result.model_copy(update={"key": key})
