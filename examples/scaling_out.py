"""Scaling out: one process per core, each with its own mux, on one shared port.

A mux lives in one process and runs in one Trio thread, so it uses one core.
To use more, run more processes, each with its own mux, and let the kernel
spread the clients: every server process opens its own listening socket on
the same port with ``SO_REUSEPORT``, and Linux hands each new connection to
one of them (chosen by a hash of the connection's addresses and ports, so
not round robin).  Connections are spread, not messages: a connection and
all its requests stay with the process that accepted it, and so do its
replies (``receive_from`` / ``send_to``).

This script is the whole setup, on 127.0.0.1:

- it starts N server processes (this file again, with ``--serve``), each with
  its own ``trio.run``, its own mux and its own listening socket, and waits
  until each says it is listening;
- it runs C client connections, each sending R length-prefixed requests
  pipelined and checking every reply (a reply names the process that sent
  it); ``--client-processes K`` runs them in K processes of their own rather
  than in this one;
- it prints how many connections each server process got (as the kernel
  spread them: the split need not be even) and the throughput;
- it stops the servers by closing their stdin: each flushes its replies,
  closes its mux and reports what it served.  If anything fails, leaving the
  nursery terminates whatever is still running, and a server whose parent
  dies sees its stdin close too: no process is left behind.

``--measure PAIRS`` runs the same load on 1 and on N server processes,
alternating, and prints the throughputs and their ratios (see
docs/scaling.md).

Run: ``python examples/scaling_out.py [processes] [connections] [requests-per-connection]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
HOST = "127.0.0.1"
WORKERS = 3  # worker tasks per server process
CHUNK = 64  # requests per send_all on the client side
ME = [sys.executable, os.path.abspath(__file__)]  # this script, in another process


# --- a server process ----------------------------------------------------------


async def reuseport_listener(port: int) -> trio.SocketListener:
    """A listening socket of this process's own on the shared port."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
    await sock.bind((HOST, port))
    sock.listen(128)
    return trio.SocketListener(sock)


async def worker(sock: trio_kcm.KCMSocket, index: int) -> None:
    """Answer each request on the connection it came on, naming this process."""
    try:
        while True:
            request, client = await sock.receive_from()
            reply = PARSER.frame(b"process %d: %s" % (index, request[4:]))
            try:
                await sock.send_to(reply, client)
            except trio.BrokenResourceError:
                pass  # that client is gone; the others are not
    except trio.ClosedResourceError:
        return  # the mux closed


def tell_parent(line: str) -> None:
    """One line to the parent on stdout; nothing if it is gone."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as Python's docs say


async def until_stdin_closes() -> None:
    """The parent's signal: it closes our stdin (or exits)."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(4096):
            pass


async def serve(index: int, port: int) -> None:
    """One server process: its own mux behind its own SO_REUSEPORT listener."""
    listener = await reuseport_listener(port)
    async with trio_kcm.open_mux(parser=PARSER) as mux:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, mux.serve_stream, [listener])
            first = mux.socket()
            workers = [first, *(first.clone() for _ in range(WORKERS - 1))]
            for sock in workers:
                nursery.start_soon(worker, sock, index)
            tell_parent(f"listening {index} {os.getpid()}")
            cpu = time.process_time()
            await until_stdin_closes()
            for sock in workers:
                await sock.flush()
            nursery.cancel_scope.cancel()  # stops accepting, closes the listener
        stats = mux.statistics()
    cpu = time.process_time() - cpu
    tell_parent(f"served {index} {stats.psock_attach} {stats.rx_msgs} {cpu:.3f}")


# --- the clients ---------------------------------------------------------------


