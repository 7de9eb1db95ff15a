"""A greeting before the messages: attach with the bytes the handshake read ahead.

Many protocols open with a handshake (a version line, nng's SP header, a
PROXY protocol header) and only then speak in messages.  A handshake that
reads with ``receive_some`` may get the first messages in the same read: a
Trio stream cannot un-read them, so ``mux.attach(stream,
unread_data=rest)`` hands them to the mux, which parses them before
anything it reads itself; ``mux.serve_stream(stream, handshake=...)`` does
it for each connection of a ``trio.serve_tcp`` server.  Here every client
sends its greeting and its first requests in one write, the worst case; a
client with a wrong greeting is refused alone.
Run: ``python examples/handshake.py [clients] [requests]``.
"""

from __future__ import annotations

import functools
import struct
import sys

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
GREETING = b"HELLO kcm/1\n"


async def handshake(stream: trio.abc.Stream) -> bytes:
    """Read the greeting line; return what came after it in the same reads."""
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk or len(data) > 1024:
            raise ValueError("no greeting")
        data += chunk
    line, _, rest = data.partition(b"\n")
    if line + b"\n" != GREETING:
        raise ValueError(f"unknown greeting {line!r}")
    return rest


async def worker(sock: trio_kcm.KCMSocket) -> None:
    """Answer each request on the connection it came on."""
    try:
        while True:
            request, client = await sock.receive_from()
            await sock.send_to(PARSER.frame(b"reply to " + request[4:]), client)
    except trio.ClosedResourceError:
        return  # the mux closed


async def client(port: int, name: bytes, requests: int, greeting: bytes = GREETING) -> int:
    """A plain TCP client: the greeting and every request in one write."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        frames = b"".join(PARSER.frame(b"%s #%d" % (name, n)) for n in range(requests))
        await stream.send_all(greeting + frames)
        buffer = b""
        replies: list[bytes] = []
        while len(replies) < requests:
            data = await stream.receive_some(65536)
            if not data:
                return len(replies)  # refused: the server closed the connection
            buffer += data
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from(">I", buffer)[0]:
                end = 4 + struct.unpack_from(">I", buffer)[0]
                replies.append(buffer[4:end])
                buffer = buffer[end:]
    assert replies == [b"reply to %s #%d" % (name, n) for n in range(requests)]
    return len(replies)


async def main(clients: int = 8, requests: int = 20) -> None:
    answered: list[int] = []
    async with trio_kcm.open_mux(parser=PARSER) as mux, trio.open_nursery() as server:
        # Each connection: the greeting (5 s at most), then attached with what
        # was read past it; a failed greeting drops that connection alone.
        handler = functools.partial(mux.serve_stream, handshake=handshake, handshake_timeout=5)
        listeners = await server.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0
        )
        port = listeners[0].socket.getsockname()[1]
        server.start_soon(worker, mux.socket())

        async def one(i: int) -> None:
            answered.append(await client(port, b"client %d" % i, requests))

        async def stranger() -> None:
            # A wrong greeting: its connection alone is closed, unanswered.
            assert await client(port, b"stranger", requests, greeting=b"HELLO ftp\n") == 0

        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(one, i)
            nursery.start_soon(stranger)
        attached = mux.statistics().psock_attach
        server.cancel_scope.cancel()
    print(f"{clients} clients greeted and answered: {sum(answered)} replies")
    print(f"connections attached: {attached} (the stranger was refused)")


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:]))
