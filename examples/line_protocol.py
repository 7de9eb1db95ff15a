r"""A line protocol over trio-kcm: ``Delimited(b"\r\n")`` on both sides.

A tiny command server in the style of Redis's inline commands, with
IMAP-style tags so that replies can be matched to requests::

    client: a17 INCR hits\r\n          server: a17 :42\r\n
    client: a18 ECHO hello world\r\n   server: a18 +hello world\r\n
    client: a19 GET nothing\r\n        server: a19 $-1\r\n

Commands: ``PING``, ``ECHO text``, ``SET key value``, ``GET key``,
``INCR key``; anything else gets ``-ERR``.

The server gives each accepted connection a mux with the line parser (a
reply must go back on the connection its request came on: see
``thrift_service.py`` for why that means one mux per connection) and a
``max_message_size`` of 1,024 bytes: a line with no ``\r\n`` in its first
1,024 bytes fails the stream with ``EMSGSIZE``, which the server's monitoring
task reports before it closes the connection.

The client is the other shape: one mux, M connections to the server, N
worker sockets.  Each worker sends tagged commands; every socket receives,
and a reply lands on whichever socket the receive policy picks -- not
necessarily the one that sent the request, so each socket's reader hands a
reply to whoever waits for its tag.  The tags make that work, as in any
pipelined protocol over a connection pool.  ``Delimited.frame`` adds the
``\r\n`` and refuses a payload that contains it, before anything is sent.

Run: ``python examples/line_protocol.py [connections] [workers] [rounds]``.
"""

from __future__ import annotations

import errno
import logging
import sys
from functools import partial

import trio

import trio_kcm

LINE = trio_kcm.Delimited(b"\r\n")
MAX_LINE = 1024


# -- the server ----------------------------------------------------------------


def execute(command: str, store: dict[str, str]) -> str:
    """Run one command (the part after the tag); return the reply's text."""
    name, _, rest = command.partition(" ")
    name = name.upper()
    if name == "PING":
        return "+PONG"
    if name == "ECHO":
        return "+" + rest
    if name == "SET":
        key, _, value = rest.partition(" ")
        store[key] = value
        return "+OK"
    if name == "GET":
        return "$" + store[rest] if rest in store else "$-1"
    if name == "INCR":
        try:
            value = int(store.get(rest, "0")) + 1
        except ValueError:
            return "-ERR value is not an integer"
        store[rest] = str(value)
        return f":{value}"
    return f"-ERR unknown command {name!r}"


async def answer(sock: trio_kcm.KCMSocket, store: dict[str, str]) -> None:
    async for line in sock:
        tag, _, command = line[:-2].decode().partition(" ")
        await sock.send(LINE.frame(f"{tag} {execute(command, store)}".encode()))


async def serve_connection(stream: trio.SocketStream, *, store: dict[str, str]) -> None:
    async with trio_kcm.open_mux(parser=LINE, max_message_size=MAX_LINE) as mux:
        mux.attach(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, mux.socket(), store)
            async for err in mux.errors():  # the monitoring task: one stream, one error
                if err.errno == errno.EMSGSIZE:
                    print(f"server: closing a connection: EMSGSIZE, {err.strerror}")
                break  # EPIPE: the client hung up
            nursery.cancel_scope.cancel()


# -- the client ----------------------------------------------------------------


class Client:
    """Tagged commands over a mux; replies matched to requests by tag."""

    def __init__(self, mux: trio_kcm.Mux) -> None:
        self.mux = mux
        self._next_tag = 0
        self._waiting: dict[str, trio.MemorySendChannel[str]] = {}
        self.read_by: dict[int, int] = {}  # socket index -> replies its reader took
        self.crossed = 0  # replies that landed on another socket than their request's

    async def reader(self, sock: trio_kcm.KCMSocket) -> None:
        async for line in sock:
            tag, _, reply = line[:-2].decode().partition(" ")
            self.read_by[sock.index] = self.read_by.get(sock.index, 0) + 1
            if not tag.startswith(f"s{sock.index}-"):
                self.crossed += 1
            self._waiting.pop(tag).send_nowait(reply)

    async def call(self, sock: trio_kcm.KCMSocket, command: str) -> str:
        self._next_tag += 1
        tag = f"s{sock.index}-{self._next_tag}"
        send, receive = trio.open_memory_channel[str](1)
        self._waiting[tag] = send
        await sock.send(LINE.frame(f"{tag} {command}".encode()))
        async with receive:
            return await receive.receive()


