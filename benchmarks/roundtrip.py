"""One round trip, counted: task steps, I/O waits and CPU per message, raw Trio vs trio-kcm.

``python benchmarks/roundtrip.py`` starts a plain blocking-socket echo server
in a separate process (loopback, whole 4-byte-length-prefixed frames echoed
back, the same server for every client), then, in this process, runs each
client kind over its own connection, one message in flight:

- ``raw``: ``send_all`` of the frame, then ``receive_some`` into a
  ``bytearray`` until one whole frame is there (benchmarks/worker.py's
  ``ping-raw`` client);
- ``kcm``: a mux (``LengthPrefixed(">I", adjust=4)``) with the stream
  attached, ``sock.send(frame)`` then ``sock.receive()`` (the ``ping-kcm``
  client).

Each client does ``--warmup`` round trips, then ``--rounds`` timed ones with
nothing installed (wall time per round trip, for the latency percentiles, and
this process's CPU time, ``time.process_time``, user + system), then
``--rounds`` more with a :class:`trio.abc.Instrument` installed that counts
``before_task_step`` per task and ``before_io_wait`` calls (each is one pass
of Trio's scheduler loop: ``timeout > 0`` means there was nothing to run and
the loop blocked in the kernel's poll, ``timeout == 0`` means it only
collected ready events between batches of runnable tasks).  The counts are
exact; the instrument costs CPU, so the CPU and latency columns come from the
uninstrumented pass (the instrumented pass's CPU is in the JSON as
``cpu_us_instrumented``).  The server's CPU is not counted.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

import trio_kcm

HEADER = struct.Struct(">I")
PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
READ_SIZE = 65536
CLIENTS = ("raw", "kcm")
# The server gives up on its own after this long, whatever happens.
SERVER_DEADLINE = 300.0


# ----------------------------------------------------------------------------
# The echo server (a separate process: ``--serve``)


def _serve(connections: int, deadline: float) -> int:
    """Echo whole frames back on ``connections`` connections, one after another."""
    give_up = time.monotonic() + deadline
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    print(listener.getsockname()[1], flush=True)
    unpack_from = HEADER.unpack_from
    try:
        for _ in range(connections):
            listener.settimeout(max(0.1, give_up - time.monotonic()))
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buf = bytearray()
                while True:
                    conn.settimeout(max(0.1, give_up - time.monotonic()))
                    data = conn.recv(READ_SIZE)
                    if not data:
                        break
                    buf += data
                    pos = 0
                    while len(buf) - pos >= 4:
                        end = pos + 4 + unpack_from(buf, pos)[0]
                        if end > len(buf):
                            break
                        pos = end
                    if pos:
                        conn.sendall(buf[:pos])
                        del buf[:pos]
    except (TimeoutError, OSError) as exc:
        print(f"echo server: {exc!r}", file=sys.stderr)
        return 1
    finally:
        listener.close()
    return 0


# ----------------------------------------------------------------------------
# The counting instrument


class Counts(trio.abc.Instrument):
    """Exact counts of task steps (per task name) and scheduler I/O waits."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()
        self.io_waits = 0
        self.io_waits_blocking = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1

    def before_io_wait(self, timeout: float) -> None:
        self.io_waits += 1
        if timeout > 0:
            self.io_waits_blocking += 1


