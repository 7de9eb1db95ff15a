"""A Thrift service over trio-kcm, and real thriftpy2 clients calling it over a pool.

Both ends speak Thrift framed with the binary protocol: a ``Calculator``
service defined in ``calculator.thrift`` beside this file, loaded at run
time with thriftpy2 (no generated code).  The frames are the kernel
document's own Thrift parser -- its BPF program is ``return load_word(skb,
0) + 4;``, a 4-byte big-endian length plus the 4 bytes of that length, which
is ``LengthPrefixed(">I", adjust=4)``.

The server.  A ``trio.serve_tcp`` listener hands each accepted connection to
a mux of its own with W worker tasks, each with a KCM socket: each takes
whole requests, decodes them with thriftpy2's ``TBinaryProtocol`` over a
``TMemoryBuffer`` of the frame's payload, computes, and sends the encoded
reply on the connection's only stream.  W workers answer one connection's
pipelined calls in whatever order they finish: the replies of a connection
may overtake each other.  (``pinned_replies.py`` beside this file shows one
mux for every client instead, with ``receive_from`` and ``send_to``.)

The clients.  C thriftpy2 clients (``thriftpy2.thrift.TClient``, unchanged),
each blocking in a thread of its own (``trio.to_thread``), share a pool of M
connections: one mux, and a requester on it (``mux.open_requester``).  Their
transport, ``RequesterTransport`` below, hands each call's frame to
``requester.request`` in the Trio thread and gives the client its reply.  A
Thrift reply carries its call's ``seqid``, which is the requester's key; but
thriftpy2's client numbers every call 0 (it keeps one call outstanding on a
connection of its own), so the transport gives each frame a seqid unique in
the pool on the way out.  Calls from all clients are pipelined over the M
connections, the requester picking for each the connection with the fewest
calls outstanding, and the replies, in whatever order they come, reach
their callers by seqid.  Every answer is checked.

Run: ``python examples/thrift_service.py [clients] [calls] [workers] [connections]``.
"""

from __future__ import annotations

import io
import itertools
import logging
import pathlib
import struct
import sys
from functools import partial
from typing import Any

import thriftpy2
import trio
from thriftpy2.protocol import TBinaryProtocol
from thriftpy2.protocol.binary import TBinaryProtocol as TPyBinaryProtocol
from thriftpy2.thrift import TApplicationException, TClient, TProcessor
from thriftpy2.transport import TMemoryBuffer, TTransportBase

import trio_kcm

calculator: Any = thriftpy2.load(
    str(pathlib.Path(__file__).with_name("calculator.thrift")), module_name="calculator_thrift"
)
Operation = calculator.Operation

# The kernel's Thrift parser: a 4-byte big-endian payload length, plus 4.
PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)


class CalculatorHandler:
    """The service's implementation: plain synchronous methods."""

    def ping(self) -> None:
        pass

    def add(self, a: int, b: int) -> int:
        return a + b

    def calculate(self, work: Any) -> int:
        left, right = work.left, work.right
        if work.op == Operation.ADD:
            return int(left + right)
        if work.op == Operation.SUBTRACT:
            return int(left - right)
        if work.op == Operation.MULTIPLY:
            return int(left * right)
        if work.op == Operation.DIVIDE:
            if right == 0:
                raise calculator.InvalidOperation(op=work.op, why="division by zero")
            return int(left // right)
        raise calculator.InvalidOperation(op=work.op, why="unknown operation")

    def reverse(self, text: str) -> str:
        return text[::-1]


PROCESSOR = TProcessor(calculator.Calculator, CalculatorHandler())


def handle_request(frame: bytes) -> bytes | None:
    """Decode one framed Thrift call, run it, and return the framed reply."""
    iprot = TBinaryProtocol(TMemoryBuffer(frame[4:]))  # the payload, after the length
    out = TMemoryBuffer()
    oprot = TBinaryProtocol(out)
    api, seqid, result, call = PROCESSOR.process_in(iprot)
    if isinstance(result, TApplicationException):  # an unknown method
        PROCESSOR.send_exception(oprot, api, result, seqid)
        return PARSER.frame(out.getvalue())
    assert call is not None
    try:
        result.success = call()
    except TApplicationException as exc:
        PROCESSOR.send_exception(oprot, api, exc, seqid)
        return PARSER.frame(out.getvalue())
    except calculator.InvalidOperation as exc:  # declared by the IDL: part of the result
        PROCESSOR.handle_exception(exc, result)
    if result.oneway:
        return None
    PROCESSOR.send_result(oprot, api, result, seqid)
    return PARSER.frame(out.getvalue())


async def worker(sock: trio_kcm.KCMSocket, index: int, served: list[int]) -> None:
    async for frame in sock:  # whole requests, header included
        reply = handle_request(frame)
        if reply is not None:
            await sock.send(reply)  # whole, on the connection's only stream
        served[index] += 1


async def serve_connection(stream: trio.SocketStream, *, workers: int, served: list[int]) -> None:
    """One client connection: its own mux, W worker sockets on it."""
    async with trio_kcm.open_mux(parser=PARSER, policy="round-robin") as mux:
        mux.attach(stream)  # the mux owns (and will close) the stream now
        first = mux.socket()
        sockets = [first, *(first.clone() for _ in range(workers - 1))]
        async with trio.open_nursery() as nursery:
            for i, sock in enumerate(sockets):
                nursery.start_soon(worker, sock, i, served)
            # The monitoring task.  The first error ends the connection: the
            # client hung up (EOF is EPIPE), or sent a frame we cannot parse.
            async for _ in mux.errors():
                break
            nursery.cancel_scope.cancel()


# -- the clients -------------------------------------------------------------


def seqid(frame: bytes) -> int:
    """A framed Thrift message's seqid: the requester's key (calls and replies alike).

    After the frame's length: the strict binary protocol's version and type
    (4 bytes), the method name (a 4-byte length, then the name), the seqid.
    """
    (name_length,) = struct.unpack_from(">i", frame, 8)
    return int(struct.unpack_from(">i", frame, 12 + name_length)[0])


# seqids unique in the pool: a Thrift i32, wrapping long before it could
# meet a call still waiting with the same number.
SEQIDS = itertools.cycle(range(1, 2**31))


def with_seqid(frame: bytes, number: int) -> bytes:
    (name_length,) = struct.unpack_from(">i", frame, 8)
    at = 12 + name_length
    return frame[:at] + struct.pack(">i", number) + frame[at + 4 :]


class RequesterTransport(TTransportBase):
    """A thriftpy2 transport for a client in a worker thread: calls go through a requester."""

    def __init__(self, requester: trio_kcm.Requester) -> None:
        self._requester = requester
        self._out = bytearray()
        self._in = io.BytesIO()

    def is_open(self) -> bool:
        return True

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, buf: bytes) -> None:
        self._out += buf

    def flush(self) -> None:
        """One call: frame it, number it, and wait (in Trio) for its reply."""
        frame = with_seqid(PARSER.frame(bytes(self._out)), next(SEQIDS))
        self._out.clear()
        reply = trio.from_thread.run(self._requester.request, frame)
        self._in = io.BytesIO(reply[4:])  # the payload, after the length

    def _read(self, sz: int) -> bytes:
        return self._in.read(sz)


