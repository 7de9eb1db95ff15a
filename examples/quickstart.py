"""trio-kcm in one screen: M TCP connections, N worker sockets, whole messages.

An echo server on loopback sends every byte back.  The mux attaches M
connections to it; N worker tasks each own a KCM socket.  Clients send framed
requests through any socket; the replies come back whole, spread over the
workers by the receive policy.  Run: ``python examples/quickstart.py``.
"""

from __future__ import annotations

import sys
from functools import partial

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)  # Thrift framed: 4-byte length + payload


async def echo_server(stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


async def main(connections: int = 2, workers: int = 4, messages: int = 1000) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo_server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]

        async with trio_kcm.open_mux(parser=PARSER, policy="round-robin") as mux:
            for _ in range(connections):
                mux.attach(await trio.open_tcp_stream("127.0.0.1", port))
            sockets = [mux.socket() for _ in range(workers)]
            received = [0] * workers
            done = trio.Event()

            async def worker(i: int) -> None:
                async for reply in sockets[i]:
                    assert reply == PARSER.frame(reply[4:])  # whole, never a fragment
                    received[i] += 1
                    if sum(received) == messages:
                        done.set()

            async with trio.open_nursery() as workers_nursery:
                for i in range(workers):
                    workers_nursery.start_soon(worker, i)
                for n in range(messages):
                    await sockets[n % workers].send(PARSER.frame(b"request %d" % n))
                await done.wait()
                workers_nursery.cancel_scope.cancel()

            print(trio_kcm.format_stats(mux))
            print(f"{messages} requests echoed whole over {connections} connections;")
            print("replies per worker socket:", received)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:4]))