async def exchange(stream: trio.SocketStream, name: int, requests: int) -> int:
    """Send ``requests`` requests pipelined, check every reply; return the server's index."""
    payloads = [b"connection %d request %d" % (name, n) for n in range(requests)]
    frames = [PARSER.frame(p) for p in payloads]

    async def send() -> None:
        for start in range(0, requests, CHUNK):
            await stream.send_all(b"".join(frames[start : start + CHUNK]))

    replies: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        buffer = b""
        while len(replies) < requests:
            data = await stream.receive_some(65536)
            if not data:
                raise RuntimeError(f"connection {name}: closed after {len(replies)} replies")
            buffer += data
            pos = 0
            while len(buffer) - pos >= 4:
                end = pos + 4 + struct.unpack_from(">I", buffer, pos)[0]
                if end > len(buffer):
                    break
                replies.append(buffer[pos + 4 : end])
                pos = end
            buffer = buffer[pos:]
    process = int(replies[0].split(b":", 1)[0].split()[1])
    expected = sorted(b"process %d: %s" % (process, p) for p in payloads)
    if sorted(replies) != expected:
        raise AssertionError(f"connection {name}: wrong replies")
    return process


@dataclass
class Load:
    start: float  # time.monotonic(): one clock for every process on the machine
    end: float
    cpu: float  # CPU seconds the clients' process used meanwhile
    served_by: list[int]  # the server process of each connection


async def run_load(
    port: int, connections: int, requests: int, first: int, ready: Callable[[], Awaitable[None]]
) -> Load:
    """Connect, wait for ``ready()``, then run every connection's requests at once."""
    streams = [await trio.open_tcp_stream(HOST, port) for _ in range(connections)]
    served_by = [-1] * connections
    try:
        await ready()

        async def one(i: int) -> None:
            served_by[i] = await exchange(streams[i], first + i, requests)

        start, cpu = time.monotonic(), time.process_time()
        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(one, i)
        end, cpu = time.monotonic(), time.process_time() - cpu
    finally:
        for stream in streams:
            await stream.aclose()
    return Load(start, end, cpu, served_by)


async def load_process(port: int, connections: int, requests: int, first: int) -> None:
    """A client process: connect, say so, start when stdin closes, report."""

    async def ready() -> None:
        tell_parent("ready")
        await until_stdin_closes()

    load = await run_load(port, connections, requests, first, ready)
    tell_parent(" ".join(map(str, ["done", load.start, load.end, load.cpu, *load.served_by])))


# --- the parent ----------------------------------------------------------------


class Lines:
    """Lines from a child process's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream, name: str) -> None:
        self.stream, self.name, self.buffer = stream, name, b""

    async def next(self) -> list[str]:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(4096)
            if not data:
                raise RuntimeError(f"{self.name} exited early")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode().split()


def reserve_port() -> socket.socket:
    """A free port, held (bound, not listening) until the servers listen on it."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((HOST, 0))
    return holder


@dataclass
class Result:
    connections: list[int]  # per server process, as the servers counted them
    requests: list[int]  # per server process
    seconds: float
    total: int
    server_cpu: list[float]  # CPU seconds per server process, while it listened
    client_cpu: float  # CPU seconds of the clients, all processes together

    @property
    def rate(self) -> float:
        return self.total / self.seconds


