"""A supervised pool: M connections kept up by ``mux.supervise``, watched on ``mux.events()``.

The backend is unfriendly: it is not listening yet when the client starts
(connections are refused), and once up it closes each connection after
answering a few requests.  ``mux.supervise(connect, count=M)`` keeps M
connections attached through all of it, reconnecting with exponential backoff
and jitter; a monitor prints what happens, each event naming its connection.
Requests lost with a dropped connection (written, never answered) are sent
again after a timeout, as any client of a flaky service does (four caller
tasks, one request at a time each).  Run:
``python examples/supervised_pool.py [connections] [requests] [answers-per-connection]``.
"""

from __future__ import annotations

import collections
import functools
import socket
import struct
import sys

import trio

import trio_kcm

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)


async def backend(listener: trio.SocketListener, answers: int) -> None:
    """Answers ``id`` with ``id:ok``; closes each connection after ``answers`` replies."""

    async def serve(stream: trio.abc.Stream) -> None:
        buffer, left = b"", answers
        async with stream:
            while left:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                while (
                    left
                    and len(buffer) >= 4
                    and len(buffer) >= 4 + struct.unpack_from(">I", buffer)[0]
                ):
                    end = 4 + struct.unpack_from(">I", buffer)[0]
                    await stream.send_all(PARSER.frame(buffer[4:end] + b":ok"))
                    buffer, left = buffer[end:], left - 1

    await trio.serve_listeners(serve, [listener])


async def monitor(mux: trio_kcm.Mux, seen: collections.Counter[str]) -> None:
    async for event in mux.events():
        match event:
            case trio_kcm.StreamAttached(stream=s):
                line = f"attached psock-{s.index}"
            case trio_kcm.StreamFailed(error=e):
                line = f"failed: {e.strerror}"
            case trio_kcm.ReconnectScheduled(stream=None, delay=d, cause=c):
                line = f"connect() failed ({c}); again in {d:.2f} s"
                seen["refused"] += 1
            case trio_kcm.ReconnectScheduled(stream=s, delay=d):
                line = f"replacing psock-{s.index} in {d:.2f} s"
            case _:
                continue
        print("  event:", line)


async def main(connections: int = 2, requests: int = 40, answers: int = 8) -> None:
    # Bound but not listening yet: connecting is refused until the backend starts.
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def connect() -> trio.abc.Stream:
        return await trio.open_tcp_stream("127.0.0.1", port)

    seen: collections.Counter[str] = collections.Counter()
    waiting: dict[bytes, trio.Event] = {}
    resent = 0
    backoff = trio_kcm.Backoff(initial=0.05, maximum=0.5)
    async with trio.open_nursery() as nursery:
        async with trio_kcm.open_mux(parser=PARSER) as mux:
            nursery.start_soon(monitor, mux, seen)
            nursery.start_soon(
                functools.partial(mux.supervise, connect, count=connections, backoff=backoff)
            )
            await trio.sleep(0.2)  # the client is up, the backend is not
            sock.listen(16)
            nursery.start_soon(backend, trio.SocketListener(sock), answers)

            async def dispatch(replies: trio_kcm.KCMSocket) -> None:
                async for reply in replies:
                    event = waiting.pop(reply[4:].rsplit(b":", 1)[0], None)
                    if event is not None:  # (a duplicate of an answered one: ignored)
                        event.set()

            async def call(out: trio_kcm.KCMSocket, request_id: bytes) -> None:
                nonlocal resent
                answered = waiting[request_id] = trio.Event()
                while True:
                    await out.send(PARSER.frame(request_id))
                    with trio.move_on_after(0.5):
                        await answered.wait()
                        return
                    resent += 1

            async def caller(k: int) -> None:
                out = mux.socket()
                out.disable_receive()  # replies go to the dispatcher's socket
                for n in range(k, requests, 4):
                    await call(out, b"request %d" % n)

            nursery.start_soon(dispatch, mux.socket())
            async with trio.open_nursery() as callers:
                for k in range(4):
                    callers.start_soon(caller, k)
            stats = mux.statistics()
        nursery.cancel_scope.cancel()
    print(f"{requests} requests answered over a pool of {connections} supervised connections")
    print(
        f"connections attached: {stats.psock_attach}, failed: {stats.stream_errors},"
        f" connects refused: {seen['refused']},"
        f" requests sent again: {resent}"
    )


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:]))
