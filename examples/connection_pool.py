"""A pool of M connections to one backend, used by N tasks (M x N), request/response.

The backend answers each framed request with a framed reply carrying the same
request id.  We open M connections to it and attach them all to one mux; N
caller tasks share one requester (``mux.open_requester``), which sends each
call's request whole on the connection with the fewest calls outstanding and
hands each reply to the call whose request carried its id -- the replies of
one connection may come back in any order.  If a connection failed, the
calls whose requests it had written would raise ``trio.BrokenResourceError``
and those it had not started would go out on another connection.  Run:
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


def request_id(message: bytes) -> bytes:
    """The key pairing a reply with its request: the payload up to ``:``."""
    return message[4:].split(b":", 1)[0]


async def main(connections: int = 4, tasks: int = 8, per_task: int = 250) -> None:
    total = tasks * per_task
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, backend, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with trio_kcm.open_mux(parser=PARSER) as mux:
            handles = [
                mux.attach(await trio.open_tcp_stream("127.0.0.1", port))
                for _ in range(connections)
            ]
            async with mux.open_requester(key=request_id) as requester:

                async def caller(k: int) -> None:
                    for n in range(per_task):
                        rid = b"%d-%d" % (k, n)
                        with trio.fail_after(10):  # a per-call timeout, Trio's way
                            reply = await requester.request(PARSER.frame(rid))
                        assert reply[4:] == rid + b":ok", "a reply went to the wrong call"

                async with trio.open_nursery() as callers:
                    for k in range(tasks):
                        callers.start_soon(caller, k)
                stats = requester.statistics()
            per_connection = [h.statistics().tx_msgs for h in handles]
        nursery.cancel_scope.cancel()
    assert stats.replies == total and stats.replies_dropped == 0
    print(f"{total} requests answered over {connections} connections by {tasks} tasks")
    print(f"requests per connection: {per_connection}")


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:]))