async def run(processes: int, connections: int, requests: int, client_processes: int) -> Result:
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    holder = reserve_port()
    port = holder.getsockname()[1]
    async with trio.open_nursery() as nursery:
        # Leaving this nursery with an exception cancels run_process, which
        # terminates its process: nothing outlives a failure.
        servers = []
        for i in range(processes):
            command = [*ME, "--serve", str(i), str(port)]
            servers.append(
                await nursery.start(functools.partial(trio.run_process, command, **pipes))
            )
        outputs = [Lines(s.stdout, f"server process {i}") for i, s in enumerate(servers)]
        try:
            for out in outputs:
                assert (await out.next())[0] == "listening"
        finally:
            holder.close()

        if client_processes == 0:

            async def go() -> None:
                pass

            loads = [await run_load(port, connections, requests, 0, go)]
        else:
            clients, first = [], 0
            for k in range(client_processes):
                share = len(range(k, connections, client_processes))
                command = [*ME, "--load", str(port), str(share), str(requests), str(first)]
                first += share
                clients.append(
                    await nursery.start(functools.partial(trio.run_process, command, **pipes))
                )
            client_out = [Lines(c.stdout, f"client process {k}") for k, c in enumerate(clients)]
            for out in client_out:
                assert (await out.next()) == ["ready"]
            for c in clients:
                await c.stdin.aclose()  # go
            loads = []
            for out in client_out:
                done = await out.next()
                assert done[0] == "done"
                start, end, cpu = map(float, done[1:4])
                loads.append(Load(start, end, cpu, [int(x) for x in done[4:]]))

        for s in servers:
            await s.stdin.aclose()  # stop
        reports = [await out.next() for out in outputs]

    assert [r[:2] for r in reports] == [["served", str(i)] for i in range(processes)]
    counted = [int(r[2]) for r in reports]
    served_by = [p for load in loads for p in load.served_by]
    # What the servers counted is what the clients saw.
    assert counted == [served_by.count(i) for i in range(processes)], (counted, served_by)
    return Result(
        connections=counted,
        requests=[int(r[3]) for r in reports],
        seconds=max(load.end for load in loads) - min(load.start for load in loads),
        total=connections * requests,
        server_cpu=[float(r[4]) for r in reports],
        client_cpu=sum(load.cpu for load in loads),
    )


async def main(processes: int, connections: int, requests: int, client_processes: int) -> None:
    result = await run(processes, connections, requests, client_processes)
    where = f"in {client_processes} client processes" if client_processes else "in the parent"
    print(
        f"{processes} processes served {connections} connections x {requests} requests: "
        "all replies correct"
    )
    print(f"connections per process: {result.connections}")
    print(f"requests per process: {result.requests}")
    print(
        f"throughput: {result.rate:.0f} requests/s "
        f"({result.total} requests in {result.seconds:.3f} s, clients {where})"
    )
    print(f"CPU seconds: servers {result.server_cpu}, clients {result.client_cpu:.3f}")


async def measure(
    pairs: int, processes: int, connections: int, requests: int, client_processes: int
) -> None:
    """1 and N server processes, the same load, alternating; the ratio of each pair."""
    where = f"in {client_processes} client processes" if client_processes else "in the parent"
    print(f"{connections} connections x {requests} requests, clients {where}")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    ratios = []
    for pair in range(pairs):
        order = (1, processes) if pair % 2 == 0 else (processes, 1)
        rate = {}
        for n in order:
            result = await run(n, connections, requests, client_processes)
            rate[n] = result.rate
            print(
                f"pair {pair + 1}: {n} process(es): {result.rate:.0f} requests/s "
                f"in {result.seconds:.2f} s, connections per process {result.connections}, "
                f"CPU s: servers {result.server_cpu} clients {result.client_cpu:.2f}"
            )
        ratios.append(rate[processes] / rate[1])
        clock = time.strftime("%H:%M:%S")  # to set beside whatever else ran on the machine
        print(f"pair {pair + 1}: ratio {processes}/1 = {ratios[-1]:.2f} (ended {clock})")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"ratios: {[round(r, 2) for r in ratios]}")
    print(
        f"median ratio ({processes} processes / 1 process) over {pairs} pairs: "
        f"{statistics.median(ratios):.2f}"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("processes", type=int, nargs="?", default=2)
    parser.add_argument("connections", type=int, nargs="?", default=8)
    parser.add_argument("requests", type=int, nargs="?", default=200)
    parser.add_argument("--client-processes", type=int, default=0, metavar="K")
    parser.add_argument("--measure", type=int, default=0, metavar="PAIRS")
    args = parser.parse_args()
    if args.measure:
        trio.run(
            measure,
            args.measure,
            args.processes,
            args.connections,
            args.requests,
            args.client_processes,
        )
    else:
        trio.run(main, args.processes, args.connections, args.requests, args.client_processes)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        trio.run(serve, int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["--load"]:
        trio.run(load_process, *map(int, sys.argv[2:]))
    else:
        cli()
