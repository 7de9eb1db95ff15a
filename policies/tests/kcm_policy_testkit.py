"""Helpers shared by the tests of trio-kcm-policies.

The policies alone are driven by :class:`trio_kcm.testing.PolicyHarness`:
trio-kcm's own transmit and receive schedulers, with real sockets and
streams, no tasks and no I/O (trio-kcm's public API only: nothing of its
internals is imported here).  The real-mux helpers frame messages with plain
``struct``, never with the code under test.
"""

from __future__ import annotations

import struct

import trio
import trio.testing

import trio_kcm
from trio_kcm.testing import PolicyHarness

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


def strangers() -> tuple[trio_kcm.KCMSocket, trio_kcm.AttachedStream]:
    """A real socket and a real stream that no policy under test has heard of.

    For asking a policy directly what the mux never asks it: a pick with no
    candidates (the mux then keeps the message or the group waiting instead).
    """
    h = PolicyHarness("round-robin")
    return h.socket(), h.attach()
