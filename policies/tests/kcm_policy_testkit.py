"""Stand-ins and drivers shared by the tests of trio-kcm-policies.

A policy is driven exactly as the mux drives it, by the model below: the
candidate sets are exact, each pick is a delivery, a socket whose queue
reaches its buffer size stops being a candidate until a receive makes room,
and messages on a socket that is disabled or closed move to other sockets
(``socket_removed`` first, then ``socket_drained`` of its whole queue, then a
``pick_socket(None, ...)`` for each).  The stand-ins carry only what a policy
may read.  The real-mux helpers frame messages with plain ``struct``, never
with the code under test.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

import trio
import trio.testing

import trio_kcm

HEADER = struct.Struct(">I")
PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)


def frame(payload: bytes) -> bytes:
    """Reference framer: a 4-byte big-endian payload length, then the payload."""
    return HEADER.pack(len(payload)) + payload


def unframe_all(data: bytes) -> tuple[list[bytes], bytes]:
    frames = []
    pos = 0
    while len(data) - pos >= 4:
        (n,) = HEADER.unpack_from(data, pos)
        if len(data) - pos - 4 < n:
            break
        frames.append(bytes(data[pos : pos + 4 + n]))
        pos += 4 + n
    return frames, bytes(data[pos:])


class Peer:
    """The far end of an attached stream: sends bytes, reads whole frames."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_frames(self, count: int) -> list[bytes]:
        with trio.fail_after(10):
            out: list[bytes] = []
            while True:
                frames, self.buffer = unframe_all(self.buffer)
                out.extend(frames)
                if len(out) >= count:
                    break
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"EOF after {len(out)} of {count} frames")
                self.buffer += data
        if len(out) > count:
            self.buffer = b"".join(out[count:]) + self.buffer
        return out[:count]


def attach_peers(mux: trio_kcm.Mux, n: int) -> list[tuple[trio_kcm.AttachedStream, Peer]]:
    out = []
    for _ in range(n):
        ours, peer = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        out.append((handle, Peer(peer)))
    return out


# ---------------------------------------------------------------------------
# stand-ins


class FakeSock:
    """A KCM socket as a policy sees it."""

    def __init__(self, index: int, receive_buffer_size: int = 1 << 30) -> None:
        self.index = index
        self.receive_buffer_size = receive_buffer_size
        self.rx_queued_bytes = 0
        self.receive_enabled = True
        self.closed = False  # not visible to a policy (a KCMSocket has no such property)

    def __repr__(self) -> str:
        return f"<sock {self.index} rx={self.rx_queued_bytes}>"


