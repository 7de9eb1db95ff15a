"""A Thrift service whose workers read requests from trio-kcm sockets.

Real Thrift clients (``thriftpy2``, framed transport, binary protocol) call a
``Calculator`` service defined in ``calculator.thrift`` beside this file.  On
the server, a ``trio.serve_tcp`` listener hands each accepted connection to a
mux that splits it into Thrift frames with the kernel document's own Thrift
parser -- its BPF program is ``return load_word(skb, 0) + 4;``, a 4-byte
big-endian length plus the 4 bytes of that length, which is
``LengthPrefixed(">I", adjust=4)``.  W worker tasks, each with a KCM socket,
take whole requests, decode them with thriftpy2's ``TBinaryProtocol`` over a
``TMemoryBuffer`` of the frame's payload, compute, and send the encoded reply.

Why one mux per client connection.  A Thrift client reads the reply to a call
on the connection it sent the call on.  The kernel's KCM cannot tell which
connection a message came from: it only has "connected mode", where every
attached connection leads to the same destination and any of them may carry
any message (the kernel's ``Documentation/networking/kcm.rst``, sections
"Connected mode semantics" and "TCP connection monitoring").  With all
clients' connections on one mux and plain ``send``, a reply would go out on
whichever connection the transmit policy picks -- to the wrong client.
trio-kcm can do better: ``receive_from()`` returns a request with the handle
of the stream it came on, and ``send_to(reply, handle)`` answers on that
stream, so one mux can serve every client (``pinned_replies.py`` beside this
file does so).  This example keeps one mux per connection all the same,
because that is the shape ``trio.serve_tcp`` gives a server, one handler per
connection: each connection gets its own mux with a pool of W worker sockets
on it, the mux opens and closes with its handler, and the workers use plain
``send`` and ``async for``, as they would over the kernel's KCM.  Every reply
goes back on the only stream attached: the right one.  Per connection the KCM
guarantees still do the work: each worker gets whole requests, and the
replies of W workers writing at the same time never interleave on the wire.

The blocking thriftpy2 client keeps one call outstanding, so the W workers of
a connection take turns and the parallelism is across connections; a
pipelining client (Thrift matches replies to calls by ``seqid``, so replies
may come back in any order) would keep them all busy.  One mux for every
connection, with ``receive_from`` and ``send_to``, would instead share one
worker pool among all of them.

The clients are blocking, so each runs in a thread (``trio.to_thread``), all
at once, and checks every answer.  Run: ``python examples/thrift_service.py
[clients] [calls] [workers]``.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from functools import partial
from typing import Any

import thriftpy2
import trio
from thriftpy2.protocol import TBinaryProtocol, TBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException, TProcessor
from thriftpy2.transport import TFramedTransportFactory, TMemoryBuffer

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


def run_client(port: int, client_id: int, calls: int) -> list[str]:
    """A blocking thriftpy2 client (run in a thread); returns what went wrong."""
    client = make_client(
        calculator.Calculator,
        "127.0.0.1",
        port,
        proto_factory=TBinaryProtocolFactory(),
        trans_factory=TFramedTransportFactory(),
        timeout=60_000,  # ms
    )
    wrong: list[str] = []
    got: object
    want: object
    try:
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
    finally:
        client.close()
    return wrong


async def main(clients: int = 8, calls: int = 25, workers: int = 4) -> bool:
    # A client hanging up is how a connection normally ends here; the mux
    # logs every stream failure as a warning.
    logging.getLogger("trio_kcm").setLevel(logging.ERROR)
    served = [0] * workers
    results: list[list[str]] = [[] for _ in range(clients)]
    async with trio.open_nursery() as nursery:
        handler = partial(serve_connection, workers=workers, served=served)
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]

        async def client(c: int) -> None:
            results[c] = await trio.to_thread.run_sync(run_client, port, c, calls)

        async with trio.open_nursery() as clients_nursery:
            for c in range(clients):
                clients_nursery.start_soon(client, c)
        nursery.cancel_scope.cancel()

    wrong = [line for result in results for line in result]
    total = clients * calls
    print(f"{clients} clients x {calls} calls; a mux and {workers} workers per connection")
    print(f"calls: {total}, right answers: {total - len(wrong)}")
    print("requests served per worker socket:", served)
    for line in wrong:
        print("WRONG:", line)
    return not wrong


if __name__ == "__main__":
    ok = trio.run(main, *map(int, sys.argv[1:4]))
    sys.exit(0 if ok else 1)
