"""A server mux at scale over loopback TCP: many connections, some hostile (issue 16).

``python benchmarks/scale.py`` starts a server in a separate process (this
script again, with ``--serve``): one mux (``LengthPrefixed(">I", adjust=4)``,
``receive_memory_limit`` from ``--limit``), ``trio.serve_tcp(mux.serve_stream,
0, backlog=--backlog)``, and ``--workers`` tasks that answer each request on
its own connection (``receive_from`` / ``send_to``: the request echoed).  It
takes commands on its stdin and answers each with one JSON line on its
stdout: its attached streams, ``mux.statistics()``, its RSS (``VmRSS``) and
peak RSS (``VmHWM``) from ``/proc/self/status``.

This process is the client.  Both raise their soft file limit to the hard
one.  In order:

1. *attach*: ``--connections`` C TCP connections, ``--batch`` at a time, at
   most ``--concurrency`` connects in flight; after each batch the server
   is asked to report once all so far are attached (so its accept queue
   never holds more than a batch).  Timed from the first connect to the
   server's report that all C are attached.  The server's RSS before the
   first connect and after the last attach, over C, is the memory per idle
   connection (nothing was sent on any of them yet).
2. *healthy*: ``--rr`` R of the connections run closed-loop request/response
   for ``--duration`` seconds: ``--depth`` requests of 64 B in flight each,
   a new one as each reply arrives; every round trip's latency is recorded.
3. *hostile*: a ``--hostile`` share H of the connections (not among the R)
   each send a header announcing ``--announce`` bytes, then all of the
   message but its last 100 bytes, as fast as the socket takes them, and
   never the rest; at the same instant the R connections start the same
   request/response load as in phase 2, for ``--duration`` seconds.  The
   server is sampled every ``--sample`` seconds (peak ``rx_buffered``,
   RSS); the latency of the second half of the phase is also given alone
   (the first half includes the flood's start).
4. *close*: the hostile senders stop (their messages stay incomplete); the
   server cancels its serve_tcp nursery and leaves its ``open_mux`` block,
   timed from the cancel to the block's return; then this process closes
   its C sockets, timed.

Both processes share the machine; the client's own CPU is part of what the
latencies measure.  ``--json PATH`` writes every figure.  The server's
``trio_kcm`` logger is set to ERROR (10,000 streams leaving log 10,000
lines otherwise); the log's cost is not measured.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

import trio_kcm

HEADER = struct.Struct(">I")
PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
PAYLOAD = 64
#: Bytes of its message a hostile connection never sends.
WITHHELD = 100
#: Either process gives up on its own after this long, whatever happens.
SERVER_DEADLINE = 900.0


def _raise_fd_limit() -> int:
    """Raise the soft file limit to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _status() -> dict[str, int]:
    """This process's VmRSS and VmHWM, in KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return {"rss_kib": out["VmRSS"], "hwm_kib": out["VmHWM"]}


def _sockstat() -> dict[str, int]:
    """The machine's TCP sockets: in use, in TIME_WAIT, and kernel buffer memory (KiB)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()[1:]
                values = dict(zip(fields[::2], map(int, fields[1::2]), strict=True))
                page = os.sysconf("SC_PAGESIZE") // 1024
                return {
                    "inuse": values["inuse"],
                    "tw": values["tw"],
                    "mem_kib": values["mem"] * page,
                }
    return {}


def _parse_size(text: str) -> int:
    units = {
        "k": 1 << 10,
        "kib": 1 << 10,
        "m": 1 << 20,
        "mib": 1 << 20,
        "g": 1 << 30,
        "gib": 1 << 30,
    }
    lower = text.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if lower.endswith(unit):
            return int(float(lower[: -len(unit)]) * units[unit])
    return int(lower)


def _parse_limit(text: str) -> int | None:
    return None if text.strip().lower() == "none" else _parse_size(text)


# ----------------------------------------------------------------------------
# The server (a separate process: ``--serve``)


async def _lines(stream: trio.abc.ReceiveStream) -> Any:
    buf = b""
    while True:
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            yield line.decode()
        data = await stream.receive_some(65536)
        if not data:
            return
        buf += data


