"""A pool of N workers behind one connection (N x 1).

A front end connects once and sends a stream of framed requests.  We attach
that one connection to a mux and run N worker tasks, each with its own KCM
socket: every request reaches exactly one worker, whole, and each worker's
reply goes back over the connection whole, never interleaved with another's.
Run: ``python examples/worker_pool.py [workers] [requests]``.
"""

from __future__ import annotations

import struct
import sys
from functools import partial

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)  # 4-byte length, then the payload


async def front_end(port: int, requests: int) -> int:
    """The other side: sends numbered requests, counts the correct replies."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"".join(PARSER.frame(b"%d" % n) for n in range(requests)))
        replies = 0
        buffer = b""
        while replies < requests:
            buffer += await stream.receive_some(65536)
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from(">I", buffer)[0]:
                end = 4 + struct.unpack_from(">I", buffer)[0]
                n, square = buffer[4:end].split(b" ")
                assert int(square) == int(n) ** 2, "a reply was not whole"
                replies += 1
                buffer = buffer[end:]
        return replies


async def worker(sock: trio_kcm.KCMSocket, served: list[int], index: int) -> None:
    async for request in sock:  # one whole request at a time
        n = int(request[4:])
        await sock.send(PARSER.frame(b"%d %d" % (n, n * n)))
        served[index] += 1


async def main(workers: int = 4, requests: int = 1000) -> None:
    async with trio_kcm.open_mux(parser=PARSER, policy="round-robin") as mux:
        socks = [mux.socket() for _ in range(workers)]
        served = [0] * workers
        connected = trio.Event()

        async def accept(stream: trio.SocketStream) -> None:
            mux.attach(stream)  # the mux owns it from now on
            connected.set()
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, accept, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            for i, sock in enumerate(socks):
                nursery.start_soon(worker, sock, served, i)
            replies = await front_end(port, requests)
            nursery.cancel_scope.cancel()
    print(f"{replies} requests answered by {workers} workers over one connection")
    print(f"requests per worker: {served}")


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:]))
