"""Stand-ins and drivers for the built-in policies' unit tests, and a real-mux helper.

Not a test module: ``tests/test_policy_units.py`` drives a policy with these
exactly as the mux does, with stand-ins for sockets and streams that carry only
what a policy may read (``rx_queued_bytes``, ``tx_queued_bytes``); the drivers
keep the candidate sets exact and update the loads after each pick, drain and
write, as the protocol in ``trio_kcm._policy`` promises.  :func:`read_frames`
serves the tests that run a policy in a real mux.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import trio

from .conftest import PeerReader

# ---------------------------------------------------------------------------
# stand-ins and drivers


class FakeSock:
    """A KCM socket as a policy sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rx_queued_bytes = 0

    def __repr__(self) -> str:
        return f"<sock {self.name} rx={self.rx_queued_bytes}>"


class FakeStream:
    """An attached stream as a policy sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tx_queued_bytes = 0

    def __repr__(self) -> str:
        return f"<stream {self.name} tx={self.tx_queued_bytes}>"


def socks(n: int) -> list[FakeSock]:
    return [FakeSock(f"s{i}") for i in range(n)]


def streams(n: int) -> list[FakeStream]:
    return [FakeStream(f"t{i}") for i in range(n)]


class RxDriver:
    """Plays the mux's receive side against a policy."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.candidates: dict[FakeSock, None] = {}

    def add(self, *new: FakeSock) -> None:
        for sock in new:
            assert sock not in self.candidates
            self.candidates[sock] = None
            self.policy.socket_added(sock)

    def remove(self, sock: FakeSock) -> None:
        del self.candidates[sock]
        self.policy.socket_removed(sock)

    def pick(self, stream: FakeStream | None, message: bytes = b"m") -> FakeSock | None:
        sock = self.policy.pick_socket(stream, message)
        if not self.candidates:
            assert sock is None
            return None
        # A built-in never holds a message while some socket can take it.
        assert sock in self.candidates, (sock, list(self.candidates))
        sock.rx_queued_bytes += len(message)
        return sock

    def read(self, stream: FakeStream | None, count: int, size: int = 1) -> list[FakeSock | None]:
        """One read's batch: ``count`` picks, then ``read_done``."""
        picked = [self.pick(stream, b"x" * size) for _ in range(count)]
        self.policy.read_done(stream)
        return picked

    def drain(self, sock: FakeSock, nbytes: int) -> None:
        assert 0 < nbytes <= sock.rx_queued_bytes
        sock.rx_queued_bytes -= nbytes
        self.policy.socket_drained(sock, nbytes)


class TxDriver:
    """Plays the mux's transmit side against a policy.

    Groups queue on the picked stream; ``write`` finishes the oldest one and,
    like the mux, calls ``released`` when the sender has nothing left there.
    """

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
        stream.tx_queued_bytes = 0  # its groups go elsewhere; the policy hears no more of it
        self.queued[stream].clear()

    def pick(self, sock: FakeSock, messages: Sequence[bytes] = (b"m",)) -> FakeStream | None:
        nbytes = sum(map(len, messages))
        stream = self.policy.pick_stream(sock, messages, nbytes)
        if not self.candidates:
            assert stream is None
            return None
        assert stream in self.candidates, (stream, list(self.candidates))
        stream.tx_queued_bytes += nbytes
        self.queued[stream].append((sock, nbytes))
        return stream

    def write(self, stream: FakeStream) -> None:
        """The stream's oldest group was written."""
        sock, nbytes = self.queued[stream].popleft()
        stream.tx_queued_bytes -= nbytes
        self.policy.written(stream, sock, nbytes, 0.001)
        if all(s is not sock for s, _ in self.queued[stream]):
            self.policy.released(stream, sock)

    def write_all(self, stream: FakeStream) -> None:
        while self.queued[stream]:
            self.write(stream)


# ---------------------------------------------------------------------------
# in a real mux


async def read_frames(peer: PeerReader, count: int) -> list[bytes]:
    """The peer's next ``count`` frames; fails rather than hangs if they never come."""
    with trio.fail_after(10):
        return await peer.read_frames(count)
