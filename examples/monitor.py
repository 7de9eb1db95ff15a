"""The monitoring task: unattach, close, reconnect with backoff, watch TCP_INFO.

The kernel's KCM leaves failed connections to the application: it posts an
error on the TCP socket and expects a monitor to unattach and close it.  With
``auto_close=False`` a trio-kcm mux works the same way, and ``mux.errors()``
is the monitor's feed.  For each :class:`trio_kcm.StreamError` the monitor
here

1. logs it, with the connection's ``TCP_INFO`` (``handle.tcp_info()``:
   retransmits, round-trip time) -- the stream is still open, so the kernel
   still has them -- and the messages in doubt;
2. unattaches the stream (``await mux.unattach(handle)``) and closes it;
3. connects a replacement in its own task, with exponential backoff and "full
   jitter" (each wait is uniform in ``[0, min(cap, base * 2**k)]``, so that
   clients that lost the same server do not all come back at once), and
   attaches it.

A second task logs every live connection's ``TCP_INFO`` now and then: rising
retransmits or round-trip times are the early warning the kernel's KCM
document recommends watching.

The backend is an echo server that drops each connection after a random
number of messages and then refuses connections for a moment (its listener
is closed), so the monitor has work and the backoff has something to wait
for.  A dropped connection takes with it the requests it had read and not
answered: as in the kernel, a message whose write completed counts as sent.
The mux resends what it had not finished writing (``tx_retries``, and the
in-doubt messages since ``retry_in_doubt=True``); the application resends a
request whose reply does not come within a timeout, and ignores duplicate
replies.  Messages keep flowing over the connections that are up.

Run: ``python examples/monitor.py [connections] [requests]``.
"""

from __future__ import annotations

import errno
import logging
import random
import struct
import sys
from dataclasses import dataclass, field

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
HEADER = struct.Struct(">I")
log = logging.getLogger("monitor")


# -- the flaky backend ---------------------------------------------------------


