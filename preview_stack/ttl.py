"""TTL durations and expiry arithmetic. `now` is always passed in, never read here."""

from __future__ import annotations

import datetime as dt
import re

from preview_stack.errors import BadInput

INFINITE = "infinite"
DEFAULT_TTL_SECONDS = 60 * 60
_DURATION = re.compile(r"^\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")


def parse_duration(text: str, *, allow_infinite: bool = True) -> int | None:
    """`90m`, `2h`, `1h30m`, `45s`, a bare number of minutes, or `infinite` (None)."""
    value = text.strip().lower()
    if allow_infinite and value == INFINITE:
        return None
    if value.isdigit():
        seconds = int(value) * 60
    else:
        match = _DURATION.match(value)
        if not value or not match or not any(match.groups()):
            hint = "90m, 2h, 1h30m, 45s" + (" or infinite" if allow_infinite else "")
            raise BadInput(f"bad duration {text!r}: use a form like {hint}")
        hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise BadInput(f"bad duration {text!r}: it must be longer than zero")
    return seconds


def expiry(now: dt.datetime, ttl_seconds: int | None) -> dt.datetime | None:
    return None if ttl_seconds is None else now + dt.timedelta(seconds=ttl_seconds)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def remaining(expires_at: dt.datetime | None, now: dt.datetime) -> str:
    """`42m remaining`, `1h 5m remaining`, `infinite` or `expired`."""
    if expires_at is None:
        return INFINITE
    left = int((expires_at - now).total_seconds())
    if left <= 0:
        return "expired"
    return f"{format_seconds(left)} remaining"


def format_seconds(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
