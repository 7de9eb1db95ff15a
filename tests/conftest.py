"""Shared test helpers.

Peers are driven by an independent reference framer (plain ``struct``), never
by the code under test.
"""

from __future__ import annotations

import struct

import trio

# The format every mux test uses unless it says otherwise: a 4-byte big-endian
# payload length, then the payload (Thrift framed; LengthPrefixed(">I", adjust=4)).
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


class PeerReader:
    """Reads whole frames from the far end of a stream, with the reference deframer."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def read_frames(self, count: int) -> list[bytes]:
        """Read until ``count`` whole frames have arrived; return exactly those."""
        out: list[bytes] = []
        while len(out) < count:
            frames, self.buffer = unframe_all(self.buffer)
            out.extend(frames)
            if len(out) >= count:
                break
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(f"EOF after {len(out)} of {count} frames")
            self.buffer += data
        extra = out[count:]
        if extra:
            self.buffer = b"".join(extra) + self.buffer
        return out[:count]

    async def read_until_eof(self) -> tuple[list[bytes], bytes]:
        """Read everything until EOF; return the whole frames and any trailing partial."""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                break
            self.buffer += data
        frames, rest = unframe_all(self.buffer)
        self.buffer = b""
        return frames, rest
