"""The real node's network namespace, and a TCP relay between it and the host's loopback.

The real node (containerd, kubelet, kube-proxy, pods) runs in one network namespace the bed
creates, so its bridge, pod addresses and kube-proxy's iptables rules never touch the
machine's own network, two beds never collide, and deleting the namespace removes them all.
The control plane listens on the host's 127.0.0.1 only, which a process inside the
namespace cannot reach; the relay (`python -m testbed.netns`) bridges exactly the ports
named on its command line: the API server into the namespace, the kubelet out of it.
Inward ports listen on 127.0.0.1 inside the namespace and on each `--bind` address, e.g.
the bridge's gateway, which pods reach (the in-cluster API server endpoint, a shared
Pulumi backend for the reaper CronJob).

A socket belongs to the namespace its creating thread was in, so `socket_in` switches the
calling thread for the `socket()` call only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(netns: Path | None) -> Iterator[None]:
    """Run the block with this thread in `netns` (None: stay where it is)."""
    if netns is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def socket_in(netns: Path | None) -> socket.socket:
    """A TCP socket living in `netns`, usable from any thread afterwards."""
    with inside(netns):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


# ------------------------------------------------------------------------ the relay
async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve(listen: socket.socket, target_ns: Path | None, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        out = socket_in(target_ns)
        out.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(out, ("127.0.0.1", port))
            up_reader, up_writer = await asyncio.open_connection(sock=out)
        except OSError:
            out.close()
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    server = await asyncio.start_server(handle, sock=listen)
    async with server:
        await server.serve_forever()


def _listener(netns: Path | None, port: int, address: str = "127.0.0.1") -> socket.socket:
    sock = socket_in(netns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(128)
    return sock


async def _main(
    netns: Path, inward: list[int], outward: list[int], binds: list[str] | None = None
) -> None:
    # Bind everything before serving, so the parent can wait for the outward ports.
    addresses = ["127.0.0.1", *(binds or [])]
    jobs = [_serve(_listener(netns, p, a), None, p) for p in inward for a in addresses]
    jobs += [_serve(_listener(None, p), netns, p) for p in outward]
    print(f"relay: in {inward} at {addresses} out {outward} via {netns}", flush=True)
    await asyncio.gather(*jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.netns")
    parser.add_argument("--netns", type=Path, required=True)
    parser.add_argument(
        "--in",
        dest="inward",
        type=int,
        action="append",
        default=[],
        help="host 127.0.0.1:PORT reachable at 127.0.0.1:PORT inside the namespace",
    )
    parser.add_argument(
        "--out",
        dest="outward",
        type=int,
        action="append",
        default=[],
        help="namespace 127.0.0.1:PORT reachable at 127.0.0.1:PORT on the host",
    )
    parser.add_argument(
        "--bind",
        action="append",
        default=[],
        help="also listen for the inward ports on this address inside the namespace",
    )
    args = parser.parse_args(argv)
    asyncio.run(_main(args.netns, args.inward, args.outward, args.bind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
