"""How long a busy sender or receiver keeps another task waiting for its turn.

``python benchmarks/fairness.py`` runs, in one Trio run per case, a loop of
one-message-per-``await`` calls next to a *bystander*: a task that does
nothing but ``await trio.lowlevel.checkpoint()`` and notes the wall-clock gap between two
of its steps.  The gap is how long the loop (and the rest of the scheduler
pass) held the event loop; in raw Trio every ``send_all`` yields, so it is
the floor.  A trio-kcm send or receive that completes without waiting skips
its schedule point within a run (at most 64 calls and about a millisecond
after the mux's last yield; see docs/guarantees.md, "Checkpoints"), so its
gaps are longer: this measures by how much, and what the loop gains.

Cases (64 B messages over one loopback TCP connection, a sink or a feeder
task in the same process):

- ``raw-send``: ``await stream.send_all(frame)`` per message;
- ``kcm-send``: ``await sock.send(frame)`` per message;
- ``kcm-receive``: ``await sock.receive()`` per message, a feeder writing
  ~64 KiB of frames per ``send_all``;
- ``raw-send-work`` / ``kcm-send-work``: the same sends, each after ``--work``
  microseconds of pure-Python work (a busy loop): where the time bound, not
  the count, ends a run.

It prints the loop's rate (messages per wall second) and the bystander's gaps
(median, 99th percentile, largest) in microseconds.  Compare rows of one run
only: the machine's load moves them all.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import trio
from _loopback import CHUNK, PARSER, frame, sink, tcp_pair  # a neighbour: run as a script

import trio_kcm


class Bystander:
    """Steps as often as the scheduler lets it; notes the gaps between its steps."""

    def __init__(self) -> None:
        self.gaps: list[float] = []

    async def run(self) -> None:
        clock = time.perf_counter
        last = clock()
        gaps = self.gaps
        while True:
            await trio.lowlevel.checkpoint()
            now = clock()
            gaps.append(now - last)
            last = now


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _timed_sends(
    send: Callable[[bytes], Awaitable[object]], message: bytes, count: int, work: float
) -> float:
    """Seconds for ``count`` awaited sends, each after ``work`` seconds of work."""
    start = time.perf_counter()
    for _ in range(count):
        if work:
            _busy(work)
        await send(message)
    return time.perf_counter() - start


async def _send_loop(case: str, count: int, size: int, work: float) -> tuple[float, list[float]]:
    message = frame(size)
    client, server = await tcp_pair()
    bystander = Bystander()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink, server)
        if case.startswith("raw"):
            nursery.start_soon(bystander.run)
            elapsed = await _timed_sends(client.send_all, message, count, work)
            await client.aclose()
        else:
            async with trio_kcm.open_mux(parser=PARSER) as mux:
                mux.attach(client)
                sock = mux.socket()
                nursery.start_soon(bystander.run)
                elapsed = await _timed_sends(sock.send, message, count, work)
        nursery.cancel_scope.cancel()
    return count / elapsed, bystander.gaps


async def _receive_loop(case: str, count: int, size: int, work: float) -> tuple[float, list[float]]:
    message = frame(size)
    chunk = message * max(1, CHUNK // len(message))
    client, server = await tcp_pair()
    bystander = Bystander()

    async def feed() -> None:
        while True:
            await server.send_all(chunk)

    async with trio.open_nursery() as nursery, trio_kcm.open_mux(parser=PARSER) as mux:
        mux.attach(client)
        sock = mux.socket()
        nursery.start_soon(feed)
        nursery.start_soon(bystander.run)
        start = time.perf_counter()
        for _ in range(count):
            await sock.receive()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return count / elapsed, bystander.gaps


Loop = Callable[[str, int, int, float], Awaitable[tuple[float, list[float]]]]
CASES: dict[str, tuple[Loop, int]] = {
    "raw-send": (_send_loop, 50_000),
    "kcm-send": (_send_loop, 200_000),
    "kcm-receive": (_receive_loop, 200_000),
    "raw-send-work": (_send_loop, 5_000),
    "kcm-send-work": (_send_loop, 5_000),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/fairness.py", description=__doc__)
    parser.add_argument("cases", nargs="*", help=f"some of {', '.join(CASES)} (default: all)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (default 64)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the counts")
    parser.add_argument(
        "--work", type=float, default=50.0, help="microseconds of work per message (*-work cases)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    print(f"payload {args.size} B; *-work cases: {args.work:g} us of work per message")
    print()
    print("| case | msgs/s | bystander gap p50 | p99 | max | bystander steps |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in args.cases or CASES:
        run, count = CASES[case]
        work = args.work / 1e6 if case.endswith("-work") else 0.0
        rate, gaps = trio.run(run, case, max(64, int(count * args.scale)), args.size, work)
        gaps.sort()
        p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
        print(
            f"| {case} | {rate:,.0f} | {statistics.median(gaps) * 1e6:.1f} us"
            f" | {p99 * 1e6:.1f} us | {gaps[-1] * 1e6:.1f} us | {len(gaps):,} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