async def worker(client: Client, sock: trio_kcm.KCMSocket, w: int, rounds: int) -> list[str]:
    """Commands whose answers are known in advance; returns what went wrong."""
    wrong = []
    for r in range(rounds):
        checks = [
            ("PING", "+PONG"),
            (f"ECHO worker {w} round {r}", f"+worker {w} round {r}"),
            (f"SET key:{w} {r}", "+OK"),
            (f"GET key:{w}", f"${r}"),  # the SET was answered: it is done
            (f"GET missing:{w}", "$-1"),
            ("FLY away", "-ERR unknown command 'FLY'"),
        ]
        for command, want in checks:
            got = await client.call(sock, command)
            if got != want:
                wrong.append(f"{command!r}: got {got!r}, want {want!r}")
        await client.call(sock, "INCR hits")  # checked at the end: the total
    return wrong


async def main(connections: int = 3, workers: int = 4, rounds: int = 25) -> bool:
    # The server's connections end when the client hangs up; the mux logs
    # every stream failure as a warning.
    logging.getLogger("trio_kcm").setLevel(logging.ERROR)
    store: dict[str, str] = {}
    wrong: list[str] = []
    async with trio.open_nursery() as nursery:
        handler = partial(serve_connection, store=store)
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]

        async with trio_kcm.open_mux(parser=LINE, policy="round-robin") as mux:
            for _ in range(connections):
                mux.attach(await trio.open_tcp_stream("127.0.0.1", port))
            client = Client(mux)
            sockets = [mux.socket() for _ in range(workers)]

            try:
                LINE.frame(b"ECHO two\r\nlines")
            except trio_kcm.BadMessage as exc:
                print(f"client: refused before sending: {exc}")

            async def run_worker(w: int) -> None:
                wrong.extend(await worker(client, sockets[w], w, rounds))

            async with trio.open_nursery() as tasks:
                for sock in sockets:
                    tasks.start_soon(client.reader, sock)
                async with trio.open_nursery() as workers_nursery:
                    for w in range(workers):
                        workers_nursery.start_soon(run_worker, w)
                hits = await client.call(sockets[0], "GET hits")
                tasks.cancel_scope.cancel()

            per_stream = [h.statistics().tx_msgs for h in mux.streams]
            print(f"client: {workers} workers x {rounds} rounds over {connections} connections")
            print(f"client: commands sent per connection: {per_stream}")
            read_by = ", ".join(f"kcm-{i}: {n}" for i, n in sorted(client.read_by.items()))
            print(f"client: replies read per socket: {read_by}")
            print(f"client: replies that landed on another socket: {client.crossed}")
            print(f"client: hits = {hits[1:]} after {workers * rounds} INCRs")
            if hits != f"${workers * rounds}":
                wrong.append(f"hits: got {hits!r}, want {workers * rounds}")

        # A client with a line that never ends.
        async with await trio.open_tcp_stream("127.0.0.1", port) as raw:
            await raw.send_all(b"a1 ECHO " + b"x" * 2000)
            try:
                data = await raw.receive_some()
            except trio.BrokenResourceError:  # a reset, if it closed with bytes unread
                data = b""
            print("raw client: the server hung up" if not data else f"raw client: {data!r}")
        nursery.cancel_scope.cancel()

    print(f"wrong answers: {len(wrong)}")
    for line in wrong:
        print("WRONG:", line)
    return not wrong


if __name__ == "__main__":
    ok = trio.run(main, *map(int, sys.argv[1:4]))
    sys.exit(0 if ok else 1)
