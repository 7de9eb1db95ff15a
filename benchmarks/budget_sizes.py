"""Healthy large-message traffic under ``receive_memory_limit``: does the limit slow it?

``python benchmarks/budget_sizes.py`` measures, for each message size
(``--sizes``, default 1 MiB and 8 MiB, the ``max_message_size`` default) and
each limit (``--limits``, default none, 256 MiB, 64 MiB, 16 MiB, 4 MiB):

- a sender process (this script again, with ``--send``) opens
  ``--connections`` loopback TCP connections (16) and writes whole messages
  of that size on each, back to back, as fast as they are taken;
- this process accepts them, attaches them to one mux
  (``LengthPrefixed(">I", adjust=4)``, ``receive_memory_limit`` = the
  limit) and one consumer task takes every message with ``sock.receive()``;
- after ``--warmup`` seconds, for ``--duration`` seconds: the bytes taken
  (throughput in MB/s, 1 MB = 10^6 bytes), the peak of
  ``statistics().rx_buffered`` (sampled after every message taken and every
  millisecond by a sampler task; with no limit nothing counts it, so it is
  0), the budget's holds and ENOBUFS failures, and the streams that failed.

Each case runs in a fresh ``trio.run`` with a fresh sender; the cases run in
``--rounds`` rounds (3), the order of the limits reversed every other round,
so that drift on a shared machine falls on all of them alike.  Sender and
receiver share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import trio

import trio_kcm

HEADER = struct.Struct(">I")
PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
MiB = 1024 * 1024


def _parse_size(text: str) -> int | None:
    lower = text.strip().lower()
    if lower == "none":
        return None
    for unit, scale in (("kib", 1 << 10), ("mib", 1 << 20), ("gib", 1 << 30)):
        if lower.endswith(unit):
            return int(float(lower[: -len(unit)]) * scale)
    return int(lower)


def _label(limit: int | None) -> str:
    return "none" if limit is None else f"{limit // MiB} MiB"


# ----------------------------------------------------------------------------
# The sender (a separate process: ``--send PORT``)


async def _send(port: int, connections: int, size: int) -> None:
    message = HEADER.pack(size - 4) + b"m" * (size - 4)  # size bytes, header included

    async def one() -> None:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                while True:
                    await stream.send_all(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return  # the receiver closed it (the case is over, or the stream failed)

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)


# ----------------------------------------------------------------------------
# The receiver


async def _case(
    connections: int, size: int, limit: int | None, warmup: float, duration: float
) -> dict[str, Any]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=connections)
    port = listeners[0].socket.getsockname()[1]
    command = [sys.executable, __file__, "--send", str(port)]
    command += ["--connections", str(connections), "--sizes", str(size)]
    sender = await trio.lowlevel.open_process(command)
    try:
        streams = []
        with trio.fail_after(30):
            for _ in range(connections):
                streams.append(await listeners[0].accept())
        await listeners[0].aclose()
        peak = [0]
        taken = [0, 0]  # bytes, messages in the measured window
        async with trio_kcm.open_mux(parser=PARSER, receive_memory_limit=limit) as mux:
            for stream in streams:
                mux.attach(stream)
            sock = mux.socket()
            measuring = [False]

            async def consume() -> None:
                while True:
                    message = await sock.receive()
                    if len(message) != size:
                        raise RuntimeError(f"a message of {len(message)} bytes")
                    buffered = mux.statistics().rx_buffered
                    if measuring[0]:
                        taken[0] += size
                        taken[1] += 1
                        peak[0] = max(peak[0], buffered)

            async def sample() -> None:
                while True:
                    await trio.sleep(0.001)
                    if measuring[0]:
                        peak[0] = max(peak[0], mux.statistics().rx_buffered)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                nursery.start_soon(sample)
                await trio.sleep(warmup)
                before = mux.statistics()
                measuring[0] = True
                t0 = time.perf_counter()
                await trio.sleep(duration)
                measuring[0] = False
                elapsed = time.perf_counter() - t0
                after = mux.statistics()
                nursery.cancel_scope.cancel()
        with trio.fail_after(30):
            await sender.wait()
    finally:
        if sender.returncode is None:
            sender.kill()
            with trio.CancelScope(shield=True):
                await sender.wait()
    return {
        "size": size,
        "limit": limit,
        "seconds": elapsed,
        "bytes": taken[0],
        "messages": taken[1],
        "mb_per_s": taken[0] / elapsed / 1e6,
        "peak_rx_buffered": peak[0],
        "holds": after.rx_budget_holds - before.rx_budget_holds,
        "failures": after.rx_budget_failures,
        "stream_errors": after.stream_errors,
        "streams_left": after.streams,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/budget_sizes.py", description=__doc__)
    parser.add_argument("--connections", type=int, default=16, help="TCP connections (16)")
    parser.add_argument(
        "--sizes", nargs="+", default=["1MiB", "8MiB"], help="message sizes (1MiB 8MiB)"
    )
    parser.add_argument(
        "--limits",
        nargs="+",
        default=["none", "256MiB", "64MiB", "16MiB", "4MiB"],
        help='receive_memory_limit values, bytes or "none"',
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured (3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--send", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [_parse_size(s) for s in args.sizes]
    limits = [_parse_size(s) for s in args.limits]
    if any(s is None or s < 8 for s in sizes):
        parser.error("--sizes must be byte counts >= 8")
    if args.send is not None:
        assert sizes[0] is not None
        trio.run(_send, args.send, args.connections, sizes[0])
        return 0
    print(
        f"trio_kcm from {Path(trio_kcm.__file__).parent}, trio {trio.__version__}; "
        f"{args.connections} connections, {args.warmup:g} s warm-up + {args.duration:g} s "
        f"measured per case, {args.rounds} rounds",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        order = limits if round_ % 2 == 0 else limits[::-1]
        for size in sizes:
            assert size is not None
            for limit in order:
                r = trio.run(_case, args.connections, size, limit, args.warmup, args.duration)
                r["round"] = round_ + 1
                results.append(r)
                print(
                    f"round {round_ + 1}  {size // MiB} MiB messages  limit {_label(limit):>8}: "
                    f"{r['mb_per_s']:8,.0f} MB/s  peak rx_buffered "
                    f"{r['peak_rx_buffered'] / MiB:6.1f} MiB  holds {r['holds']:5}  "
                    f"ENOBUFS {r['failures']:2}  stream errors {r['stream_errors']:2}",
                    flush=True,
                )
    print("\nmedian of the rounds (MB/s; peak rx_buffered MiB, max of the rounds):")
    summary = []
    for size in sizes:
        assert size is not None
        for limit in limits:
            runs = [r for r in results if r["size"] == size and r["limit"] == limit]
            row = {
                "size": size,
                "limit": limit,
                "mb_per_s_median": statistics.median(r["mb_per_s"] for r in runs),
                "mb_per_s_all": [r["mb_per_s"] for r in runs],
                "peak_rx_buffered_max": max(r["peak_rx_buffered"] for r in runs),
                "failures_max": max(r["failures"] for r in runs),
                "stream_errors_max": max(r["stream_errors"] for r in runs),
            }
            summary.append(row)
            print(
                f"  {size // MiB} MiB messages  limit {_label(limit):>8}: "
                f"{row['mb_per_s_median']:8,.0f} MB/s "
                f"({', '.join(f'{x:,.0f}' for x in row['mb_per_s_all'])})  peak "
                f"{row['peak_rx_buffered_max'] / MiB:6.1f} MiB  ENOBUFS max "
                f"{row['failures_max']}  stream errors max {row['stream_errors_max']}"
            )
    if args.json:
        report = {
            "python": sys.version.split()[0],
            "trio": trio.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "connections": args.connections,
            "warmup": args.warmup,
            "duration": args.duration,
            "rounds": args.rounds,
            "hostname_cpus": socket.gethostname(),
            "results": results,
            "summary": summary,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
