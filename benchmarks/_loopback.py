"""What the one-process benchmark programs share: frames, a loopback pair, a sink.

``micro.py`` and ``fairness.py`` run as scripts (``python benchmarks/X.py``),
so they import this module as ``_loopback``, their neighbour.
"""

from __future__ import annotations

import struct

import trio

import trio_kcm

__all__ = ["CHUNK", "PARSER", "frame", "sink", "tcp_pair"]

#: The wire format of every benchmark: a 4-byte big-endian length, then the payload.
PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
#: Bytes per read (and per batched write).
CHUNK = 65536


def frame(size: int) -> bytes:
    """One message of ``size`` payload bytes, header included."""
    return struct.pack(">I", size) + b"x" * size


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Both ends of one loopback TCP connection: (client, server)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def sink(stream: trio.SocketStream) -> None:
    """Read and discard until end of file."""
    while await stream.receive_some(CHUNK):
        pass