class FakeStream:
    """An attached stream as a policy sees it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.tx_queued_bytes = 0

    def __repr__(self) -> str:
        return f"<stream {self.index} tx={self.tx_queued_bytes}>"


def socks(n: int, receive_buffer_size: int = 1 << 30) -> list[FakeSock]:
    return [FakeSock(i, receive_buffer_size) for i in range(n)]


def streams(n: int) -> list[FakeStream]:
    return [FakeStream(i) for i in range(n)]


# ---------------------------------------------------------------------------
# drivers


class RxDriver:
    """The mux's receive side, as a model, around a policy."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.candidates: dict[FakeSock, None] = {}
        self.queues: dict[FakeSock, deque[bytes]] = {}
        #: Messages no socket took yet (moved ones, or held by the policy).
        self.hold: deque[bytes] = deque()

    def _room(self, sock: FakeSock) -> bool:
        return (
            sock.receive_enabled
            and not sock.closed
            and sock.rx_queued_bytes < sock.receive_buffer_size
        )

    def add(self, *new: FakeSock) -> None:
        """New sockets (or enable_receive)."""
        for sock in new:
            sock.receive_enabled = True
            self.queues.setdefault(sock, deque())
            if self._room(sock) and sock not in self.candidates:
                self._add_candidate(sock)

    def _add_candidate(self, sock: FakeSock) -> None:
        self.candidates[sock] = None
        self.policy.socket_added(sock)
        self.steer_hold()

    def _remove_candidate(self, sock: FakeSock) -> None:
        if sock in self.candidates:
            del self.candidates[sock]
            self.policy.socket_removed(sock)

    def pick(self, stream: FakeStream | None, message: bytes = b"m") -> FakeSock | None:
        """One pick, and the delivery it means; ``None`` if nothing was picked."""
        if not self.candidates:
            return None
        sock: FakeSock | None = self.policy.pick_socket(stream, message)
        if sock is None:
            return None
        assert sock in self.candidates, (sock, list(self.candidates))
        self.queues[sock].append(message)
        sock.rx_queued_bytes += len(message)
        if sock.rx_queued_bytes >= sock.receive_buffer_size:
            self._remove_candidate(sock)
        return sock

    def read(self, stream: FakeStream | None, messages: Sequence[bytes]) -> list[FakeSock | None]:
        """One read's batch: a pick per message until one is held, then read_done."""
        picked: list[FakeSock | None] = []
        for message in messages:
            sock = self.pick(stream, message)
            picked.append(sock)
            if sock is None:
                break
        self.policy.read_done(stream)
        return picked

    def receive(self, sock: FakeSock, count: int = 1) -> list[bytes]:
        """The socket's application takes up to ``count`` messages."""
        queue = self.queues.setdefault(sock, deque())
        out = [queue.popleft() for _ in range(min(count, len(queue)))]
        if out:
            nbytes = sum(map(len, out))
            sock.rx_queued_bytes -= nbytes
            self.policy.socket_drained(sock, nbytes)
            if sock not in self.candidates and self._room(sock):
                self._add_candidate(sock)
        return out

    def _move_away(self, sock: FakeSock) -> None:
        self._remove_candidate(sock)
        queue = self.queues.setdefault(sock, deque())
        if queue:
            moved = list(queue)
            queue.clear()
            nbytes = sock.rx_queued_bytes
            sock.rx_queued_bytes = 0
            self.policy.socket_drained(sock, nbytes)
            self.hold.extendleft(reversed(moved))
            self.steer_hold()

    def disable(self, sock: FakeSock) -> None:
        sock.receive_enabled = False
        self._move_away(sock)

    def close(self, sock: FakeSock) -> None:
        sock.closed = True
        self._move_away(sock)

    def steer_hold(self) -> None:
        while self.hold and self.candidates:
            if self.pick(None, self.hold[0]) is None:
                break
            self.hold.popleft()
        self.policy.read_done(None)


class TxDriver:
    """The mux's transmit side, as a model: groups queue on their stream."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.candidates: dict[FakeStream, None] = {}
        self.queued: dict[FakeStream, deque[tuple[FakeSock, int]]] = {}

    def add(self, *new: FakeStream) -> None:
        for stream in new:
            self.candidates[stream] = None
            self.queued[stream] = deque()
            self.policy.stream_added(stream)

    def remove(self, stream: FakeStream) -> None:
        del self.candidates[stream]
        self.policy.stream_removed(stream)
        stream.tx_queued_bytes = 0
        self.queued[stream].clear()

    def pick(self, sock: FakeSock, messages: Sequence[bytes] = (b"m",)) -> FakeStream | None:
        nbytes = sum(map(len, messages))
        stream: FakeStream | None = self.policy.pick_stream(sock, messages, nbytes)
        if not self.candidates:
            assert stream is None
            return None
        assert stream in self.candidates, (stream, list(self.candidates))
        stream.tx_queued_bytes += nbytes
        self.queued[stream].append((sock, nbytes))
        return stream

    def write(self, stream: FakeStream, seconds: float = 0.001) -> None:
        """The stream's oldest group was written, ``seconds`` after its pick."""
        sock, nbytes = self.queued[stream].popleft()
        stream.tx_queued_bytes -= nbytes
        self.policy.written(stream, sock, nbytes, seconds)
        if all(s is not sock for s, _ in self.queued[stream]):
            self.policy.released(stream, sock)
