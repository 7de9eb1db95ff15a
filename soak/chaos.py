"""Chaos soak: a mux over real loopback TCP while a fault injector kills its streams.

Run it with ``python -m soak --duration 600 --seed 1`` (or
``nox -s soak -- --duration 600``); ``tests/test_chaos.py`` runs it for a few
seconds in CI.  It prints its figures and exits non-zero if an invariant broke.

The set-up
==========

* A **peer**: an in-process TCP server (:func:`trio.serve_listeners` on a
  loopback listener).  For each connection it reads whole frames with the
  reference deframer below (plain ``struct``, never the code under test, like
  the tests' ``conftest.py``) and verifies every one (length, kind, CRC32), and
  it sends checksummed frames of its own at random moments.
* A **mux** with M streams, each a fresh :func:`trio.open_tcp_stream` to the
  peer, and N KCM sockets.  Senders send unique messages with ``send``,
  ``send_many`` and ``batch()``; one worker per socket receives with
  ``receive`` and ``receive_many``.
* A **fault injector** that, at random moments, makes the peer of a healthy
  stream do one of:

  - ``close``: close the connection abruptly (FIN, or RST if it had unread
    data);
  - ``reset``: ``SO_LINGER`` 0, then close: a TCP reset;
  - ``eof_mid``: write half a frame, then end its side (FIN mid-message);
  - ``stall``: stop reading for a while, so the mux's writes back up.

* A **supervisor**: the monitoring task on ``mux.errors()``.  With
  ``auto_close=False`` it unattaches and closes each failed stream itself;
  either way it attaches a fresh connection, keeping M attached.  A watchdog
  beside it unattaches a stream whose write has made no progress for a while
  (a stalled peer), giving up after a moment -- a cancelled ``unattach`` fails
  the stream, and its write's messages are in doubt.

Every stream's transport is wrapped in a :class:`Tap` that only *observes*: it
notes the ids of the messages in each ``send_all`` the mux starts, and whether
that call returned.  That is what lets the soak account for every message
exactly, TCP included.

The invariants (checked at the end; any breach is a line in
:attr:`SoakReport.violations`)
==============================================================================

mux -> peer (every message a sender's call accepted):

1. no frame the peer reads, and no ``send_all`` the mux makes, is torn or
   corrupt (whole frames only, CRC32 right);
2. on every connection, what the peer read is a *prefix* of what the mux wrote
   on it, in order (TCP is a byte stream: anything else is corruption,
   reordering or invention);
3. every accepted message was received by the peer, or is in some
   ``StreamError.in_doubt``, or was in a ``send_all`` that *returned* on a
   connection the peer then killed, and that the peer never read
   ("swallowed": TCP cannot tell, and the spec says such messages count as
   sent).  Anything else is **lost**, and lost must be 0;
4. ``in_doubt`` is exact: the messages of the write that was under way on that
   stream, in order (and empty if no write was under way);
5. a message is written ``1 + (times it was in doubt)`` times with
   ``retry_in_doubt=True`` -- and so, unless swallowed, received at least once
   -- and exactly once with ``False``; the peer receives it at most that many
   times: duplicates only among in-doubt messages;
6. a connection that was never faulted lost nothing: the peer read every byte
   the mux wrote on it.

peer -> mux:

7. every message the peer sent on a connection that stayed healthy reached
   exactly one socket, exactly once; on a faulted one, at most once, whole, and
   a prefix of what it sent; half a frame is never delivered;

and the rest:

8. every stream error is ``EPIPE`` (the peer never sends a bad frame), the
   handle is the stream's, ``partial_bytes`` of an ``eof_mid`` is exactly the
   half frame; the mux dropped nothing at close (``tx_dropped``,
   ``rx_ready_drops``) and every stream it was given is closed;
9. no file descriptor and no task is left behind (``/proc/self/fd`` and Trio's
   task tree, before and after).

Timing is real (it is TCP), so a seed fixes the choices (sizes, operations,
faults, pauses) but not the interleaving: two runs with one seed differ.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import random
import socket
import struct
import sys
import time
import zlib
from collections import Counter, deque

import trio

import trio_kcm

HOST = "127.0.0.1"
#: SO_LINGER (on, 0 seconds): close() sends a RST instead of a FIN.
LINGER_RESET = struct.pack("ii", 1, 0)
#: Small kernel buffers on both ends, so that a stalled peer backs the mux up soon.
KERNEL_BUFFER = 32 * 1024
FAULT_KINDS = ("close", "reset", "eof_mid", "stall")
#: kind (b"U": mux -> peer, b"D": peer -> mux), origin, number; then the CRC32.
_HEAD = struct.Struct(">cIQ")
_CRC = struct.Struct(">I")
_MIN = 4 + _HEAD.size + _CRC.size
MAX_VIOLATIONS = 60
#: How long the end of a run may take to drain before that is a violation.
QUIET_TIMEOUT = 20.0


#: The frame format: a 4-byte big-endian payload length, then the payload
#: (LengthPrefixed(">I", adjust=4), as in the tests).
HEADER = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    """Reference framer: header + payload."""
    return HEADER.pack(len(payload)) + payload


def unframe_all(data: bytes) -> tuple[list[bytes], bytes]:
    """Reference deframer: split ``data`` into whole frames and the rest."""
    frames = []
    pos = 0
    while len(data) - pos >= 4:
        (n,) = HEADER.unpack_from(data, pos)
        if len(data) - pos - 4 < n:
            break
        frames.append(bytes(data[pos : pos + 4 + n]))
        pos += 4 + n
    return frames, bytes(data[pos:])


def make_message(kind: bytes, origin: int, number: int, body: bytes) -> bytes:
    """A framed message whose payload carries its identity and a CRC32 of it all."""
    head = _HEAD.pack(kind, origin, number)
    crc = zlib.crc32(body, zlib.crc32(head))
    return frame(head + _CRC.pack(crc) + body)


class Corrupt(ValueError):
    pass


def parse_message(message: bytes) -> tuple[bytes, int, int]:
    """(kind, origin, number) of a whole framed message; :exc:`Corrupt` if it is not one."""
    if len(message) < _MIN:
        raise Corrupt(f"{len(message)} bytes: shorter than any message")
    (length,) = struct.unpack_from(">I", message)
    if length != len(message) - 4:
        raise Corrupt(f"header says {length} + 4 bytes, the message has {len(message)}")
    kind, origin, number = _HEAD.unpack_from(message, 4)
    (crc,) = _CRC.unpack_from(message, 4 + _HEAD.size)
    body = memoryview(message)[_MIN:]
    if zlib.crc32(body, zlib.crc32(message[4 : 4 + _HEAD.size])) != crc:
        raise Corrupt(f"CRC mismatch in {kind!r} #{number} from {origin}")
    return kind, origin, number


# ---------------------------------------------------------------------------
# the report


@dataclasses.dataclass
class SoakReport:
    """What a soak did, and every invariant it saw broken (``violations``)."""

    seed: int
    duration: float
    policy: str
    retry_in_doubt: bool
    auto_close: bool
    streams: int
    sockets: int
    elapsed: float = 0.0
    #: mux -> peer
    up_accepted: int = 0
    up_received: int = 0  # distinct messages the peer read
    up_deliveries: int = 0  # frames the peer read, duplicates included
    up_duplicates: int = 0
    up_in_doubt: int = 0  # distinct messages that were in some in_doubt
    up_in_doubt_reports: int = 0
    up_swallowed: int = 0
    up_lost: int = 0
    #: peer -> mux
    down_sent: int = 0
    down_received: int = 0
    down_sent_healthy: int = 0
    down_lost_on_faulted: int = 0
    down_torn: int = 0
    #: faults and errors
    faults: Counter[str] = dataclasses.field(default_factory=Counter)
    watchdog_unattached: int = 0
    watchdog_failed: int = 0
    stream_errors: int = 0
    errors_by_errno: Counter[str] = dataclasses.field(default_factory=Counter)
    connections: int = 0
    min_attached: int = 0
    tx_retries: int = 0
    fds_before: int = 0
    fds_after: int = 0
    tasks_before: int = 0
    tasks_after: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)
    violations_dropped: int = 0

    def violation(self, text: str) -> None:
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(text)
        else:
            self.violations_dropped += 1

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        faults = ", ".join(f"{k} {self.faults[k]}" for k in FAULT_KINDS)
        errnos = ", ".join(f"{k} {v}" for k, v in sorted(self.errors_by_errno.items())) or "none"
        lines = [
            f"chaos soak: seed {self.seed}, {self.duration:g} s asked, {self.elapsed:.1f} s run;"
            f" policy {self.policy}, retry_in_doubt={self.retry_in_doubt},"
            f" auto_close={self.auto_close}; {self.streams} streams x {self.sockets} sockets",
            f"  mux -> peer: {self.up_accepted} accepted, {self.up_received} received"
            f" ({self.up_deliveries} deliveries, {self.up_duplicates} duplicates),"
            f" {self.up_in_doubt} in doubt ({self.up_in_doubt_reports} reports),"
            f" {self.up_swallowed} swallowed by killed connections after send_all returned,"
            f" lost {self.up_lost}",
            f"  peer -> mux: {self.down_sent} sent ({self.down_sent_healthy} on healthy"
            f" connections), {self.down_received} received, {self.down_lost_on_faulted} not"
            f" delivered from faulted connections, {self.down_torn} half frames never delivered",
            f"  faults: {faults}; watchdog: {self.watchdog_unattached} unattached,"
            f" {self.watchdog_failed} failed by a cancelled unattach",
            f"  stream errors: {self.stream_errors} ({errnos}); {self.connections} connections"
            f" attached in all, at least {self.min_attached} attached at each check;"
            f" tx_retries {self.tx_retries}",
            f"  fds {self.fds_before} -> {self.fds_after}, tasks {self.tasks_before} ->"
            f" {self.tasks_after}",
        ]
        if self.violations:
            lines.append(f"  VIOLATIONS ({len(self.violations) + self.violations_dropped}):")
            lines.extend(f"    - {v}" for v in self.violations)
        else:
            lines.append("  all invariants held")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# one connection


class Tap(trio.abc.Stream):
    """Wraps the mux's side of a connection; notes what each write carried.

    It changes nothing: every call goes straight to the socket stream.
    """

    def __init__(self, inner: trio.SocketStream, conn: Conn, soak: Soak) -> None:
        self.inner = inner
        self.transport_stream = inner  # so that tcp_info() finds the socket
        self._conn = conn
        self._soak = soak
        self.last_ids: list[int] = []
        self.last_returned = True
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._soak.wrote(self._conn, bytes(data))
        self.last_returned = False
        await self.inner.send_all(data)
        self.last_returned = True

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


class Conn:
    """One TCP connection: the mux's side (tapped), the peer's side, and its record."""

    def __init__(self, index: int, client: trio.SocketStream, soak: Soak) -> None:
        self.index = index
        self.tap = Tap(client, self, soak)
        self.server: trio.SocketStream | None = None
        self.handle: trio_kcm.AttachedStream | None = None
        # mux -> peer: ids written and not read by the peer yet, in order
        self.expect: deque[int] = deque()
        # peer -> mux: deliveries per sequence number the peer used
        self.down: bytearray = bytearray()
        self.torn: int | None = None
        self.torn_bytes = b""
        # faults
        self.fault: str | None = None
        self.faulted = False  # the injector hit it, or the mux failed or unattached it
        self.error: trio_kcm.StreamError | None = None
        self.command: str | None = None
        self.command_event = trio.Event()
        self.stalled = False
        self.unstalled = trio.Event()
        self.left = trio.Event()  # failed or unattached
        self.leaving = False
        self.replaced = False
        self.sender_done = trio.Event()
        self.peer_done = trio.Event()


class _Slot:
    """Where a connect and its accept meet (by the client's port)."""

    def __init__(self) -> None:
        self.conn: Conn | None = None
        self.conn_ready = trio.Event()
        self.server: trio.SocketStream | None = None
        self.arrived = trio.Event()


# ---------------------------------------------------------------------------
# the soak


class Soak:
    def __init__(
        self,
        report: SoakReport,
        *,
        fault_interval: float,
        send_pause: float,
        peer_pause: float,
        stall_timeout: float,
    ) -> None:
        self.report = report
        self.rng = random.Random(report.seed)
        self.fault_interval = fault_interval
        self.send_pause = send_pause
        self.peer_pause = peer_pause
        self.stall_timeout = stall_timeout
        self.port = 0
        self.mux: trio_kcm.Mux | None = None
        self.background: trio.Nursery | None = None
        self.conns: list[Conn] = []  # attached, in order
        self.conn_by_index: dict[int, Conn] = {}
        self.by_handle: dict[trio_kcm.AttachedStream, Conn] = {}
        self.slots: dict[int, _Slot] = {}
        self.busy = 0  # replacements under way
        self.errors_taken = 0
        self.stop_sending = False
        self.stop_peers = False
        self.running = True
        # mux -> peer, by message id
        self.accepted = bytearray()
        self.written = bytearray()  # how many send_alls carried it
        self.received = bytearray()  # how many times the peer read it
        self.doubt: Counter[int] = Counter()
        self.swallowed: Counter[int] = Counter()
        self.down_taken = 0

    # -- helpers ---------------------------------------------------------------

    def _body(self, rng: random.Random, big_every: int, big: int) -> bytes:
        if rng.randrange(big_every) == 0:
            size = rng.randrange(big // 4, big)
        else:
            size = rng.randrange(0, 3000)
        return (rng.randbytes(64) * (size // 64 + 1))[:size]

    def new_up(self, origin: int, rng: random.Random) -> tuple[int, bytes]:
        number = len(self.accepted)
        self.accepted.append(0)
        self.written.append(0)
        self.received.append(0)
        return number, make_message(b"U", origin, number, self._body(rng, 40, 200_000))

    def active_conns(self) -> list[Conn]:
        return [
            c
            for c in self.conns
            if c.handle is not None and c.handle.state == "active" and not c.leaving
        ]

    # -- the tap and the peer's reader: mux -> peer ----------------------------

    def wrote(self, conn: Conn, data: bytes) -> None:
        frames, rest = unframe_all(data)
        if rest:
            self.report.violation(f"conn {conn.index}: a write ends with {len(rest)} torn bytes")
        ids = []
        for message in frames:
            try:
                kind, _, number = parse_message(message)
            except Corrupt as exc:
                self.report.violation(f"conn {conn.index}: the mux wrote a corrupt frame: {exc}")
                continue
            if kind != b"U" or number >= len(self.accepted):
                self.report.violation(f"conn {conn.index}: the mux wrote {kind!r} #{number}")
                continue
            self.written[number] += 1
            ids.append(number)
        conn.expect.extend(ids)
        conn.tap.last_ids = ids

    def peer_got(self, conn: Conn, message: bytes) -> None:
        try:
            kind, _, number = parse_message(message)
        except Corrupt as exc:
            self.report.violation(f"conn {conn.index}: the peer read a corrupt frame: {exc}")
            return
        expected = conn.expect.popleft() if conn.expect else None
        if kind != b"U" or number != expected:
            self.report.violation(
                f"conn {conn.index}: the peer read {kind!r} #{number} where the mux's writes"
                f" said #{expected}"
            )
            return
        self.received[number] += 1

    # -- the peer ---------------------------------------------------------------

    def slot(self, port: int) -> _Slot:
        slot = self.slots.get(port)
        if slot is None:
            slot = self.slots[port] = _Slot()
        return slot

    async def handler(self, server: trio.SocketStream) -> None:
        port = server.socket.getpeername()[1]
        slot = self.slot(port)
        slot.server = server
        slot.arrived.set()
        await slot.conn_ready.wait()
        conn = slot.conn
        assert conn is not None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.peer_reader, conn, server, nursery.cancel_scope)
                nursery.start_soon(self.peer_sender, conn, server)
        finally:
            conn.sender_done.set()
            conn.peer_done.set()

    async def peer_reader(
        self, conn: Conn, server: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        buffer = b""
        try:
            while True:
                if conn.stalled:
                    await conn.unstalled.wait()
                try:
                    data = await server.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                buffer += data
                frames, buffer = unframe_all(buffer)
                for message in frames:
                    self.peer_got(conn, message)
        finally:
            # The connection is over: stop sending on it too.
            scope.cancel()

    async def peer_sender(self, conn: Conn, server: trio.SocketStream) -> None:
        rng = random.Random(self.rng.random())
        try:
            while True:
                with trio.move_on_after(rng.expovariate(1 / self.peer_pause)):
                    await conn.command_event.wait()
                if conn.command is not None:
                    await self.execute_fault(conn, server, conn.command, rng)
                    return
                if self.stop_peers:
                    return
                seq = len(conn.down)
                conn.down.append(0)
                message = make_message(b"D", conn.index, seq, self._body(rng, 100, 100_000))
                try:
                    await server.send_all(message)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
        finally:
            conn.sender_done.set()

    async def execute_fault(
        self, conn: Conn, server: trio.SocketStream, kind: str, rng: random.Random
    ) -> None:
        self.report.faults[kind] += 1
        if kind == "reset":
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            await server.aclose()
        elif kind == "close":
            await server.aclose()
        else:
            assert kind == "eof_mid"
            seq = len(conn.down)
            conn.down.append(0)
            message = make_message(b"D", conn.index, seq, self._body(rng, 10, 20_000))
            cut = rng.randrange(1, len(message))
            conn.torn = seq
            conn.torn_bytes = message[:cut]
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await server.send_all(message[:cut])
                await server.send_eof()

    # -- the fault injector -------------------------------------------------------

    async def injector(self) -> None:
        rng = random.Random(self.rng.random())
        kinds = list(FAULT_KINDS)
        rng.shuffle(kinds)  # every kind once first, then at random
        async with trio.open_nursery() as stalls:
            while True:
                await trio.sleep(rng.expovariate(1 / self.fault_interval))
                targets = [
                    c
                    for c in self.active_conns()
                    if not c.faulted
                    and not c.stalled
                    and c.command is None
                    and not c.sender_done.is_set()
                ]
                if not targets:
                    continue
                conn = rng.choice(targets)
                kind = kinds.pop() if kinds else rng.choice(FAULT_KINDS)
                conn.fault = kind
                if kind == "stall":
                    self.report.faults[kind] += 1
                    stalls.start_soon(self.stall, conn, rng.uniform(0.5, 2.0))
                else:
                    conn.faulted = True
                    conn.command = kind
                    conn.command_event.set()

    async def stall(self, conn: Conn, duration: float) -> None:
        conn.stalled = True
        try:
            with trio.move_on_after(duration):
                await conn.left.wait()
        finally:
            conn.stalled = False
            conn.unstalled.set()

    # -- the mux's side -------------------------------------------------------------

    async def connect(self) -> None:
        mux = self.mux
        assert mux is not None
        client = await trio.open_tcp_stream(HOST, self.port)
        port = client.socket.getsockname()[1]
        try:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
            conn = Conn(len(self.conn_by_index), client, self)
            self.conn_by_index[conn.index] = conn
            slot = self.slot(port)
            slot.conn = conn
            slot.conn_ready.set()
            await slot.arrived.wait()
        except BaseException:
            self.slots.pop(port, None)
            await trio.aclose_forcefully(client)
            raise
        del self.slots[port]
        conn.server = slot.server
        self.conns.append(conn)
        conn.handle = mux.attach(conn.tap)
        self.by_handle[conn.handle] = conn
        self.report.connections += 1

    def replace(self, conn: Conn) -> None:
        conn.left.set()
        if conn.replaced:
            return
        conn.replaced = True
        self.busy += 1
        assert self.background is not None
        self.background.start_soon(self._replace)

    async def _replace(self) -> None:
        try:
            await self.connect()
        finally:
            self.busy -= 1

    async def supervisor(self) -> None:
        mux = self.mux
        assert mux is not None
        async for err in mux.errors():
            self.errors_taken += 1
            self.busy += 1
            try:
                await self.handle_error(err)
            finally:
                self.busy -= 1

    async def handle_error(self, err: trio_kcm.StreamError) -> None:
        mux = self.mux
        assert mux is not None
        report = self.report
        conn = self.by_handle.get(err.stream)
        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        report.errors_by_errno[name] += 1
        if conn is None:
            report.violation(f"an error for a stream the soak never attached: {err!r}")
            return
        if conn.error is not None:
            report.violation(f"conn {conn.index}: a second error: {err!r}")
        conn.error = err
        conn.faulted = True
        if not isinstance(err, OSError) or err.errno != errno.EPIPE:
            report.violation(f"conn {conn.index}: {err!r}, where only EPIPE can happen")
        if err.stream.state != "failed":
            report.violation(f"conn {conn.index}: state {err.stream.state} after an error")
        # in_doubt: exactly the write that was under way, if one was.
        ids = []
        for message in err.in_doubt:
            try:
                kind, _, number = parse_message(message)
            except Corrupt as exc:
                report.violation(f"conn {conn.index}: a corrupt in-doubt message: {exc}")
                continue
            if kind != b"U":
                report.violation(f"conn {conn.index}: an in-doubt {kind!r} message")
                continue
            ids.append(number)
            self.doubt[number] += 1
        report.up_in_doubt_reports += len(ids)
        tap = conn.tap
        if ids and ids != tap.last_ids:
            report.violation(
                f"conn {conn.index}: in_doubt {ids[:5]}... is not the write under way"
                f" {tap.last_ids[:5]}..."
            )
        if not ids and not tap.last_returned:
            report.violation(f"conn {conn.index}: a write was under way, in_doubt is empty")
        if conn.fault == "eof_mid" and "end of stream" in str(err):
            if err.partial_bytes != conn.torn_bytes:
                report.violation(
                    f"conn {conn.index}: partial_bytes has {len(err.partial_bytes)} bytes,"
                    f" the peer sent half a frame of {len(conn.torn_bytes)}"
                )
        elif conn.fault == "close" and "end of stream" in str(err) and err.partial_bytes:
            report.violation(
                f"conn {conn.index}: {len(err.partial_bytes)} partial bytes after a close"
                " between frames"
            )
        if not report.auto_close:
            stream = await mux.unattach(err.stream)
            if stream is not tap:
                report.violation(f"conn {conn.index}: unattach handed back {stream!r}")
            await stream.aclose()
        self.replace(conn)

    async def watchdog(self) -> None:
        """Unattach a stream whose write has made no progress for stall_timeout."""
        mux = self.mux
        assert mux is not None
        report = self.report
        last: dict[Conn, tuple[int, float]] = {}
        report.min_attached = len(self.active_conns())
        while True:
            await trio.sleep(self.stall_timeout / 4)
            now = trio.current_time()
            active = self.active_conns()
            if self.busy == 0 and self.errors_taken == mux.statistics().stream_errors:
                report.min_attached = min(report.min_attached, len(active))
            for conn in active:
                assert conn.handle is not None
                stats = conn.handle.statistics()
                if not stats.tx_queued_bytes:
                    last.pop(conn, None)
                    continue
                seen = last.get(conn)
                if seen is None or seen[0] != stats.tx_bytes:
                    last[conn] = (stats.tx_bytes, now)
                    continue
                if now - seen[1] < self.stall_timeout:
                    continue
                last.pop(conn, None)
                conn.leaving = True
                with trio.move_on_after(self.stall_timeout / 2) as scope:
                    stream = await mux.unattach(conn.handle)
                if scope.cancelled_caught:
                    # The stream is failed now; its error goes to the supervisor.
                    report.watchdog_failed += 1
                    if conn.handle.state != "failed":
                        report.violation(f"conn {conn.index}: a cancelled unattach left it active")
                    continue
                report.watchdog_unattached += 1
                conn.faulted = True
                if stream is not conn.tap:
                    report.violation(f"conn {conn.index}: unattach handed back {stream!r}")
                await stream.aclose()
                self.replace(conn)

    async def sender(self, sock: trio_kcm.KCMSocket, origin: int) -> None:
        rng = random.Random(self.rng.random())
        while not self.stop_sending:
            op = rng.random()
            if op < 0.6:
                number, message = self.new_up(origin, rng)
                await sock.send(message)
                self.accepted[number] = 1
            elif op < 0.8:
                batch = [self.new_up(origin, rng) for _ in range(rng.randint(2, 8))]
                await sock.send_many([m for _, m in batch])
                for number, _ in batch:
                    self.accepted[number] = 1
            else:
                async with sock.batch():
                    for _ in range(rng.randint(2, 6)):
                        number, message = self.new_up(origin, rng)
                        await sock.send(message)
                        self.accepted[number] = 1
            await trio.sleep(rng.expovariate(1 / self.send_pause))

    async def worker(self, sock: trio_kcm.KCMSocket) -> None:
        rng = random.Random(self.rng.random())
        report = self.report
        while True:
            try:
                if rng.random() < 0.5:
                    messages = [await sock.receive()]
                else:
                    messages = await sock.receive_many(rng.randint(2, 32))
            except trio.ClosedResourceError:
                return
            for message in messages:
                try:
                    kind, origin, number = parse_message(message)
                except Corrupt as exc:
                    report.violation(f"a socket received a corrupt message: {exc}")
                    continue
                conn = self.conn_by_index.get(origin)
                if kind != b"D" or conn is None or number >= len(conn.down):
                    report.violation(f"a socket received {kind!r} #{number} from {origin}")
                    continue
                conn.down[number] += 1
                self.down_taken += 1

    # -- the run ---------------------------------------------------------------------

    def quiet(self) -> list[str]:
        """What is still under way (empty: everything sent has arrived)."""
        mux = self.mux
        assert mux is not None
        waiting = []
        if self.busy:
            waiting.append(f"{self.busy} supervisor operations")
        if self.errors_taken != mux.statistics().stream_errors:
            waiting.append("errors not taken yet")
        for sock in mux.sockets:
            if sock.statistics().tx_queued_msgs:
                waiting.append(f"kcm-{sock.index}: messages not written")
        if self.down_taken != mux.statistics().rx_msgs:
            waiting.append(f"{mux.statistics().rx_msgs - self.down_taken} messages not taken")
        for conn in self.conns:
            if not conn.sender_done.is_set():
                waiting.append(f"conn {conn.index}: the peer is still sending")
            elif conn.faulted and not conn.peer_done.is_set():
                waiting.append(f"conn {conn.index}: faulted, still open")
            elif not conn.faulted and sum(conn.down) != len(conn.down):
                waiting.append(f"conn {conn.index}: messages from the peer not delivered")
        return waiting

    async def run(self, *, sockets: int, senders_per_socket: int, **mux_options: object) -> None:
        report = self.report
        listeners = await trio.open_tcp_listeners(0, host=HOST)
        for listener in listeners:
            # Accepted connections inherit it (and it turns off autotuning).
            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)
        async with trio.open_nursery() as peer_side:
            await peer_side.start(trio.serve_listeners, self.handler, listeners)
            self.port = listeners[0].socket.getsockname()[1]
            async with trio_kcm.open_mux(**mux_options) as mux:  # type: ignore[arg-type]
                self.mux = mux
                first = mux.socket()
                socks = [first] + [first.clone() for _ in range(sockets - 1)]
                async with trio.open_nursery() as background:
                    self.background = background
                    for _ in range(report.streams):
                        await self.connect()
                    background.start_soon(self.supervisor)
                    background.start_soon(self.watchdog)
                    for sock in socks:
                        background.start_soon(self.worker, sock)
                    async with trio.open_nursery() as load:
                        for i in range(sockets * senders_per_socket):
                            load.start_soon(self.sender, socks[i % sockets], i)
                        faults = trio.CancelScope()
                        load.start_soon(self._inject, faults)
                        await trio.sleep(report.duration)
                        faults.cancel()  # the injector, and stalls under way
                        self.stop_sending = True
                        self.stop_peers = True
                        load.cancel_scope.deadline = trio.current_time() + QUIET_TIMEOUT
                    if load.cancel_scope.cancelled_caught:
                        report.violation(f"senders still blocked {QUIET_TIMEOUT} s after the end")
                    # Let what is under way arrive (bounded).
                    waiting = self.quiet()
                    with trio.move_on_after(QUIET_TIMEOUT):
                        while waiting:
                            await trio.sleep(0.05)
                            waiting = self.quiet()
                    if waiting:
                        report.violation(
                            f"still under way {QUIET_TIMEOUT} s after the end: {waiting[:8]}"
                        )
                        self.diagnose()
                    background.cancel_scope.cancel()
            # The mux flushed and closed the streams: each peer reads to EOF.
            with trio.move_on_after(QUIET_TIMEOUT):
                for conn in self.conns:
                    await conn.peer_done.wait()
            if not all(conn.peer_done.is_set() for conn in self.conns):
                report.violation(
                    f"a peer connection is still open {QUIET_TIMEOUT} s after the mux closed"
                )
            peer_side.cancel_scope.cancel()
        self.account(mux)

    def diagnose(self) -> None:
        """Say why the run did not go quiet, where the soak can tell."""
        mux = self.mux
        assert mux is not None
        for conn in self.conns:
            handle = conn.handle
            if (
                self.report.auto_close
                and handle is not None
                and handle.state == "failed"
                and not conn.tap.closed
            ):
                # Its peer, no longer read, blocks in send_all for ever.
                self.report.violation(
                    f"conn {conn.index} failed ({conn.error!r}) and auto_close=True never"
                    f" closed it (still in mux.streams: {handle in mux.streams})"
                )

    async def _inject(self, scope: trio.CancelScope) -> None:
        with scope:
            await self.injector()

    # -- the accounting ------------------------------------------------------------

    def account(self, mux: trio_kcm.Mux) -> None:
        report = self.report
        stats = mux.statistics()
        report.stream_errors = stats.stream_errors
        report.tx_retries = stats.tx_retries
        if stats.tx_dropped or stats.rx_ready_drops:
            report.violation(
                f"the mux dropped {stats.tx_dropped} accepted and {stats.rx_ready_drops}"
                " received messages at close"
            )
        if stats.streams or stats.sockets:
            report.violation(f"after close: {stats.streams} streams, {stats.sockets} sockets")
        if stats.psock_attach != len(self.conns):
            report.violation(f"{stats.psock_attach} attaches for {len(self.conns)} connections")
        for conn in self.conns:
            if not conn.tap.closed:
                report.violation(f"conn {conn.index}: the mux's side was never closed")
            # mux -> peer: what was written and never read.
            tail = list(conn.expect)
            if tail and not conn.faulted:
                report.violation(
                    f"conn {conn.index} stayed healthy and its peer never read {len(tail)}"
                    f" written messages, e.g. #{tail[0]}"
                )
            if tail:
                # Swallowed: in a send_all that returned.  The last write's
                # messages, if it did not return (or was in doubt), are not:
                # they must be in in_doubt.
                doubted = conn.error is not None and bool(conn.error.in_doubt)
                unreturned = doubted or not conn.tap.last_returned
                in_flight = len(conn.tap.last_ids) if unreturned else 0
                for number in tail[: max(0, len(tail) - in_flight)]:
                    self.swallowed[number] += 1
            # peer -> mux
            down = conn.down
            report.down_sent += len(down)
            report.down_received += sum(down)
            if not conn.faulted:
                report.down_sent_healthy += len(down)
            if conn.torn is not None:
                report.down_torn += 1
                if down[conn.torn]:
                    report.violation(f"conn {conn.index}: half a frame was delivered")
            if any(n > 1 for n in down):
                report.violation(f"conn {conn.index}: a peer's message was delivered twice")
            if not conn.faulted:
                if not all(down):
                    missing = down.index(0)
                    report.violation(
                        f"conn {conn.index} stayed healthy, its peer's message {missing} of"
                        f" {len(down)} never arrived"
                    )
            else:
                first_gap = down.find(0)
                if first_gap >= 0 and any(down[first_gap:]):
                    report.violation(
                        f"conn {conn.index}: the messages delivered from its peer are not a"
                        f" prefix of what it sent (gap at {first_gap})"
                    )
                report.down_lost_on_faulted += len(down) - sum(down)
        # mux -> peer, message by message
        retry = report.retry_in_doubt
        report.up_in_doubt = len(self.doubt)
        report.up_swallowed = len(self.swallowed)
        for number in range(len(self.accepted)):
            received = self.received[number]
            written = self.written[number]
            doubt = self.doubt.get(number, 0)
            report.up_deliveries += received
            if not self.accepted[number]:
                report.violation(f"#{number}: a sender's call never returned")
                continue
            report.up_accepted += 1
            if received:
                report.up_received += 1
                report.up_duplicates += received - 1
            expected = 1 + doubt if retry else 1
            if written != expected:
                report.violation(
                    f"#{number}: written {written} times, in doubt {doubt} times"
                    f" (retry_in_doubt={retry})"
                )
            if received > 1 + doubt:
                report.violation(f"#{number}: received {received} times, in doubt {doubt} times")
            if not received and not doubt and not self.swallowed.get(number):
                report.up_lost += 1
                report.violation(f"#{number} was accepted and is lost")
            elif retry and not received and not self.swallowed.get(number):
                report.up_lost += 1
                report.violation(f"#{number}: in doubt, retried, and still never arrived")


# ---------------------------------------------------------------------------
# entry points


def _open_fds() -> set[str]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds.add(f"{name}->{os.readlink(f'/proc/self/fd/{name}')}")
    return fds


def _count_tasks() -> int:
    count = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def run_soak(
    duration: float,
    seed: int,
    *,
    streams: int = 4,
    sockets: int = 4,
    senders_per_socket: int = 2,
    policy: str = "round-robin",
    retry_in_doubt: bool = True,
    auto_close: bool = True,
    fault_interval: float = 0.3,
    send_pause: float = 0.003,
    peer_pause: float = 0.005,
    stall_timeout: float = 0.3,
) -> SoakReport:
    """Run the chaos soak for ``duration`` seconds of real time; return its report.

    The report's ``violations`` list every invariant that broke (see the module
    docstring); the run itself raises only if the mux or the soak has a bug
    that raises.
    """
    report = SoakReport(
        seed=seed,
        duration=duration,
        policy=policy,
        retry_in_doubt=retry_in_doubt,
        auto_close=auto_close,
        streams=streams,
        sockets=sockets,
    )
    fds_before = _open_fds()
    report.fds_before = len(fds_before)
    report.tasks_before = _count_tasks()
    soak = Soak(
        report,
        fault_interval=fault_interval,
        send_pause=send_pause,
        peer_pause=peer_pause,
        stall_timeout=stall_timeout,
    )
    start = time.monotonic()
    await soak.run(
        sockets=sockets,
        senders_per_socket=senders_per_socket,
        parser=trio_kcm.LengthPrefixed(">I", adjust=4),
        policy=policy,
        retry_in_doubt=retry_in_doubt,
        auto_close=auto_close,
        max_message_size=1024 * 1024,
        receive_buffer_size=64 * 1024,
        send_buffer_size=256 * 1024,
        close_timeout=10.0,
    )
    report.elapsed = time.monotonic() - start
    fds_after = _open_fds()
    report.fds_after = len(fds_after)
    if fds_after != fds_before:
        report.violation(
            f"file descriptors left behind: {sorted(fds_after - fds_before)}"
            f" (and gone: {sorted(fds_before - fds_after)})"
        )
    report.tasks_after = _count_tasks()
    if report.tasks_after != report.tasks_before:
        report.violation(f"tasks: {report.tasks_before} before, {report.tasks_after} after")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--streams", type=int, default=4, help="M attached streams")
    parser.add_argument("--sockets", type=int, default=4, help="N KCM sockets")
    parser.add_argument(
        "--policy", default="round-robin", choices=["round-robin", "batch-affinity", "least-queued"]
    )
    parser.add_argument("--no-retry", action="store_true", help="retry_in_doubt=False")
    parser.add_argument("--no-auto-close", action="store_true", help="auto_close=False")
    parser.add_argument(
        "--fault-interval", type=float, default=0.3, help="mean seconds between faults"
    )
    args = parser.parse_args(argv)
    report = trio.run(
        lambda: run_soak(
            args.duration,
            args.seed,
            streams=args.streams,
            sockets=args.sockets,
            policy=args.policy,
            retry_in_doubt=not args.no_retry,
            auto_close=not args.no_auto_close,
            fault_interval=args.fault_interval,
        )
    )
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
