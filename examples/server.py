"""A server on one mux: accept, greet, answer each client, watch, close.

The parts of docs/server.md, in one program:

- ``trio.serve_tcp`` accepts; ``mux.serve_stream`` is its handler: it runs
  the greeting (a handshake with a time limit), attaches the connection with
  what the greeting read ahead (a Trio stream cannot un-read it; every
  client here writes its greeting and its first requests in one go), and
  stays until the mux is done with it; a wrong greeting is refused alone;
- worker tasks share one KCM socket: ``receive_from`` gives each request
  with the connection it came on, ``send_to`` answers on that connection;
- a monitor reads ``mux.errors()``: a client that hangs up between messages
  is a clean close (``peer_closed``), anything else a failure;
- closing: the clients are done, the server stops accepting, the workers
  ``flush()`` their last replies, and the mux closes.

Run: ``python examples/server.py [clients] [requests]``.
"""

from __future__ import annotations

import functools
import struct
import sys

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
GREETING = b"HELLO kcm/1\n"


async def greet(stream: trio.abc.Stream) -> bytes:
    """The handshake: one greeting line; returns what was read past it."""
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


async def worker(sock: trio_kcm.KCMSocket, answered: list[int]) -> None:
    """Answer each request on the connection it came on."""
    try:
        while True:
            request, client = await sock.receive_from()
            await sock.send_to(PARSER.frame(b"done: " + request[4:]), client)
            answered[0] += 1
    except trio.ClosedResourceError:
        return  # the mux closed


async def monitor(mux: trio_kcm.Mux, seen: dict[str, int], clients: int, gone: trio.Event) -> None:
    """Tell a client that hung up from a connection that failed."""
    async for error in mux.errors():
        seen["closed by the client" if error.peer_closed else "failed"] += 1
        if sum(seen.values()) == clients:
            gone.set()


async def client(port: int, name: bytes, requests: int, greeting: bytes = GREETING) -> list[bytes]:
    """A plain TCP client: greeting and requests in one write, then the replies.

    One write is the hard case for the server: its handshake reads the first
    requests together with the greeting.  A refused client gets no replies.
    """
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        frames = b"".join(PARSER.frame(b"%s #%d" % (name, n)) for n in range(requests))
        await stream.send_all(greeting + frames)
        buffer = b""
        replies: list[bytes] = []
        while len(replies) < requests:
            data = await stream.receive_some(65536)
            if not data:
                break  # refused: the server closed the connection
            buffer += data
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from(">I", buffer)[0]:
                end = 4 + struct.unpack_from(">I", buffer)[0]
                replies.append(buffer[4:end])
                buffer = buffer[end:]
    return replies


async def main(clients: int = 8, requests: int = 20) -> None:
    answered = [0]
    seen = {"closed by the client": 0, "failed": 0}
    async with trio_kcm.open_mux(parser=PARSER) as mux:
        async with trio.open_nursery() as server:
            handler = functools.partial(mux.serve_stream, handshake=greet, handshake_timeout=5)
            listeners = await server.start(
                functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0
            )
            port = listeners[0].socket.getsockname()[1]
            first = mux.socket()
            workers = [first, first.clone(), first.clone()]
            for sock in workers:
                server.start_soon(worker, sock, answered)
            gone = trio.Event()
            server.start_soon(monitor, mux, seen, clients, gone)

            replies: dict[int, list[bytes]] = {}

            async def one(i: int) -> None:
                replies[i] = await client(port, b"client %d" % i, requests)

            async def stranger() -> None:
                # A wrong greeting: its connection alone is closed, unanswered.
                assert await client(port, b"stranger", requests, greeting=b"HELLO ftp\n") == []

            async with trio.open_nursery() as nursery:
                for i in range(clients):
                    nursery.start_soon(one, i)
                nursery.start_soon(stranger)
            for i in range(clients):
                assert replies[i] == [b"done: client %d #%d" % (i, n) for n in range(requests)]
            # Closing: every reply accepted so far is written, then we stop.
            for sock in workers:
                await sock.flush()
            with trio.fail_after(5):
                await gone.wait()  # each client has hung up
            server.cancel_scope.cancel()
        read, attached = mux.statistics().rx_msgs, mux.statistics().psock_attach
    print(f"{clients} clients, {read} requests read, {answered[0]} answered")
    print(f"connections attached: {attached} (the stranger was refused)")
    closed, failed = seen["closed by the client"], seen["failed"]
    print(f"connections closed by their client: {closed}, failed: {failed}")


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:]))
