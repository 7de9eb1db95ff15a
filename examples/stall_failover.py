"""Stall handling: a connection whose peer stops reading stops getting messages.

Two backends; one of them stops reading.  Its TCP buffers fill, the mux's
write on that connection blocks, and after ``tx_stall_timeout`` seconds the
connection is *stalled*: the transmit policy no longer gets it, and the
messages queued on it that had not started move to the other connection.  The
write in flight never moves (it may be half on the wire).  Run:
``python examples/stall_failover.py [messages] [message-size]``.
"""

from __future__ import annotations

import socket
import struct
import sys

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)


class Counter:
    """Counts the messages a backend received; ``reached`` wakes when ``target`` is."""

    def __init__(self) -> None:
        self.count = 0
        self.target: int | None = None
        self.reached = trio.Event()

    def add(self, n: int) -> None:
        self.count += n
        if self.target is not None and self.count >= self.target:
            self.reached.set()


async def counting_backend(stream: trio.abc.Stream, counter: Counter) -> None:
    buffer = b""
    async for data in stream:
        buffer += data
        while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from(">I", buffer)[0]:
            buffer = buffer[4 + struct.unpack_from(">I", buffer)[0] :]
            counter.add(1)


async def main(messages: int = 2000, size: int = 1024) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    # Small buffers on the stuck side, so that it fills quickly.
    listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = listener.socket.getsockname()[1]
    counter = Counter()
    async with trio.open_nursery() as nursery:
        async with trio_kcm.open_mux(
            parser=PARSER, policy="round-robin", tx_stall_timeout=0.3, close_timeout=0.5
        ) as mux:
            stuck_client = await trio.open_tcp_stream("127.0.0.1", port)
            stuck_client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            stuck_server = await listener.accept()  # and never read from
            healthy_client = await trio.open_tcp_stream("127.0.0.1", port)
            nursery.start_soon(counting_backend, await listener.accept(), counter)
            stuck, healthy = mux.attach(stuck_client), mux.attach(healthy_client)

            async def monitor() -> None:
                async for event in mux.events():
                    if isinstance(event, trio_kcm.StreamStalled):
                        print(
                            f"psock-{event.stream.index} stalled: {event.moved} queued"
                            " message(s) moved to the other connection"
                        )

            nursery.start_soon(monitor)
            sock = mux.socket()
            for n in range(messages):
                await sock.send(PARSER.frame(b"%08d" % n + b"." * (size - 12)))
            # Everything not stuck on psock-0 reaches the healthy backend.
            left_on_stuck = stuck.statistics().tx_queued_msgs
            counter.target = messages - stuck.statistics().tx_msgs - left_on_stuck
            counter.add(0)
            await counter.reached.wait()
            assert stuck.stalled
            print(
                f"of {messages} messages, psock-{stuck.index} wrote {stuck.statistics().tx_msgs}"
                f" before it stalled ({left_on_stuck} still in flight there),"
                f" psock-{healthy.index} carried {counter.count}"
            )
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(stuck_server)
    await listener.aclose()


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:]))
