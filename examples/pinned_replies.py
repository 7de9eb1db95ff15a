"""One mux as a server for many clients: replies go back where requests came from.

The kernel's KCM cannot tell which connection a message came on.  trio-kcm
can: ``receive_from()`` returns the message and the handle of its stream, and
``send_to(reply, handle)`` sends on that stream, whatever the transmit policy
would pick (``recvfrom`` / ``sendto``).  Here a server accepts C client
connections into one mux and a few worker tasks answer them; each client
checks that it got its own replies and no one else's.  Run:
``python examples/pinned_replies.py [clients] [requests-per-client] [workers]``.
"""

from __future__ import annotations

import struct
import sys

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)


async def accept_into(mux: trio_kcm.Mux, listener: trio.SocketListener) -> None:
    """Attach every accepted connection to the server's mux."""
    while True:
        mux.attach(await listener.accept())


async def worker(sock: trio_kcm.KCMSocket) -> None:
    """Answer each request on the connection it came on."""
    try:
        while True:
            request, client = await sock.receive_from()
            await sock.send_to(PARSER.frame(b"reply to " + request[4:]), client)
    except trio.ClosedResourceError:
        return  # the mux closed


async def client(port: int, name: bytes, requests: int) -> None:
    """A plain TCP client with its own framing code: it does not use trio-kcm."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        for n in range(requests):
            await stream.send_all(PARSER.frame(b"%s #%d" % (name, n)))
        buffer, replies = b"", []
        while len(replies) < requests:
            buffer += await stream.receive_some(65536)
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from(">I", buffer)[0]:
                end = 4 + struct.unpack_from(">I", buffer)[0]
                replies.append(buffer[4:end])
                buffer = buffer[end:]
    assert sorted(replies) == sorted(b"reply to %s #%d" % (name, n) for n in range(requests))


async def main(clients: int = 16, requests: int = 50, workers: int = 4) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    # round-robin: a reply left to the transmit policy would go to the wrong client.
    async with trio_kcm.open_mux(parser=PARSER, policy="round-robin") as mux:
        async with trio.open_nursery() as server:
            server.start_soon(accept_into, mux, listener)
            first = mux.socket()
            for sock in [first, *(first.clone() for _ in range(workers - 1))]:
                server.start_soon(worker, sock)
            async with trio.open_nursery() as nursery:
                for i in range(clients):
                    nursery.start_soon(client, port, b"client %d" % i, requests)
            server.cancel_scope.cancel()
        requests_in = mux.statistics().rx_msgs
    await listener.aclose()
    print(f"{clients} clients each got their own {requests} replies, from {workers} workers")
    print(f"requests read: {requests_in}")


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:]))
