"""The `preview-env` command line: thin typer commands over `preview_stack`'s pure core."""