def run_client(requester: trio_kcm.Requester, client_id: int, calls: int) -> list[str]:
    """A blocking thriftpy2 client (run in a thread); returns what went wrong."""
    # The pure-Python protocol: the compiled one takes only compiled transports.
    protocol = TPyBinaryProtocol(RequesterTransport(requester))
    client: Any = TClient(calculator.Calculator, protocol)
    wrong: list[str] = []
    got: object
    want: object
    for i in range(calls):
        a, b = client_id * 1000 + i, i % 7
        kind = i % 5
        if kind == 0:
            got, want = client.add(a, b), a + b
        elif kind == 1:
            got, want = client.calculate(calculator.Work(a, b, Operation.MULTIPLY)), a * b
        elif kind == 2:
            text = f"client {client_id} call {i}"
            got, want = client.reverse(text), text[::-1]
        elif kind == 3:
            got, want = client.ping(), None
        else:
            try:
                got = client.calculate(calculator.Work(a, 0, Operation.DIVIDE))
            except calculator.InvalidOperation as exc:
                got = exc.why
            want = "division by zero"
        if got != want:
            wrong.append(f"client {client_id} call {i}: got {got!r}, want {want!r}")
    return wrong


async def main(clients: int = 8, calls: int = 25, workers: int = 4, connections: int = 2) -> bool:
    # A client hanging up is how a connection normally ends here: the
    # server's muxes log it at INFO.
    logging.getLogger("trio_kcm").setLevel(logging.WARNING)
    served = [0] * workers
    results: list[list[str]] = [[] for _ in range(clients)]
    async with trio.open_nursery() as nursery:
        handler = partial(serve_connection, workers=workers, served=served)
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]

        async with trio_kcm.open_mux(parser=PARSER) as mux:
            handles = [
                mux.attach(await trio.open_tcp_stream("127.0.0.1", port))
                for _ in range(connections)
            ]
            async with mux.open_requester(key=seqid) as requester:

                async def client(c: int) -> None:
                    results[c] = await trio.to_thread.run_sync(run_client, requester, c, calls)

                async with trio.open_nursery() as clients_nursery:
                    for c in range(clients):
                        clients_nursery.start_soon(client, c)
                stats = requester.statistics()
            per_connection = [h.statistics().tx_msgs for h in handles]
        nursery.cancel_scope.cancel()

    wrong = [line for result in results for line in result]
    total = clients * calls
    print(f"{clients} thriftpy2 clients x {calls} calls over {connections} connections")
    print(f"calls: {total}, right answers: {total - len(wrong)}")
    print(f"calls per connection: {per_connection}")
    print(f"replies matched by seqid: {stats.replies}, dropped: {stats.replies_dropped}")
    print(f"server: a mux and {workers} workers per connection")
    print("requests served per worker socket:", served)
    for line in wrong:
        print("WRONG:", line)
    return not wrong and stats.replies == total


if __name__ == "__main__":
    ok = trio.run(main, *map(int, sys.argv[1:5]))
    sys.exit(0 if ok else 1)
