"""A pool of M connections to one backend, used by N tasks (M x N).

The backend answers each framed request with a framed reply carrying the same
request id.  We open M connections to it and attach them all to one mux; N
producer tasks send requests through their own KCM sockets (the transmit
policy spreads them over the connections, each message whole on one), and
the replies come back on whichever connection carried the request, to
whichever socket the receive policy picks.  Replies are matched to requests
by id, as in any pipelined protocol over a pool.  Run:
``python examples/connection_pool.py [connections] [tasks] [requests-per-task]``.
"""

from __future__ import annotations

import struct
import sys
from functools import partial

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)


async def backend(stream: trio.SocketStream) -> None:
    """Answers ``id`` with ``id:ok``, frame by frame (an independent framer)."""
    buffer = b""
    async with stream:
        async for data in stream:
            buffer += data
            replies = []
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from(">I", buffer)[0]:
                end = 4 + struct.unpack_from(">I", buffer)[0]
                payload = buffer[4:end] + b":ok"
                replies.append(struct.pack(">I", len(payload)) + payload)
                buffer = buffer[end:]
            await stream.send_all(b"".join(replies))


async def main(connections: int = 4, tasks: int = 8, per_task: int = 250) -> None:
    total = tasks * per_task
    pending: set[bytes] = set()
    answered = trio.Event()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, backend, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with trio_kcm.open_mux(parser=PARSER, policy="least-queued") as mux:
            handles = [
                mux.attach(await trio.open_tcp_stream("127.0.0.1", port))
                for _ in range(connections)
            ]
            socks = [mux.socket() for _ in range(tasks)]

            async def producer(k: int) -> None:
                for n in range(per_task):
                    request_id = b"%d-%d" % (k, n)
                    pending.add(request_id)
                    await socks[k].send(PARSER.frame(request_id))

            async def consumer(sock: trio_kcm.KCMSocket) -> None:
                async for reply in sock:
                    request_id, ok = reply[4:].split(b":")
                    assert ok == b"ok", "a reply was not whole"
                    pending.remove(request_id)  # each answered exactly once
                    if not pending and done_sending.is_set():
                        answered.set()

            done_sending = trio.Event()
            async with trio.open_nursery() as workers:
                for sock in socks:
                    workers.start_soon(consumer, sock)
                async with trio.open_nursery() as producers:
                    for k in range(tasks):
                        producers.start_soon(producer, k)
                done_sending.set()
                if not pending:
                    answered.set()
                await answered.wait()
                workers.cancel_scope.cancel()
            per_connection = [h.statistics().tx_msgs for h in handles]
        nursery.cancel_scope.cancel()
    print(f"{total} requests answered over {connections} connections by {tasks} tasks")
    print(f"requests per connection: {per_connection}")


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:]))
