"""`python -m cli`: the same entry point as the `preview-env` console script.

`db ...` (the database branches' copy Job runs `python -m cli db copy` in the reaper image)
needs neither Pulumi nor the other commands: it starts without importing them."""

import sys

if sys.argv[1:2] == ["db"]:
    from cli.commands.db import app as db_app

    db_app(args=sys.argv[2:], prog_name="preview-env db")
else:
    from cli.app import main

    main()