@dataclass
class FlakyBackend:
    """An echo server that drops connections and goes down for a moment after each drop."""

    drop_after: tuple[int, int] = (40, 80)  # messages echoed before a drop, at random
    outage: float = 0.05  # seconds the listener stays closed after a drop
    rng: random.Random = field(default_factory=random.Random)
    port: int = 0
    drops: int = 0
    _up: trio.CancelScope = field(default_factory=trio.CancelScope)
    _down: trio.Event = field(default_factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        async with trio.open_nursery() as connections:
            while True:
                with self._up:
                    await trio.serve_listeners(self._echo, listeners, handler_nursery=connections)
                self._down.set()  # serve_listeners closed the listener: connects are refused
                await trio.sleep(self.outage)
                self._up, self._down = trio.CancelScope(), trio.Event()
                listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")

    async def _echo(self, stream: trio.SocketStream) -> None:
        limit = self.rng.randint(*self.drop_after)
        echoed = 0
        buffer = b""
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= 4 + HEADER.unpack_from(buffer)[0]:
                    size = 4 + HEADER.unpack_from(buffer)[0]
                    message, buffer = buffer[:size], buffer[size:]
                    try:
                        await stream.send_all(message)
                    except trio.BrokenResourceError:
                        return
                    echoed += 1
                    if echoed == limit:  # drop it, with whatever else it had read
                        self.drops += 1
                        self._up.cancel()
                        await self._down.wait()
                        return


# -- the monitor ---------------------------------------------------------------


def describe_tcp(handle: trio_kcm.AttachedStream) -> str:
    info = handle.tcp_info()
    if info is None:
        return "no TCP_INFO"
    return (
        f"rtt={info.rtt}us rttvar={info.rttvar}us retransmits={info.retransmits}"
        f" total_retrans={info.total_retrans}"
    )


@dataclass
class Monitor:
    """Watches ``mux.errors()``; replaces each failed connection."""

    mux: trio_kcm.Mux
    port: int
    base: float = 0.01  # first backoff ceiling, seconds
    cap: float = 0.5  # largest backoff ceiling, seconds
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    reconnects: int = 0
    refused: int = 0

    async def run(self) -> None:
        async with trio.open_nursery() as reconnecting:
            async for err in self.mux.errors():
                self.failures += 1
                handle = err.stream
                log.info(
                    "psock-%d failed (%s): %s; %s; in doubt: %d, partial bytes: %d",
                    handle.index,
                    errno.errorcode.get(err.errno, err.errno),
                    err.strerror,
                    describe_tcp(handle),
                    len(err.in_doubt),
                    len(err.partial_bytes),
                )
                stream = await self.mux.unattach(handle)
                await trio.aclose_forcefully(stream)
                reconnecting.start_soon(self.reconnect, handle.index)

    async def reconnect(self, lost: int) -> None:
        attempt = 0
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError as exc:
                # trio says "all attempts failed"; its cause, a group, says why.
                reason = getattr(exc.__cause__, "exceptions", (exc,))[0]
                self.refused += 1
                delay = self.rng.uniform(0, min(self.cap, self.base * 2**attempt))
                attempt += 1
                log.info(
                    "replacing psock-%d: connect failed (%s), attempt %d; next in %.3fs",
                    lost,
                    getattr(reason, "strerror", None) or reason,
                    attempt,
                    delay,
                )
                await trio.sleep(delay)
                continue
            handle = self.mux.attach(stream)
            self.reconnects += 1
            log.info(
                "reconnected: psock-%d replaces psock-%d after %d failed attempt(s)",
                handle.index,
                lost,
                attempt,
            )
            return


async def report(mux: trio_kcm.Mux, every: float) -> None:
    """Log each live connection's TCP_INFO and traffic now and then."""
    while True:
        await trio.sleep(every)
        for handle in mux.streams:
            if handle.state == trio_kcm.StreamState.ACTIVE:
                s = handle.statistics()
                log.info(
                    "psock-%d ok: %s; tx %d rx %d messages",
                    handle.index,
                    describe_tcp(handle),
                    s.tx_msgs,
                    s.rx_msgs,
                )


# -- the application -------------------------------------------------------------


@dataclass
class Load:
    """Requests from several sockets; resent when no reply comes in time."""

    mux: trio_kcm.Mux
    requests: int
    workers: int = 8
    timeout: float = 0.2
    resent: int = 0
    duplicates: int = 0
    answered: dict[int, trio.Event] = field(default_factory=dict)

    async def run(self) -> None:
        sockets = [self.mux.socket() for _ in range(self.workers)]
        for i in range(self.requests):
            self.answered[i] = trio.Event()
        async with trio.open_nursery() as readers:
            for sock in sockets:
                readers.start_soon(self.reader, sock)
            async with trio.open_nursery() as senders:
                for w, sock in enumerate(sockets):
                    senders.start_soon(self.sender, sock, range(w, self.requests, self.workers))
            readers.cancel_scope.cancel()

    async def reader(self, sock: trio_kcm.KCMSocket) -> None:
        async for reply in sock:  # replies to any socket's requests
            done = self.answered[int(reply[4:])]
            if done.is_set():
                self.duplicates += 1
            done.set()

    async def sender(self, sock: trio_kcm.KCMSocket, ids: range) -> None:
        for i in ids:
            while True:
                await sock.send(PARSER.frame(b"%d" % i))
                with trio.move_on_after(self.timeout):
                    await self.answered[i].wait()
                    break
                self.resent += 1


async def main(connections: int = 3, requests: int = 1000, seed: int = 1) -> bool:
    logging.basicConfig(
        level=logging.INFO,
        format="%(relativeCreated)6.0fms %(name)s: %(message)s",
        stream=sys.stdout,
    )
    logging.getLogger("trio_kcm").setLevel(logging.ERROR)  # the monitor logs failures itself
    rng = random.Random(seed)
    backend = FlakyBackend(drop_after=(40, 80), rng=rng)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(backend.run)
        async with trio_kcm.open_mux(parser=PARSER, auto_close=False, policy="round-robin") as mux:
            for _ in range(connections):
                mux.attach(await trio.open_tcp_stream("127.0.0.1", port))
            monitor = Monitor(mux, port, rng=rng)
            load = Load(mux, requests)
            async with trio.open_nursery() as watchers:
                watchers.start_soon(monitor.run)
                watchers.start_soon(report, mux, 0.25)
                await load.run()
                watchers.cancel_scope.cancel()
            stats = mux.statistics()
        nursery.cancel_scope.cancel()

    answered = sum(event.is_set() for event in load.answered.values())
    print(f"requests answered: {answered} of {requests} over {connections} connections")
    print(
        f"backend drops: {backend.drops}; failures seen: {monitor.failures};"
        f" reconnects: {monitor.reconnects}; refused connects: {monitor.refused}"
    )
    print(
        f"resent after a timeout: {load.resent}; duplicate replies: {load.duplicates};"
        f" mux tx_retries: {stats.tx_retries}"
    )
    return answered == requests


if __name__ == "__main__":
    ok = trio.run(main, *map(int, sys.argv[1:3]))
    sys.exit(0 if ok else 1)
