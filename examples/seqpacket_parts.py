"""SEQPACKET: send a message in parts as it is produced, read it in pieces.

A sender builds one large message over several ``send(part, more=True)``
calls (its header first, then the body as it is produced) and ends it with a
plain ``send``; the mux checks the whole and writes it atomically.  The
receiver reads it in pieces of at most ``max_bytes`` with ``receive_some``,
which also says when the message ended.  Two muxes over a socketpair.  Run:
``python examples/seqpacket_parts.py [body-bytes] [part-bytes] [piece-bytes]``.
"""

from __future__ import annotations

import hashlib
import struct
import sys

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
SEQPACKET = trio_kcm.SocketType.SEQPACKET


async def produce(sock: trio_kcm.KCMSocket, size: int, part: int) -> str:
    """Send a ``size``-byte body in ``part``-byte parts; return its digest."""
    digest = hashlib.sha256()
    await sock.send(struct.pack(">I", size), more=True)  # the header first
    for start in range(0, size, part):
        chunk = bytes((start + i) % 251 for i in range(min(part, size - start)))
        digest.update(chunk)
        last = start + part >= size
        await sock.send(chunk, more=not last)
    return digest.hexdigest()


async def consume(sock: trio_kcm.KCMSocket, piece: int) -> tuple[str, int]:
    """Read one message in pieces; return the body's digest and the piece count."""
    digest = hashlib.sha256()
    pieces, skip, ended = 0, 4, False  # skip the 4-byte header
    while not ended:
        data, ended = await sock.receive_some(piece)
        digest.update(data[skip:])
        skip = max(0, skip - len(data))
        pieces += 1
    return digest.hexdigest(), pieces


async def main(size: int = 1_000_000, part: int = 64_000, piece: int = 100_000) -> None:
    a, b = trio.socket.socketpair()
    async with (
        trio_kcm.open_mux(parser=PARSER, socket_type=SEQPACKET) as left,
        trio_kcm.open_mux(parser=PARSER, socket_type=SEQPACKET) as right,
    ):
        left.attach(trio.SocketStream(a))
        right.attach(trio.SocketStream(b))
        sent = await produce(left.socket(), size, part)
        received, pieces = await consume(right.socket(), piece)
    assert received == sent
    parts = 1 + -(-size // part)
    print(f"one message of {size + 4} bytes, sent in {parts} parts, received in {pieces} pieces")
    print(f"sha256 of the body matches: {sent[:16]}...")


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:]))