def _reply(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _serve(
    limit: int | None, workers: int, backlog: int, fd_limit: int, monitor: bool
) -> None:
    logging.getLogger("trio_kcm").setLevel(logging.ERROR)
    answered = [0]
    errors: dict[str, int] = {}

    async def watch(mux: trio_kcm.Mux) -> None:
        # Take each StreamError as it comes (as examples/server.py does): one
        # left in the queue keeps its partial message's bytes.
        async for error in mux.errors():
            name = "peer_closed" if error.peer_closed else errno.errorcode.get(error.errno, "?")
            errors[name] = errors.get(name, 0) + 1

    async def worker(sock: trio_kcm.KCMSocket) -> None:
        try:
            while True:
                request, client = await sock.receive_from()
                await sock.send_to(request, client)
                answered[0] += 1
        except trio.ClosedResourceError:
            return

    def report(mux: trio_kcm.Mux, **more: Any) -> None:
        _reply(
            stats=asdict(mux.statistics()),
            answered=answered[0],
            errors=dict(errors),
            **_status(),
            **more,
        )

    control = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    closing: dict[str, float] = {}
    with trio.fail_after(SERVER_DEADLINE):
        async with trio_kcm.open_mux(parser=PARSER, receive_memory_limit=limit) as mux:
            async with trio.open_nursery() as nursery:
                serve = functools.partial(trio.serve_tcp, host="127.0.0.1", backlog=backlog)
                listeners = await nursery.start(serve, mux.serve_stream, 0)
                first = mux.socket()
                for sock in [first, *(first.clone() for _ in range(workers - 1))]:
                    nursery.start_soon(worker, sock)
                if monitor:
                    nursery.start_soon(watch, mux)
                _reply(port=listeners[0].socket.getsockname()[1], fd_limit=fd_limit)
                async for line in _lines(control):
                    command, _, arg = line.partition(" ")
                    if command == "stats":
                        report(mux)
                    elif command == "wait":
                        # Report once ``arg`` streams are attached (or 60 s passed).
                        want = int(arg)
                        # (Polled: no event says "N streams attached".)
                        with trio.move_on_after(60):
                            while mux.statistics().streams < want:  # noqa: ASYNC110
                                await trio.sleep(0.002)
                        report(mux)
                    elif command == "close":
                        break
                    else:
                        raise ValueError(f"unknown command {line!r}")
                before = mux.statistics()
                closing["streams"] = before.streams
                closing["start"] = time.perf_counter()
                nursery.cancel_scope.cancel()
            closing["handlers_done"] = time.perf_counter()
        closing["mux_closed"] = time.perf_counter()
    after = mux.statistics()
    _reply(
        closed_streams=int(closing["streams"]),
        close_handlers_s=closing["handlers_done"] - closing["start"],
        close_s=closing["mux_closed"] - closing["start"],
        stats=asdict(after),
        answered=answered[0],
        errors=dict(errors),
        **_status(),
    )
    await control.aclose()


# ----------------------------------------------------------------------------
# The client


class Server:
    """The server process and its control pipe."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._lines = _lines(process.stdout)

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(command.encode() + b"\n")
        return await self.read()

    async def read(self) -> dict[str, Any]:
        try:
            line = await self._lines.__anext__()
        except StopAsyncIteration:
            raise RuntimeError("the server exited") from None
        answer: dict[str, Any] = json.loads(line)
        return answer


def _percentiles(samples: list[int]) -> dict[str, float]:
    if not samples:
        return {"count": 0, "p50_us": 0.0, "p99_us": 0.0, "max_us": 0.0}
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "count": n,
        "p50_us": ordered[n // 2] / 1e3,
        "p99_us": ordered[min(n - 1, n * 99 // 100)] / 1e3,
        "max_us": ordered[-1] / 1e3,
    }


async def _read_frames(sock: trio.socket.SocketType, buf: bytearray, count: int) -> None:
    """Read ``count`` whole frames (the echoed requests) from ``sock``."""
    while count:
        while len(buf) >= 4:
            end = 4 + HEADER.unpack_from(buf, 0)[0]
            if len(buf) < end:
                break
            if end != 4 + PAYLOAD:
                raise RuntimeError(f"a reply of {end} bytes")
            del buf[:end]
            count -= 1
            if not count:
                return
        data = await sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed a request/response connection")
        buf += data


async def _request_response(
    socks: list[trio.socket.SocketType], depth: int, duration: float
) -> dict[str, Any]:
    """Closed-loop request/response on each of ``socks`` for ``duration`` seconds."""
    request = HEADER.pack(PAYLOAD) + b"r" * PAYLOAD
    clock = time.perf_counter_ns
    # (start, latency) of each round trip, in ns.
    samples: list[tuple[int, int]] = []
    start = clock()
    end = start + int(duration * 1e9)

    async def loop(sock: trio.socket.SocketType) -> None:
        buf = bytearray()
        sent: list[int] = []
        # ``depth`` requests in flight; replies come back in order on a connection.
        for _ in range(depth):
            sent.append(clock())
            await sock.send(request)
        while sent:
            await _read_frames(sock, buf, 1)
            now = clock()
            t0 = sent.pop(0)
            samples.append((t0, now - t0))
            if now < end:
                sent.append(clock())
                await sock.send(request)

    async with trio.open_nursery() as nursery:
        for sock in socks:
            nursery.start_soon(loop, sock)
    elapsed = (clock() - start) / 1e9
    middle = start + (end - start) // 2
    result: dict[str, Any] = {
        "connections": len(socks),
        "depth": depth,
        "seconds": elapsed,
        "requests": len(samples),
        "requests_per_s": len(samples) / elapsed,
        **_percentiles([lat for _, lat in samples]),
        "second_half": _percentiles([lat for t0, lat in samples if t0 >= middle]),
    }
    return result


async def _hostile(
    sock: trio.socket.SocketType, message: memoryview, progress: dict[str, int]
) -> None:
    """Send all of ``message`` as fast as ``sock`` takes it; stop on an error."""
    pos = 0
    try:
        while pos < len(message):
            pos += await sock.send(message[pos : pos + 262144])
        progress["done"] += 1
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "other")
        progress[name] = progress.get(name, 0) + 1
    finally:
        progress["bytes"] += pos


async def _client(args: argparse.Namespace, fd_limit: int) -> dict[str, Any]:
    limit = _parse_limit(args.limit)
    command = [
        sys.executable,
        __file__,
        "--serve",
        "--limit",
        args.limit,
        "--workers",
        str(args.workers),
        "--backlog",
        str(args.backlog),
        *(["--ignore-errors"] if args.ignore_errors else []),
    ]
    result: dict[str, Any] = {
        "connections": args.connections,
        "hostile": 0,
        "rr": args.rr,
        "depth": args.depth,
        "duration": args.duration,
        "announce": args.announce,
        "limit": limit,
        "workers": args.workers,
        "server_reads_errors": not args.ignore_errors,
        "fd_limit_client": fd_limit,
    }
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    socks: list[trio.socket.SocketType] = []
    try:
        server = Server(process)
        hello = await server.read()
        port = hello["port"]
        result["fd_limit_server"] = hello["fd_limit"]
        base = await server.ask("stats")
        result["server_before"] = {k: base[k] for k in ("rss_kib", "hwm_kib")}
        result["sockstat_before"] = _sockstat()

        # 1. Attach.
        connects = trio.CapacityLimiter(args.concurrency)

        async def connect() -> None:
            async with connects:
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await sock.connect(("127.0.0.1", port))
                socks.append(sock)

        t0 = time.perf_counter()
        for first in range(0, args.connections, args.batch):
            count = min(args.batch, args.connections - first)
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(connect)
            attached = await server.ask(f"wait {len(socks)}")
            if attached["stats"]["streams"] < len(socks):
                raise RuntimeError(
                    f"{len(socks)} connected, only {attached['stats']['streams']} attached"
                )
        attach_s = time.perf_counter() - t0
        idle = await server.ask("stats")
        rss_growth = idle["rss_kib"] - base["rss_kib"]
        result["attach"] = {
            "seconds": attach_s,
            "attached": idle["stats"]["streams"],
            "per_s": args.connections / attach_s,
            "server_rss_kib": idle["rss_kib"],
            "server_rss_growth_kib": rss_growth,
            "server_rss_per_connection_bytes": rss_growth * 1024 / args.connections,
            "client_rss_kib": _status()["rss_kib"],
            "sockstat": _sockstat(),
        }
        print(
            f"attach: {idle['stats']['streams']} connections in {attach_s:.2f} s "
            f"({args.connections / attach_s:,.0f}/s); server RSS "
            f"{base['rss_kib'] / 1024:.1f} -> {idle['rss_kib'] / 1024:.1f} MiB = "
            f"{rss_growth * 1024 / args.connections:,.0f} B per idle connection",
            flush=True,
        )

        # Which connections do what: hostile ones spread evenly, R from the rest.
        hostile_count = round(args.connections * args.hostile)
        step = args.connections / hostile_count if hostile_count else 0
        hostile_idx = {int(i * step) for i in range(hostile_count)}
        hostile = [socks[i] for i in sorted(hostile_idx)]
        others = [s for i, s in enumerate(socks) if i not in hostile_idx]
        if len(others) < args.rr:
            raise RuntimeError(f"only {len(others)} connections are not hostile, {args.rr} asked")
        healthy = others[: args.rr]
        result["hostile"] = len(hostile)

        # 2. Healthy traffic alone.
        calm = await _request_response(healthy, args.depth, args.duration)
        calm["server"] = await server.ask("stats")
        result["healthy"] = calm
        print(
            f"healthy ({args.rr} connections): {calm['requests_per_s']:,.0f} req/s, "
            f"p50 {calm['p50_us']:.0f} us, p99 {calm['p99_us']:.0f} us",
            flush=True,
        )

        # 3. The same with the hostile share flooding.
        message = memoryview(HEADER.pack(args.announce - 4) + b"h" * (args.announce - 4 - WITHHELD))
        progress = {"bytes": 0, "done": 0}
        samples: list[dict[str, Any]] = []

        async def sample(stop: trio.Event, done: trio.Event) -> None:
            t_start = time.perf_counter()
            while not stop.is_set():
                with trio.move_on_after(args.sample):
                    await stop.wait()
                s = await server.ask("stats")
                s["t"] = time.perf_counter() - t_start
                samples.append(s)
            done.set()

        async with trio.open_nursery() as flood:
            for sock in hostile:
                flood.start_soon(_hostile, sock, message, progress)
            stop, sampled = trio.Event(), trio.Event()
            flood.start_soon(sample, stop, sampled)
            loaded = await _request_response(healthy, args.depth, args.duration)
            stop.set()
            # The sampler's last sample is taken after the traffic ended;
            # then the senders stop.
            await sampled.wait()
            flood.cancel_scope.cancel()
        last = samples[-1]
        st = last["stats"]
        loaded["server"] = last
        loaded["hostile_connections"] = len(hostile)
        loaded["hostile_announced_bytes"] = args.announce * len(hostile)
        loaded["hostile_sent_bytes"] = progress["bytes"]
        loaded["hostile_senders_done"] = progress["done"]
        loaded["hostile_send_errors"] = {
            k: v for k, v in progress.items() if k not in ("bytes", "done")
        }
        loaded["peak_rx_buffered"] = max(s["stats"]["rx_buffered"] for s in samples)
        loaded["peak_rx_budget_waiting"] = max(s["stats"]["rx_budget_waiting"] for s in samples)
        loaded["peak_server_rss_kib"] = max(s["rss_kib"] for s in samples)
        loaded["server_hwm_kib"] = last["hwm_kib"]
        loaded["sockstat"] = _sockstat()
        loaded["samples"] = [
            {
                "t": s["t"],
                "rss_kib": s["rss_kib"],
                "rx_buffered": s["stats"]["rx_buffered"],
                "rx_budget_waiting": s["stats"]["rx_budget_waiting"],
                "rx_budget_holds": s["stats"]["rx_budget_holds"],
                "rx_budget_failures": s["stats"]["rx_budget_failures"],
                "streams": s["stats"]["streams"],
            }
            for s in samples
        ]
        result["hostile_phase"] = loaded
        print(
            f"with {len(hostile)} hostile ({args.announce:,} B announced each, "
            f"{progress['bytes'] / 2**20:,.0f} MiB sent in all): "
            f"{loaded['requests_per_s']:,.0f} req/s, p50 {loaded['p50_us']:.0f} us, "
            f"p99 {loaded['p99_us']:.0f} us (second half: p99 "
            f"{loaded['second_half']['p99_us']:.0f} us)",
            flush=True,
        )
        print(
            f"  server: RSS {last['rss_kib'] / 1024:,.1f} MiB "
            f"(peak {last['hwm_kib'] / 1024:,.1f}), "
            f"rx_buffered {st['rx_buffered'] / 2**20:,.1f} MiB "
            f"(peak {loaded['peak_rx_buffered'] / 2**20:,.1f}), "
            f"waiting {st['rx_budget_waiting']}, holds {st['rx_budget_holds']}, "
            f"failures {st['rx_budget_failures']}, stream errors {st['stream_errors']}, "
            f"streams {st['streams']}; errors {last['errors']}",
            flush=True,
        )

        # 4. Close: the server first, then this side.
        assert process.stdin is not None
        await process.stdin.send_all(b"close\n")
        closed = await server.read()
        t0 = time.perf_counter()
        for sock in socks:
            sock.close()
        client_close = time.perf_counter() - t0
        socks.clear()
        result["close"] = {
            "server_streams": closed["closed_streams"],
            "server_handlers_s": closed["close_handlers_s"],
            "server_s": closed["close_s"],
            "client_s": client_close,
            "server_hwm_kib": closed["hwm_kib"],
            "server_final": closed["stats"],
        }
        print(
            f"close: server {closed['closed_streams']} streams in {closed['close_s']:.2f} s "
            f"(handlers out in {closed['close_handlers_s']:.2f} s); client "
            f"{args.connections} sockets in {client_close:.2f} s; server peak RSS "
            f"{closed['hwm_kib'] / 1024:,.1f} MiB",
            flush=True,
        )
        await process.stdin.aclose()
        with trio.fail_after(60):
            code = await process.wait()
        if code != 0:
            raise RuntimeError(f"the server exited with {code}")
    finally:
        for sock in socks:
            sock.close()
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    return result


async def _bounded(args: argparse.Namespace, fd_limit: int) -> dict[str, Any]:
    # A hang fails the run (the server is killed on the way out).
    with trio.fail_after(SERVER_DEADLINE):
        return await _client(args, fd_limit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/scale.py", description=__doc__)
    parser.add_argument("--connections", "-c", type=int, default=10_000, help="C (10000)")
    parser.add_argument(
        "--hostile", type=float, default=0.1, help="share of C that is hostile (0.1)"
    )
    parser.add_argument("--rr", type=int, default=100, help="request/response connections (100)")
    parser.add_argument("--depth", type=int, default=1, help="requests in flight on each (1)")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds of each traffic phase (5)"
    )
    parser.add_argument(
        "--announce", default="4MiB", help="the length a hostile header announces (4MiB)"
    )
    parser.add_argument(
        "--limit", default="64MiB", help='receive_memory_limit: bytes or "none" (64MiB)'
    )
    parser.add_argument("--workers", type=int, default=4, help="server worker tasks (4)")
    parser.add_argument("--backlog", type=int, default=4096, help="listen backlog (4096)")
    parser.add_argument("--batch", type=int, default=1000, help="connections per batch (1000)")
    parser.add_argument("--concurrency", type=int, default=200, help="connects in flight (200)")
    parser.add_argument(
        "--sample", type=float, default=0.25, help="seconds between server samples (0.25)"
    )
    parser.add_argument(
        "--ignore-errors",
        action="store_true",
        help="the server does not read mux.errors() (they queue, up to 1,024)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    fd_limit = _raise_fd_limit()
    try:
        limit = _parse_limit(args.limit)
        args.announce = _parse_size(args.announce)
    except ValueError as exc:
        parser.error(str(exc))
    if args.serve:
        trio.run(_serve, limit, args.workers, args.backlog, fd_limit, not args.ignore_errors)
        return 0
    if not 0 <= args.hostile < 1 or args.connections < 1 or args.rr < 1 or args.depth < 1:
        parser.error("--hostile must be in [0, 1), --connections, --rr and --depth >= 1")
    if args.announce <= WITHHELD + 4:
        parser.error(f"--announce must be > {WITHHELD + 4}")
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    allowed = min(fd_limit - 64, high - low + 1)
    if args.connections > allowed:
        print(
            f"file limit {fd_limit}, ephemeral ports {low}-{high}: "
            f"{allowed} connections at most, not {args.connections}",
            file=sys.stderr,
        )
        args.connections = allowed
    print(
        f"trio_kcm from {Path(trio_kcm.__file__).parent}, trio {trio.__version__}, "
        f"file limit {fd_limit}; {args.connections} connections, "
        f"{args.hostile:.0%} hostile announcing {args.announce:,} B, {args.rr} request/response "
        f"x {args.depth} in flight, {args.duration:g} s per phase, "
        f"receive_memory_limit={limit if limit is None else f'{limit:,}'}",
        flush=True,
    )
    result = trio.run(_bounded, args, fd_limit)
    if args.json:
        report = {
            "python": sys.version.split()[0],
            "trio": trio.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            **result,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
