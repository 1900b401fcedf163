"""`python -m cli`: the same entry point as the `preview-env` console script."""

from cli.app import main

main()
