"""Mux.serve_stream: a trio.serve_tcp handler that attaches and waits."""

from __future__ import annotations

import errno
import functools
import logging

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import PeerReader, frame
from .test_tcp import next_error

P = trio_kcm.LengthPrefixed(">I", adjust=4)
GREETING = b"HELLO\n"


async def greeting(stream: trio.abc.Stream) -> bytes:
    """A handshake: the greeting line; returns what was read past it."""
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(1024)
        if not chunk:
            raise EOFError("closed during the handshake")
        data += chunk
    line, _, rest = data.partition(b"\n")
    if line + b"\n" != GREETING:
        raise ValueError(f"bad greeting {line!r}")
    return rest


async def echo_pinned(sock: trio_kcm.KCMSocket) -> None:
    while True:
        message, origin = await sock.receive_from()
        await sock.send_to(frame(b"re:" + message[4:]), origin)


async def client(port: int, name: bytes, count: int, hello: bytes = GREETING) -> list[bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        requests = [frame(b"%s-%d" % (name, i)) for i in range(count)]
        await stream.send_all(hello + b"".join(requests))
        try:
            return await PeerReader(stream).read_frames(count)
        except EOFError:
            return []


async def start_echo_server(mux: trio_kcm.Mux, nursery: trio.Nursery) -> int:
    """serve_tcp with serve_stream (greeting first) and a pinned echo; its port."""
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, host="127.0.0.1"),
        functools.partial(mux.serve_stream, handshake=greeting),
        0,
    )
    nursery.start_soon(echo_pinned, mux.socket())
    return int(listeners[0].socket.getsockname()[1])


async def test_serve_tcp_with_many_concurrent_clients() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        port = await start_echo_server(mux, nursery)
        got: dict[int, list[bytes]] = {}

        async def one(i: int) -> None:
            got[i] = await client(port, b"c%d" % i, 10)

        async with trio.open_nursery() as clients:
            for i in range(40):
                clients.start_soon(one, i)
        for i in range(40):
            assert got[i] == [frame(b"re:c%d-%d" % (i, n)) for n in range(10)]
        stats = mux.statistics()
        assert stats.psock_attach == 40
        nursery.cancel_scope.cancel()


async def test_a_failed_handshake_drops_that_connection_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_kcm")
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        port = await start_echo_server(mux, nursery)
        assert await client(port, b"bad", 3, hello=b"GOODBYE\n") == []  # closed on it
        assert await client(port, b"good", 3) == [frame(b"re:good-%d" % n) for n in range(3)]
        assert mux.statistics().psock_attach == 1
        nursery.cancel_scope.cancel()
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "handshake failed" in warning.getMessage()
    assert "bad greeting b'GOODBYE'" in warning.getMessage()


async def test_a_handshake_that_takes_too_long_drops_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        with trio.fail_after(60):
            await mux.serve_stream(ours, handshake=greeting, handshake_timeout=5)
        assert mux.statistics().psock_attach == 0
        with pytest.raises(trio.BrokenResourceError):
            await peer.send_all(b"too late\n")


async def test_serve_stream_returns_when_the_stream_leaves_the_mux() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, peer = trio.testing.memory_stream_pair()
        sock = mux.socket()
        done = trio.Event()

        async def serve() -> None:
            await mux.serve_stream(ours)
            done.set()

        nursery.start_soon(serve)
        await peer.send_all(frame(b"hi"))
        assert await sock.receive() == frame(b"hi")
        assert not done.is_set()  # still attached, still served
        await peer.send_stream.aclose()  # the client leaves cleanly
        with trio.fail_after(5):
            await done.wait()
        assert mux.streams == ()  # auto_close: it left the mux, closed


async def test_cancelling_the_handler_fails_its_stream_and_the_rest_goes_on() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        served_ours, _served_peer = trio.testing.lockstep_stream_pair()
        other_ours, other_peer = trio.testing.memory_stream_pair()
        other = mux.attach(other_ours)
        server = trio.CancelScope()
        nursery.start_soon(_in_scope, server, mux.serve_stream, served_ours)
        await trio.testing.wait_all_tasks_blocked()
        [served] = [h for h in mux.streams if h is not other]
        server.cancel()
        err = await next_error(mux)
        assert err.stream is served
        assert err.errno == errno.EPIPE
        assert "serve_stream() handler was cancelled" in str(err)
        assert not err.peer_closed
        sock = mux.socket()
        await sock.send(frame(b"still works"))
        assert await PeerReader(other_peer).read_frames(1) == [frame(b"still works")]
        nursery.cancel_scope.cancel()


async def _in_scope(scope: trio.CancelScope, fn: object, *args: object) -> None:
    with scope:
        await fn(*args)  # type: ignore[operator]


async def test_serve_stream_on_a_closed_mux_closes_the_stream() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        pass
    ours, peer = trio.testing.memory_stream_pair()
    with pytest.raises(trio.ClosedResourceError):
        await mux.serve_stream(ours)
    with pytest.raises(trio.BrokenResourceError):
        await peer.send_all(b"x")


async def test_handshake_timeout_must_be_positive() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, _ = trio.testing.memory_stream_pair()
        with pytest.raises(ValueError, match="handshake_timeout"):
            await mux.serve_stream(ours, handshake=greeting, handshake_timeout=0)
