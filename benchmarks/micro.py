"""In-process microbenchmarks of one side of the mux at a time, in CPU time.

``python benchmarks/micro.py`` runs each case in a fresh process and prints
messages per CPU second of that process (``time.process_time``), which the
load of a shared machine disturbs far less than wall-clock rates.  It is for
before/after comparisons of the hot paths (``PYTHONPATH=<other checkout>
python benchmarks/micro.py`` measures that checkout's ``trio_kcm``), not for
the published table, which the main
suite makes with sender and receiver in separate processes.

Each case has one side under test and a cheap counterpart in the same process,
over one loopback TCP connection, 64 B payloads by default:

- ``rx-raw``: the raw Trio receiver of the main suite (a ``bytearray``,
  ``struct.unpack_from`` per header, a slice per message); ``rx-many`` /
  ``rx-receive``: a mux and ``receive_many(4096)`` / ``receive()``.  The
  counterpart writes ~64 KiB of frames per ``send_all``.
- ``tx-raw``: one ``send_all`` per message; ``tx-many``: ``send_many`` of
  ~64 KiB; ``tx-batch``: ``send`` inside ``batch()``; ``tx-send``: one task
  calling ``send`` per message; ``tx-send16``: 16 tasks each calling
  ``send``.  The counterpart reads and discards the bytes.
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from _loopback import CHUNK, PARSER, frame, sink, tcp_pair  # a neighbour: run as a script

import trio_kcm


async def _tx(case: str, count: int, size: int) -> float:
    message = frame(size)
    per_write = max(1, CHUNK // len(message))
    client, server = await tcp_pair()
    start = time.process_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink, server)
        if case == "tx-raw":
            for _ in range(count):
                await client.send_all(message)
            await client.aclose()
        else:
            async with trio_kcm.open_mux(parser=PARSER) as mux:
                mux.attach(client)
                sock = mux.socket()
                if case == "tx-many":
                    group = [message] * per_write
                    for _ in range(count // per_write):
                        await sock.send_many(group)
                elif case == "tx-batch":
                    for _ in range(count // per_write):
                        async with sock.batch():
                            for _ in range(per_write):
                                await sock.send(message)
                elif case == "tx-send":
                    for _ in range(count):
                        await sock.send(message)
                elif case == "tx-send16":

                    async def sender() -> None:
                        for _ in range(count // 16):
                            await sock.send(message)

                    async with trio.open_nursery() as senders:
                        for _ in range(16):
                            senders.start_soon(sender)
                else:
                    raise ValueError(case)
    return count / (time.process_time() - start)


async def _rx(case: str, count: int, size: int) -> float:
    message = frame(size)
    per_write = max(1, CHUNK // len(message))
    chunk = message * per_write
    total = count // per_write * per_write
    client, server = await tcp_pair()

    async def feed() -> None:
        for _ in range(total // per_write):
            await client.send_all(chunk)

    start = time.process_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        got = 0
        if case == "rx-raw":
            buf = bytearray()
            unpack_from = struct.Struct(">I").unpack_from
            while got < total:
                buf += await server.receive_some(CHUNK)
                pos = 0
                out = []
                while len(buf) - pos >= 4:
                    end = pos + 4 + unpack_from(buf, pos)[0]
                    if end > len(buf):
                        break
                    out.append(buf[pos:end])
                    pos = end
                got += len(out)
                del buf[:pos]
        else:
            async with trio_kcm.open_mux(parser=PARSER) as mux:
                mux.attach(server)
                sock = mux.socket()
                if case == "rx-many":
                    while got < total:
                        got += len(await sock.receive_many(4096))
                elif case == "rx-receive":
                    while got < total:
                        await sock.receive()
                        got += 1
                else:
                    raise ValueError(case)
                rate = total / (time.process_time() - start)
                await client.aclose()
                return rate
    return total / (time.process_time() - start)


CASES: dict[str, tuple[Callable[[str, int, int], Awaitable[float]], int]] = {
    "rx-raw": (_rx, 300_000),
    "rx-many": (_rx, 300_000),
    "rx-receive": (_rx, 100_000),
    "tx-raw": (_tx, 30_000),
    "tx-many": (_tx, 300_000),
    "tx-batch": (_tx, 100_000),
    "tx-send": (_tx, 30_000),
    "tx-send16": (_tx, 50_000),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/micro.py", description=__doc__)
    parser.add_argument("cases", nargs="*", help=f"some of {', '.join(CASES)} (default: all)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (default 64)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the counts")
    parser.add_argument("--one", metavar="CASE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if args.one:
        run, count = CASES[args.one]
        rate = trio.run(run, args.one, max(16, int(count * args.scale)), args.size)
        print(f"{rate:.0f}")
        return 0
    where = Path(trio_kcm.__file__).parent
    print(f"trio_kcm from {where}, payload {args.size} B; msgs per CPU second")
    for case in args.cases or CASES:
        # A fresh process per case: nothing left over from the one before.
        command = [sys.executable, __file__, "--one", case]
        out = subprocess.run(
            [*command, "--size", str(args.size), "--scale", str(args.scale)],
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"{case:12} {float(out.stdout):>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
