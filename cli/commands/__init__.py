"""Typer commands, one module each: leaves that parse, call the core and adapters, and render.
Only cli.app (and cli.__main__ for `db`) imports them."""
