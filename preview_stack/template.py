"""Tera-compatible templating of mirrord configs, in which a value can never change the shape.

mirrord renders its config with Tera and then parses the text, so a value such as a git
branch named `x", "target": "deployment/admin` could add fields. Here each `{{ ... }}`
renders as an opaque token (18 random digits: valid inside a string and as a bare number
in JSON, YAML and TOML), the document is parsed, and only then are the tokens replaced by
their values, so a value is always data. `{% ... %}` text is the author's and stays syntax.

Tera compatibility: `get_env(name=, default=)`, `default(value=)` and `replace(from=, to=)`
are provided; `upper`, `lower` and `trim` are Jinja's own. An unknown name is an error, but
`{% if name %}` is false, as in Tera.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from preview_stack.errors import BadInput

Parser = Callable[[str, Path], Any]

_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false")
_UNKNOWN = "unknown template variable"
# What a placeholder renders as inside Python: never in a real value, never in the document.
_PENDING = "\x00"


class _Strict(StrictUndefined):
    """Using an unknown name is an error naming it; `{% if name %}` is false (Tera)."""

    __slots__ = ()

    def __bool__(self) -> bool:  # type: ignore[override]  # StrictUndefined's raises
        return False

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint is None and self._undefined_obj is missing:
            return f"{_UNKNOWN} {{{{ {self._undefined_name} }}}}"
        return super()._undefined_message


class _Placeholder(Undefined):
    """A variable not known yet (the key, while the config's own `key` is read)."""

    __slots__ = ()

    def __str__(self) -> str:
        return _PENDING


class Rendered(NamedTuple):
    data: Any
    pending: frozenset[str]  # tokens left in `data` for placeholders

    def resolved(self, value: str) -> bool:
        """Whether `value` depends on no placeholder."""
        return not any(token in value for token in self.pending)


def _default(current: Any, value: Any = "", boolean: bool = False) -> Any:
    """Tera's `default(value=...)`; also for an empty string (git_branch is "" when unknown)."""
    if isinstance(current, _Placeholder):
        return current
    empty = isinstance(current, Undefined) or current is None or current == ""
    return value if empty or (boolean and not current) else current


def _replace(current: Any, old: str | None = None, new: str | None = None, **tera: str) -> str:
    """Tera's `replace(from=, to=)`, and Jinja's positional `replace(old, new)`."""
    old, new = tera.pop("from", old), tera.pop("to", new)
    if tera or old is None or new is None:
        raise TypeError("replace takes from= and to=")
    return str(current).replace(old, new)


def _get_env(name: str, default: Any = missing) -> Any:
    """Tera's `get_env(name=, default=)`."""
    if name in os.environ:
        return os.environ[name]
    if default is missing:
        raise BadInput(f"environment variable {name} is not set (get_env without default)")
    return default


def _typed(value: str) -> Any:
    """A value standing where a bare number parsed: a number or bool if it spells one."""
    return json.loads(value) if _SCALAR.fullmatch(value) else value


class _Tokens:
    """Each expression's output becomes a token; parsed data gets the real values back."""

    def __init__(self, source: str) -> None:
        self._source = source
        self.values: dict[str, str] = {}
        self.pending: set[str] = set()

    def _new(self) -> str:
        while True:
            token = str(10**17 + secrets.randbelow(9 * 10**17))
            if token not in self._source and token not in self.values and token not in self.pending:
                return token

    def finalize(self, value: Any) -> str:
        if isinstance(value, bool):
            text = "true" if value else "false"
        else:
            # Block `set` and macros capture rendered text: expand tokens already in it.
            text = self.expand(str(value))
        token = self._new()
        if _PENDING in text or any(pending in text for pending in self.pending):
            self.pending.add(token)
        else:
            self.values[token] = text
        return token

    def expand(self, text: str) -> str:
        """Replace tokens in one pass, so an inserted value is never scanned again."""
        if not self.values:
            return text
        pattern = "|".join(self.values)
        return re.sub(pattern, lambda m: self.values[m.group()], text)

    def substitute(self, data: Any, where: str) -> Any:
        """`data` with tokens replaced; `where` is its dotted path, for errors."""
        if isinstance(data, dict):
            out: dict[Any, Any] = {}
            for key, value in data.items():
                new_key = self._scalar(key, where or "(top level)")
                if new_key in out:
                    raise BadInput(f"{where or '(top level)'}: duplicate key {new_key!r}")
                out[new_key] = self.substitute(
                    value, f"{where}.{new_key}" if where else str(new_key)
                )
            return out
        if isinstance(data, list):
            return [self.substitute(value, f"{where}[{i}]") for i, value in enumerate(data)]
        return self._scalar(data, where or "(top level)")

    def _scalar(self, value: Any, where: str) -> Any:
        if isinstance(value, str):
            return self.expand(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        if isinstance(value, int):
            if str(value) in self.values:
                return _typed(self.values[str(value)])
            glued = any(token in str(value) for token in self.values)
        else:
            mantissa = f"{abs(value):.16e}"
            glued = abs(value) >= 1e17 and any(
                token.startswith(mantissa[0] + mantissa[2:15]) for token in self.values
            )
        # `{{ a }}_{{ b }}` or `{{ a }}.5` unquoted parse as one number: the values are lost.
        if glued:
            raise BadInput(f"{where}: a template expression inside an unquoted number; quote it")
        return value


def _line(exc: BaseException) -> int | None:
    """The template line Jinja's rewritten traceback points at, if any."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render(
    text: str,
    variables: Mapping[str, Any],
    *,
    source: Path,
    parse: Parser,
    placeholders: bool = False,
) -> Rendered:
    """Render `text`, parse it with `parse`, and put the values into the parsed data.

    With `placeholders`, unknown names are not errors: their outputs stay tokens, listed
    in `pending`, so a field can be read before all variables are known.
    """
    tokens = _Tokens(text)
    env = ImmutableSandboxedEnvironment(
        undefined=_Placeholder if placeholders else _Strict,
        autoescape=False,
        finalize=tokens.finalize,
        keep_trailing_newline=True,
    )
    env.filters.update(default=_default, replace=_replace)
    env.globals["get_env"] = _get_env
    try:
        rendered = env.from_string(text).render(dict(variables))
    except TemplateSyntaxError as exc:
        message = " ".join(str(exc.message).split())
        raise BadInput(f"{source}:{exc.lineno}: template syntax error: {message}") from None
    except Exception as exc:  # whatever the template's own code raised: the author's error
        line = _line(exc)
        where = f"{source}:{line}" if line else str(source)
        message = " ".join(str(exc).split())
        if message.startswith(_UNKNOWN):
            message += f" (known: {', '.join(sorted(variables))})"
        elif not isinstance(exc, BadInput):
            message = f"template error: {message}"
        raise BadInput(f"{where}: {message}") from None
    data = parse(rendered, source)
    try:
        data = tokens.substitute(data, "")
    except BadInput as exc:
        raise BadInput(f"{source}: {exc}") from None
    return Rendered(data, frozenset(tokens.pending))
