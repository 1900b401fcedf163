"""Command functions stay short: they parse, call the core and adapters, and render.

A command function is a function in `cli/commands/` with a parameter given as a typer
option or argument. Its length counts the lines of its body (the signature, where the
options live, and its docstring aside). Run by `make lint`; exit 1 names each offender.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 80
COMMANDS = Path(__file__).resolve().parents[2] / "cli" / "commands"


def _is_typer_parameter(node: ast.expr | None) -> bool:
    """`typer.Option(...)`/`typer.Argument(...)` as a default or inside `Annotated[...]`."""
    if node is None:
        return False
    return any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "typer"
        and n.func.attr in ("Option", "Argument")
        for n in ast.walk(node)
    )


def _is_command(function: ast.FunctionDef) -> bool:
    arguments = function.args
    every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    defaults = [*arguments.defaults, *arguments.kw_defaults]
    return any(_is_typer_parameter(a.annotation) for a in every) or any(
        _is_typer_parameter(d) for d in defaults
    )


def body_lines(function: ast.FunctionDef) -> int:
    body = function.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]  # the docstring
    if not body:
        return 0
    return (function.end_lineno or body[-1].lineno) - body[0].lineno + 1


def offenders(folder: Path = COMMANDS, limit: int = LIMIT) -> list[str]:
    found = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and _is_command(node):
                lines = body_lines(node)
                if lines > limit:
                    found.append(
                        f"{path.relative_to(folder.parents[1])}:{node.lineno}: command "
                        f"{node.name}() has {lines} lines (at most {limit}); move the work "
                        "into the core or an adapter and keep parse, call, render"
                    )
    return found


def main() -> int:
    found = offenders()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
