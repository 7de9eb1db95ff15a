"""Message origin and pinned replies: receive_from, receive_many_from, send_to."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import Gate, PeerReader, deadline, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


class CountingPolicy(trio_kcm.Policy):
    """Round-robin both ways, counting every transmit call it gets."""

    def __init__(self) -> None:
        self.rr = trio_kcm.load_policy("round-robin")
        self.tx_calls: list[str] = []

    def socket_added(self, sock: trio_kcm.KCMSocket, /) -> None:
        self.rr.socket_added(sock)

    def socket_removed(self, sock: trio_kcm.KCMSocket, /) -> None:
        self.rr.socket_removed(sock)

    def pick_socket(
        self, stream: trio_kcm.AttachedStream | None, message: bytes, /
    ) -> trio_kcm.KCMSocket | None:
        return self.rr.pick_socket(stream, message)

    def stream_added(self, stream: trio_kcm.AttachedStream, /) -> None:
        self.rr.stream_added(stream)

    def stream_removed(self, stream: trio_kcm.AttachedStream, /) -> None:
        self.rr.stream_removed(stream)

    def pick_stream(
        self, sock: trio_kcm.KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> trio_kcm.AttachedStream | None:
        self.tx_calls.append("pick")
        return self.rr.pick_stream(sock, messages, nbytes)

    def written(
        self,
        stream: trio_kcm.AttachedStream,
        sock: trio_kcm.KCMSocket,
        nbytes: int,
        seconds: float,
        /,
    ) -> None:
        self.tx_calls.append("written")

    def released(self, stream: trio_kcm.AttachedStream, sock: trio_kcm.KCMSocket, /) -> None:
        self.tx_calls.append("released")


# ---------------------------------------------------------------------------
# the server: 16 clients over real loopback TCP


@deadline(20)
async def test_sixteen_tcp_clients_each_get_their_own_replies() -> None:
    clients = 16
    requests = 40
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    conns: list[trio.SocketStream] = []
    try:
        with trio.fail_after(30):
            # round-robin for transmit: a reply left to the policy would go to
            # the wrong client 15 times out of 16.
            async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
                for _ in range(clients):
                    conn = await trio.open_tcp_stream("127.0.0.1", port)
                    conns.append(conn)
                    accepted = await listener.accept()
                    conns.append(accepted)  # type: ignore[arg-type]
                    mux.attach(accepted)
                server = mux.socket()

                async def worker(sock: trio_kcm.KCMSocket) -> None:
                    async for request, origin in _from(sock):
                        assert origin in mux.streams
                        await sock.send_to(frame(b"re:" + request[4:]), origin)

                async def client(i: int, conn: trio.SocketStream) -> None:
                    for seq in range(requests):
                        await conn.send_all(frame(b"%d:%d" % (i, seq)))
                    replies = await PeerReader(conn).read_frames(requests)
                    got = sorted(replies, key=lambda r: int(r[4:].split(b":")[2]))
                    assert got == [frame(b"re:%d:%d" % (i, seq)) for seq in range(requests)]

                async with trio.open_nursery() as workers:
                    for sock in [server, server.clone(), server.clone(), server.clone()]:
                        workers.start_soon(worker, sock)
                    async with trio.open_nursery() as nursery:
                        for i in range(clients):
                            nursery.start_soon(client, i, conns[2 * i])
                    workers.cancel_scope.cancel()
            # The mux closed (flushing): every reply's write is counted now.
            assert mux.statistics().tx_msgs == clients * requests
    finally:
        for conn in conns:
            await trio.aclose_forcefully(conn)
        await trio.aclose_forcefully(listener)


async def _from(sock: trio_kcm.KCMSocket):  # type: ignore[no-untyped-def]
    while True:
        yield await sock.receive_from()


# ---------------------------------------------------------------------------
# receive_from


@deadline(20)
async def test_receive_from_names_the_stream() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        a, peer_a = trio.testing.memory_stream_pair()
        b, peer_b = trio.testing.memory_stream_pair()
        ha, hb = mux.attach(a), mux.attach(b)
        sock = mux.socket()
        await peer_a.send_all(frame(b"from a"))
        assert await sock.receive_from() == (frame(b"from a"), ha)
        await peer_b.send_all(frame(b"from b"))
        assert await sock.receive_from() == (frame(b"from b"), hb)
        with pytest.raises(trio.WouldBlock):
            sock.receive_from_nowait()
        await peer_a.send_all(frame(b"1") + frame(b"2"))
        await peer_b.send_all(frame(b"3"))
        await trio.testing.wait_all_tasks_blocked()
        assert sock.receive_from_nowait() == (frame(b"1"), ha)
        assert sock.receive_many_from_nowait(10) == [(frame(b"2"), ha), (frame(b"3"), hb)]
        await peer_b.send_all(frame(b"4") + frame(b"5"))
        assert await sock.receive_many_from(1) == [(frame(b"4"), hb)]
        assert await sock.receive_many_from(5) == [(frame(b"5"), hb)]
        with pytest.raises(ValueError):
            await sock.receive_many_from(0)
        with pytest.raises(ValueError):
            sock.receive_many_from_nowait(0)
        stats = sock.statistics()
        assert (stats.rx_msgs, stats.rx_queued_msgs) == (7, 0)


@deadline(20)
async def test_receive_from_keeps_the_origin_when_messages_move() -> None:
    # A message moved off a disabled socket, or left by a stream that was
    # unattached, still names the stream it came on.
    async with trio_kcm.open_mux(parser=P, receive_buffer_size=1) as mux:
        a, peer_a = trio.testing.memory_stream_pair()
        ha = mux.attach(a)
        first = mux.socket()
        await peer_a.send_all(frame(b"x") + frame(b"y") + frame(b"z"))
        await trio.testing.wait_all_tasks_blocked()
        assert first.statistics().rx_queued_msgs == 1  # full: the rest is held
        await mux.unattach(ha)  # its complete messages stay
        first.disable_receive()
        second = mux.socket()
        assert await second.receive_from() == (frame(b"x"), ha)
        assert await second.receive_from() == (frame(b"y"), ha)
        assert await second.receive_many_from(5) == [(frame(b"z"), ha)]


@deadline(20)
async def test_receive_from_waits_and_is_cancellable() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        a, peer = trio.testing.memory_stream_pair()
        h = mux.attach(a)
        sock = mux.socket()
        with trio.move_on_after(0.01) as scope:
            await sock.receive_from()
        assert scope.cancelled_caught
        async with trio.open_nursery() as nursery:
            got: list[tuple[bytes, trio_kcm.AttachedStream]] = []

            async def take() -> None:
                got.append(await sock.receive_from())

            nursery.start_soon(take)
            await trio.testing.wait_all_tasks_blocked()
            await peer.send_all(frame(b"late"))
        assert got == [(frame(b"late"), h)]
        await sock.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await sock.receive_from()
        with pytest.raises(trio.ClosedResourceError):
            sock.receive_many_from_nowait(2)


# ---------------------------------------------------------------------------
# send_to


@deadline(20)
async def test_send_to_goes_on_that_stream_and_bypasses_the_policy() -> None:
    policy = CountingPolicy()
    async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
        pairs = [trio.testing.memory_stream_pair() for _ in range(3)]
        handles = [mux.attach(ours) for ours, _ in pairs]
        sock = mux.socket()
        for i in range(9):
            await sock.send_to(frame(b"m%d" % i), handles[1])
        sock.send_to_nowait(frame(b"m9"), handles[1])
        await trio.testing.wait_all_tasks_blocked()
        assert await PeerReader(pairs[1][1]).read_frames(10) == [
            frame(b"m%d" % i) for i in range(10)
        ]
        assert [h.statistics().tx_msgs for h in handles] == [0, 10, 0]
        assert policy.tx_calls == []
        stats = handles[1].statistics()
        assert (stats.tx_msgs, stats.reserved, stats.unreserved) == (10, 0, 0)
        assert sock.statistics().tx_msgs == 10
        # Ordinary sends still ask the policy.
        await sock.send(frame(b"policy"))
        await trio.testing.wait_all_tasks_blocked()
        assert policy.tx_calls == ["pick", "written", "released"]


@deadline(20)
async def test_send_to_is_validated() -> None:
    async with trio_kcm.open_mux(parser=P, max_message_size=50) as mux:
        ours, _peer = trio.testing.memory_stream_pair()
        h = mux.attach(ours)
        sock = mux.socket()
        with pytest.raises(trio_kcm.BadMessage):
            await sock.send_to(frame(b"abc")[:-1], h)
        with pytest.raises(OSError) as info:
            sock.send_to_nowait(frame(b"x" * 60), h)
        assert info.value.errno == errno.EMSGSIZE
        assert sock.statistics().tx_msgs == 0


@deadline(20)
async def test_send_to_concurrent_senders_stay_whole_and_in_order() -> None:
    async with trio_kcm.open_mux(parser=P, send_buffer_size=64) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        other, _ = trio.testing.memory_stream_pair()
        mux.attach(other)
        h = mux.attach(ours)
        socks = [mux.socket() for _ in range(4)]

        async def sender(k: int, sock: trio_kcm.KCMSocket) -> None:
            for i in range(50):
                await sock.send_to(frame(b"%d-%03d" % (k, i) + b"." * (i % 7)), h)

        async with trio.open_nursery() as nursery:
            for k, sock in enumerate(socks):
                nursery.start_soon(sender, k, sock)
        frames = await PeerReader(peer).read_frames(200)
        for k in range(4):
            mine = [f for f in frames if f[4:].startswith(b"%d-" % k)]
            assert mine == [frame(b"%d-%03d" % (k, i) + b"." * (i % 7)) for i in range(50)]


@deadline(20)
async def test_send_to_waits_for_buffer_space_and_cancel_withdraws() -> None:
    gate = Gate()
    async with trio_kcm.open_mux(parser=P, send_buffer_size=10) as mux:
        h = mux.attach(gate.stream)
        sock = mux.socket()
        gate.close_gate()
        await sock.send_to(frame(b"first-msg"), h)  # 13 bytes: buffer now full
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            sock.send_to_nowait(frame(b"b"), h)
        with trio.move_on_after(1) as scope:
            await sock.send_to(frame(b"withdrawn"), h)
        assert scope.cancelled_caught
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sock.send_to, frame(b"waits"), h)
            await trio.testing.wait_all_tasks_blocked()
            assert sock.statistics().tx_queued_msgs == 1  # not accepted yet
            gate.open.set()
        await trio.testing.wait_all_tasks_blocked()
        assert gate.written() == [frame(b"first-msg"), frame(b"waits")]


@deadline(20)
async def test_send_to_a_handle_that_cannot_take_it() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio_kcm.open_mux(parser=P) as other_mux:
        a, peer_a = trio.testing.memory_stream_pair()
        b, _peer_b = trio.testing.memory_stream_pair()
        c, _peer_c = trio.testing.memory_stream_pair()
        ha, hb = mux.attach(a), mux.attach(b)
        hc = other_mux.attach(c)
        sock = mux.socket()
        with pytest.raises(ValueError, match="not attached to this mux"):
            await sock.send_to(frame(b"x"), hc)
        peer_a.send_stream.close()  # EOF: the stream fails
        errors = mux.errors()
        error = await errors.__anext__()
        assert error.stream is ha
        with pytest.raises(trio.BrokenResourceError) as info:
            await sock.send_to(frame(b"x"), ha)
        assert info.value.__cause__ is error
        assert error.errno == errno.EPIPE
        with pytest.raises(trio.BrokenResourceError):
            sock.send_to_nowait(frame(b"x"), ha)
        assert await mux.unattach(hb) is b
        with pytest.raises(trio.ClosedResourceError, match="unattached"):
            await sock.send_to(frame(b"x"), hb)
        await sock.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await sock.send_to(frame(b"x"), ha)


@deadline(20)
async def test_pinned_messages_of_a_failed_stream_are_reported_not_moved() -> None:
    gate = Gate()
    async with trio_kcm.open_mux(parser=P, retry_in_doubt=True) as mux:
        other, other_peer = trio.testing.memory_stream_pair()
        mux.attach(other)
        h = mux.attach(gate.stream)
        sock = mux.socket()
        gate.close_gate()
        await sock.send_to(frame(b"in flight"), h)
        await trio.testing.wait_all_tasks_blocked()  # its write started, and blocks
        await sock.send_to(frame(b"queued 1"), h)
        await sock.send_to(frame(b"queued 2"), h)
        assert sock.statistics().tx_queued_msgs == 3
        gate.receive.put_eof()  # the peer goes away
        error = await mux.errors().__anext__()
        assert error.stream is h
        assert error.in_doubt == (frame(b"in flight"),)
        assert error.unsent == (frame(b"queued 1"), frame(b"queued 2"))
        assert sock.statistics().tx_queued_msgs == 0  # given up: buffer space back
        assert mux.statistics().tx_retries == 0
        await sock.send(frame(b"elsewhere"))
        # Nothing pinned went to the other stream.
        assert await PeerReader(other_peer).read_frames(1) == [frame(b"elsewhere")]
        assert mux.streams[0].statistics().tx_msgs == 1


@deadline(20)
async def test_a_sender_waiting_to_send_to_a_stream_that_fails_gets_the_error() -> None:
    gate = Gate()
    async with trio_kcm.open_mux(parser=P, send_buffer_size=5) as mux:
        slow = Gate()
        hs = mux.attach(slow.stream)
        h = mux.attach(gate.stream)
        sock = mux.socket()
        slow.close_gate()
        await sock.send_to(frame(b"stuck"), hs)  # fills the buffer, on another stream
        await trio.testing.wait_all_tasks_blocked()
        raised: list[BaseException] = []

        async def waiter() -> None:
            try:
                await sock.send_to(frame(b"never"), h)
            except trio.BrokenResourceError as exc:
                raised.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not raised
            gate.receive.put_eof()
        assert len(raised) == 1
        assert isinstance(raised[0].__cause__, trio_kcm.StreamError)
        slow.open.set()
        await trio.testing.wait_all_tasks_blocked()
        assert slow.written() == [frame(b"stuck")]
        assert gate.written() == []


@deadline(20)
async def test_unattach_writes_pinned_messages_first() -> None:
    gate = Gate()
    async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
        other, other_peer = trio.testing.memory_stream_pair()
        mux.attach(other)
        h = mux.attach(gate.stream)
        sock = mux.socket()
        gate.close_gate()
        await sock.send_to(frame(b"p1"), h)
        await trio.testing.wait_all_tasks_blocked()
        await sock.send_to(frame(b"p2"), h)
        await sock.send(frame(b"a"))
        await sock.send(frame(b"b"))  # round-robin: one of these is queued on h
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mux.unattach, h)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.ClosedResourceError):
                await sock.send_to(frame(b"too late"), h)
            gate.open.set()
        assert h.state == "unattached"
        assert gate.written() == [frame(b"p1"), frame(b"p2")]
        assert sorted(await PeerReader(other_peer).read_frames(2)) == [frame(b"a"), frame(b"b")]


@deadline(20)
async def test_cancelled_unattach_with_pinned_messages_fails_the_stream() -> None:
    gate = Gate()
    async with trio_kcm.open_mux(parser=P) as mux:
        h = mux.attach(gate.stream)
        sock = mux.socket()
        gate.close_gate()
        await sock.send_to(frame(b"p1"), h)
        await trio.testing.wait_all_tasks_blocked()
        await sock.send_to(frame(b"p2"), h)
        with trio.move_on_after(1):
            await mux.unattach(h)
        assert h.state == "failed"
        error = await mux.errors().__anext__()
        assert (error.in_doubt, error.unsent) == ((frame(b"p1"),), (frame(b"p2"),))


@deadline(20)
async def test_send_to_over_socketpair_with_real_backpressure() -> None:
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours, theirs = trio.SocketStream(a), trio.SocketStream(b)
    try:
        async with trio_kcm.open_mux(parser=P, send_buffer_size=8192) as mux:
            h = mux.attach(ours)
            sock = mux.socket()
            payloads = [frame(bytes([i % 256]) * 1000) for i in range(200)]

            async def send_all() -> None:
                for p in payloads:
                    await sock.send_to(p, h)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                await trio.testing.wait_all_tasks_blocked()
                # The peer reads nothing yet: the sender is held by the buffer.
                assert sock.statistics().tx_msgs < len(payloads)
                assert await PeerReader(theirs).read_frames(len(payloads)) == payloads
    finally:
        await trio.aclose_forcefully(theirs)