class Trace(trio.abc.Instrument):
    """The order of task steps and I/O waits (``--trace``), for reading, not timing."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.events.append(f"step {task.name}")

    def before_io_wait(self, timeout: float) -> None:
        self.events.append(f"io_wait timeout={timeout:g}")


def _bucket(name: str, main: str) -> str:
    if name == main:
        return "main"
    if name.endswith("Receiver.reader"):
        return "reader"
    if name.endswith("Transmitter.writer"):
        return "writer"
    return "other"


# ----------------------------------------------------------------------------
# The clients


async def _read_frame(stream: trio.SocketStream, buf: bytearray) -> bytes:
    while True:
        if len(buf) >= 4:
            end = 4 + HEADER.unpack_from(buf, 0)[0]
            if len(buf) >= end:
                frame = bytes(buf[:end])
                del buf[:end]
                return frame
        data = await stream.receive_some(READ_SIZE)
        if not data:
            raise RuntimeError("the echo server closed the connection")
        buf += data


async def _passes(
    roundtrip: Any, frame: bytes, warmup: int, rounds: int, trace: int
) -> dict[str, Any]:
    """Warm up, then a timed pass and a counted pass of ``roundtrip()``."""
    for _ in range(warmup):
        if await roundtrip() != frame:
            raise RuntimeError("bad echo")
    events = []
    if trace:
        tracer = Trace()
        trio.lowlevel.add_instrument(tracer)
        for i in range(trace):
            tracer.events.append(f"-- round trip {i + 1}")
            if await roundtrip() != frame:
                raise RuntimeError("bad echo")
        trio.lowlevel.remove_instrument(tracer)
        events = tracer.events
    clock = time.perf_counter_ns
    samples = []
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for _ in range(rounds):
        t0 = clock()
        reply = await roundtrip()
        samples.append(clock() - t0)
        if reply != frame:
            raise RuntimeError("bad echo")
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0

    counts = Counts()
    trio.lowlevel.add_instrument(counts)
    cpu0 = time.process_time()
    try:
        for _ in range(rounds):
            if await roundtrip() != frame:
                raise RuntimeError("bad echo")
    finally:
        cpu_counted = time.process_time() - cpu0
        trio.lowlevel.remove_instrument(counts)

    main = trio.lowlevel.current_task().name
    by_bucket: Counter[str] = Counter()
    for name, n in counts.steps.items():
        by_bucket[_bucket(name, main)] += n
    samples.sort()
    return {
        "rounds": rounds,
        "p50_us": samples[len(samples) // 2] / 1e3,
        "p99_us": samples[min(len(samples) - 1, len(samples) * 99 // 100)] / 1e3,
        "mean_us": statistics.fmean(samples) / 1e3,
        "wall_us": wall / rounds * 1e6,
        "cpu_us": cpu / rounds * 1e6,
        "cpu_share": cpu / wall if wall else 0.0,
        "cpu_us_instrumented": cpu_counted / rounds * 1e6,
        "steps": sum(counts.steps.values()) / rounds,
        "steps_by": {b: by_bucket[b] / rounds for b in ("main", "reader", "writer", "other")},
        "steps_by_task": {name: n / rounds for name, n in counts.steps.most_common()},
        "io_waits": counts.io_waits / rounds,
        "io_waits_blocking": counts.io_waits_blocking / rounds,
        "trace": events,
    }


async def _client(
    kind: str, port: int, size: int, warmup: int, rounds: int, trace: int
) -> dict[str, Any]:
    frame = HEADER.pack(size) + b"x" * size
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    if kind == "raw":
        buf = bytearray()

        async def raw() -> bytes:
            await stream.send_all(frame)
            return await _read_frame(stream, buf)

        result = await _passes(raw, frame, warmup, rounds, trace)
        await stream.aclose()
        return result
    async with trio_kcm.open_mux(parser=PARSER) as mux:
        sock = mux.socket()
        mux.attach(stream)

        async def kcm() -> bytes:
            await sock.send(frame)
            return await sock.receive()

        result = await _passes(kcm, frame, warmup, rounds, trace)
    return result


# ----------------------------------------------------------------------------
# Output


def _table(kind: str, r: dict[str, Any]) -> str:
    by = r["steps_by"]
    lines = [
        f"{kind}: {r['rounds']} round trips",
        f"  p50 latency        {r['p50_us']:8.1f} us   (p99 {r['p99_us']:.1f}, "
        f"mean {r['mean_us']:.1f})",
        f"  CPU per round trip {r['cpu_us']:8.1f} us   ({r['cpu_share']:.0%} of wall; "
        f"{r['cpu_us_instrumented']:.1f} with the instrument)",
        f"  task steps         {r['steps']:8.2f}      main {by['main']:.2f}, "
        f"reader {by['reader']:.2f}, writer {by['writer']:.2f}, other {by['other']:.2f}",
        f"  I/O waits          {r['io_waits']:8.2f}      "
        f"blocking (timeout > 0) {r['io_waits_blocking']:.2f}",
    ]
    lines.append("  steps by task:")
    lines.extend(f"    {name}: {n:.2f}" for name, n in r["steps_by_task"].items() if n >= 0.005)
    if r["trace"]:
        lines.append("  trace (right after the warm-up):")
        lines.extend(f"    {event}" for event in r["trace"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/roundtrip.py", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5000, help="timed round trips (5000)")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up round trips (500)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (64)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS), help="(both)"
    )
    parser.add_argument(
        "--trace",
        type=int,
        default=0,
        metavar="K",
        help="also print the order of task steps and I/O waits of K round trips",
    )
    parser.add_argument("--serve", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        return _serve(args.serve, SERVER_DEADLINE)
    if args.rounds < 1 or args.warmup < 0 or args.size < 0 or args.trace < 0:
        parser.error("--rounds must be >= 1, --warmup, --size and --trace >= 0")

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(len(args.clients))],
        stdout=subprocess.PIPE,
        text=True,
    )
    results: dict[str, Any] = {}
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        where = Path(trio_kcm.__file__).parent
        print(
            f"trio_kcm from {where}, trio {trio.__version__}, payload {args.size} B, "
            f"{args.warmup} warm-up + {args.rounds} timed (+ {args.rounds} counted) round trips"
        )
        for kind in args.clients:
            result = trio.run(_client, kind, port, args.size, args.warmup, args.rounds, args.trace)
            results[kind] = result
            print(_table(kind, result), flush=True)
        code = server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if code != 0:
        print(f"the echo server exited with {code}", file=sys.stderr)
        return 1
    if args.json:
        report = {
            "python": sys.version.split()[0],
            "trio": trio.__version__,
            "size": args.size,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "clients": results,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
