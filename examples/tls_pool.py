"""A pool of TLS connections to one backend, behind one mux.

Any ``trio.abc.Stream`` can be attached, ``trio.SSLStream`` included: the mux
reads and writes plaintext, and TLS cuts it into records as it likes -- a
message may span several records, a record may hold the end of one message
and the start of the next; the parser finds the messages again.

An echo backend serves TLS on loopback, with a certificate from a throwaway
CA made by ``trustme``.  The client opens M TLS connections to it, finishes
each handshake (a stream must be at a message boundary when it is attached),
and attaches them all to one mux.  K sender sockets send messages of many
sizes (up to 48 KiB, three TLS records); the round-robin policy spreads them
over the connections, each whole on one; the echoes come back whole on the
connection that carried them, and N receiver sockets check each one against
what was sent.  Per-stream counts come from ``handle.statistics()``.

Run: ``python examples/tls_pool.py [connections] [messages]``.
"""

from __future__ import annotations

import random
import ssl
import sys
from functools import partial

import trio
import trustme

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
SENDERS = 3
RECEIVERS = 4


async def echo(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """The backend: every byte back, until the client closes."""
    try:
        async with stream:
            async for data in stream:
                await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the client went away without a TLS close_notify


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client that trusts it."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def main(connections: int = 4, messages: int = 200, seed: int = 1) -> bool:
    server_ctx, client_ctx = tls_contexts()
    rng = random.Random(seed)
    payloads = {
        i: b"%06d:" % i + rng.randbytes(rng.choice([10, 1000, 20_000, 48 * 1024]))
        for i in range(messages)
    }
    echoed: dict[int, int] = {}  # message id -> times it came back
    bad: list[int] = []
    all_back = trio.Event()

    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_ssl_over_tcp, echo, 0, server_ctx, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].transport_listener.socket.getsockname()[1]

        async with trio_kcm.open_mux(parser=PARSER, policy="round-robin") as mux:
            for _ in range(connections):
                stream = await trio.open_ssl_over_tcp_stream(
                    "127.0.0.1", port, ssl_context=client_ctx
                )
                await stream.do_handshake()  # attach at a message boundary
                mux.attach(stream)

            async def sender(sock: trio_kcm.KCMSocket, ids: range) -> None:
                for i in ids:
                    await sock.send(PARSER.frame(payloads[i]))

            async def receiver(sock: trio_kcm.KCMSocket) -> None:
                async for reply in sock:
                    i = int(reply[4:10])
                    if reply != PARSER.frame(payloads[i]):
                        bad.append(i)
                    echoed[i] = echoed.get(i, 0) + 1
                    if len(echoed) == messages:
                        all_back.set()

            async with trio.open_nursery() as tasks:
                for _ in range(RECEIVERS):
                    tasks.start_soon(receiver, mux.socket())
                for k in range(SENDERS):
                    sock = mux.socket()
                    # Every socket of a mux receives unless told not to (the
                    # kernel's KCM_RECV_DISABLE): the echoes go to the receivers.
                    sock.disable_receive()
                    tasks.start_soon(sender, sock, range(k, messages, SENDERS))
                await all_back.wait()
                tasks.cancel_scope.cancel()

            print(f"{messages} messages over {connections} TLS connections:")
            for handle in mux.streams:
                s = handle.statistics()
                print(
                    f"  psock-{handle.index}: sent {s.tx_msgs} messages ({s.tx_bytes} bytes),"
                    f" received {s.rx_msgs} ({s.rx_bytes} bytes)"
                )
            sent = sum(len(p) + 4 for p in payloads.values())
            total = mux.statistics()
            print(f"mux: sent {total.tx_msgs} ({total.tx_bytes} of {sent} bytes),")
            print(f"     received {total.rx_msgs} ({total.rx_bytes} bytes)")
        # The mux closed the TLS streams (close_notify); the echo handlers ended.
        nursery.cancel_scope.cancel()

    whole = messages - len(bad)
    twice = sum(1 for n in echoed.values() if n > 1)
    print(f"came back whole: {whole} of {messages}; duplicates: {twice}")
    return whole == messages and twice == 0


if __name__ == "__main__":
    ok = trio.run(main, *map(int, sys.argv[1:3]))
    sys.exit(0 if ok else 1)
