"""`python -m testbed up|down|images [--state DIR]`: the test bed for a shell (make testbed-up).

`up --gateway` also runs the Gateway data plane (testbed.gateway: Traefik, which it builds
when missing); `up --brokers` also runs RabbitMQ and Kafka (testbed.brokers; Kafka's jars
are fetched when missing); a plain `up`, what `make demo` runs, needs neither.

`images` builds the database and preview-env images from the host's packages, imports them
into the running bed's real node, and prints `export` lines naming them (scripts/demo-db.sh).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from testbed import images, node
from testbed.cluster import Testbed, TestbedError
from testbed.toolchain import BED, ToolchainMissing, ensure, locate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed")
    parser.add_argument("command", choices=["up", "down", "images"])
    parser.add_argument("--state", type=Path, default=Path(".testbed"))
    parser.add_argument(
        "--gateway", action="store_true", help="up: also run Traefik and the bed's Gateway"
    )
    parser.add_argument(
        "--brokers", action="store_true", help="up: also run RabbitMQ and Kafka on 127.0.0.1"
    )
    args = parser.parse_args(argv)
    if args.command == "down":
        Testbed(args.state, locate(), detached=True).stop()
        print(f"test bed stopped; {args.state} removed", file=sys.stderr)
        return 0
    try:
        # What this command runs, no more: a demo on a fresh machine builds neither the
        # S3 server nor the linters the tests use.
        needs = BED + (("pulumi-language-python",) if args.command == "images" else ())
        needs += ("traefik",) if args.gateway and args.command == "up" else ()
        needs += ("kafka",) if args.brokers and args.command == "up" else ()
        toolchain = ensure(components=needs)
    except ToolchainMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "images":
        built = {
            "PREVIEW_ENV_POSTGRES_IMAGE": images.postgres(),
            "PREVIEW_ENV_MARIADB_IMAGE": images.mariadb(),
            "PREVIEW_ENV_DB_COPY_IMAGE": images.reaper(toolchain),
        }
        for name, image in built.items():
            node.import_image(args.state.resolve(), image)
            print(f"export {name}={image.name}")
        return 0
    bed = Testbed(args.state, toolchain, detached=True, gateway=args.gateway, brokers=args.brokers)
    bed.stop()  # a previous bed in the same directory
    started = time.monotonic()
    try:
        bed.start()
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        bed.stop(keep_state=True)
        return 1
    if bed.brokers is not None:
        ready = ", ".join(f"{name} {after:.1f}s" for name, after in bed.brokers.ready_after)
        print(f"brokers ready after: {ready}", file=sys.stderr)
    print(
        f"test bed up in {time.monotonic() - started:.1f}s at {bed.server}\n"
        f"  source {args.state}/env   # KUBECONFIG, PATH, PULUMI_* for this bed\n"
        f"  make testbed-down         # stop it",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
