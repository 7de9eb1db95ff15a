"""Receive: steering, bounded queues, reader backpressure, moving queued messages."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_kcm

from .conftest import frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


async def test_receive_variants() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        with pytest.raises(trio.WouldBlock):
            sock.receive_nowait()
        with pytest.raises(trio.WouldBlock):
            sock.receive_many_nowait(3)
        await peer.send_all(b"".join(frame(b"%d" % i) for i in range(10)))
        assert await sock.receive() == frame(b"0")
        await trio.testing.wait_all_tasks_blocked()
        assert sock.receive_nowait() == frame(b"1")
        assert sock.receive_many_nowait(3) == [frame(b"%d" % i) for i in (2, 3, 4)]
        assert await sock.receive_many(100) == [frame(b"%d" % i) for i in range(5, 10)]
        with pytest.raises(ValueError):
            await sock.receive_many(0)
        stats = sock.statistics()
        assert (stats.rx_msgs, stats.rx_bytes, stats.rx_queued_msgs) == (10, 50, 0)
        assert mux.statistics().rx_msgs == 10


async def test_receive_many_takes_what_is_queued_without_waiting_for_more() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        async with trio.open_nursery() as nursery:
            results: list[list[bytes]] = []

            async def receiver() -> None:
                results.append(await sock.receive_many(64))

            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await peer.send_all(frame(b"a") + frame(b"b") + frame(b"c"))
        assert results == [[frame(b"a"), frame(b"b"), frame(b"c")]]


async def test_async_iteration_ends_when_the_mux_closes() -> None:
    got: list[bytes] = []
    async with trio.open_nursery() as nursery, trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()

        async def consume() -> None:
            async for message in sock:
                got.append(message)

        nursery.start_soon(consume)
        await peer.send_all(frame(b"1") + frame(b"2"))
        await trio.testing.wait_all_tasks_blocked()
    assert got == [frame(b"1"), frame(b"2")]


async def test_many_receivers_get_each_message_once() -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sockets = [mux.socket() for _ in range(3)]
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def worker(sock: trio_kcm.KCMSocket) -> None:
                while True:
                    got.extend(await sock.receive_many(7))

            for sock in sockets:
                for _ in range(4):  # several tasks per socket
                    nursery.start_soon(worker, sock)
            sent = [frame(b"msg %d" % i) for i in range(3000)]
            for i in range(0, 3000, 100):
                await peer.send_all(b"".join(sent[i : i + 100]))
                await trio.lowlevel.checkpoint()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert sorted(got) == sorted(sent)


async def test_full_receive_queue_pauses_the_reader(autojump_clock: object) -> None:
    async with trio_kcm.open_mux(parser=P, receive_buffer_size=1000) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        sock = mux.socket()
        message = frame(b"x" * 96)  # 100 bytes
        for _ in range(100):  # 10 kB: ten times the buffer
            await peer.send_all(message)
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(5)
        stats = sock.statistics()
        assert stats.rx_queued_bytes == 1000  # bounded: full, not over
        assert handle.statistics().rx_paused >= 5  # the reader stopped, and still is
        # The rest waits unread in the stream, not in the mux.
        assert handle.statistics().rx_msgs <= 10 + 1
        got = []
        while len(got) < 100:
            got.extend(await sock.receive_many(100))
        assert got == [message] * 100


async def test_disable_receive_moves_queued_messages() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        busy = mux.socket()
        await peer.send_all(b"".join(frame(b"%d" % i) for i in range(5)))
        await trio.testing.wait_all_tasks_blocked()
        assert busy.statistics().rx_queued_msgs == 5
        busy.disable_receive()
        assert not busy.receive_enabled
        assert busy.statistics().rx_queued_msgs == 0
        # No other socket: the messages wait in the mux, then go to the first taker.
        idle = mux.socket()
        assert idle.receive_many_nowait(10) == [frame(b"%d" % i) for i in range(5)]
        await peer.send_all(frame(b"new"))
        assert await idle.receive() == frame(b"new")
        assert busy.statistics().rx_queued_msgs == 0  # disabled: got nothing
        busy.enable_receive()
        await idle.aclose()
        await peer.send_all(frame(b"after"))
        assert await busy.receive() == frame(b"after")


async def test_aclose_moves_queued_messages_and_wakes_receivers() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        first = mux.socket()
        await peer.send_all(frame(b"a") + frame(b"b"))
        await trio.testing.wait_all_tasks_blocked()
        second = first.clone()
        await first.aclose()
        await first.aclose()  # idempotent
        assert second.receive_many_nowait(10) == [frame(b"a"), frame(b"b")]
        with pytest.raises(trio.ClosedResourceError):
            await first.receive()
        with pytest.raises(trio.ClosedResourceError):
            await first.send(frame(b"x"))
        with pytest.raises(trio.ClosedResourceError):
            first.disable_receive()

        async with trio.open_nursery() as nursery:

            async def blocked_receiver() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await second.receive()

            nursery.start_soon(blocked_receiver)
            await trio.testing.wait_all_tasks_blocked()
            await second.aclose()


async def test_messages_survive_when_all_sockets_are_full_then_drain() -> None:
    async with trio_kcm.open_mux(parser=P, receive_buffer_size=10, policy="round-robin") as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        a, b = mux.socket(), mux.socket()
        sent = [frame(b"%02d" % i) for i in range(20)]
        await peer.send_all(b"".join(sent))
        await trio.testing.wait_all_tasks_blocked()
        got = []
        while len(got) < 20:
            for sock in (a, b):
                try:
                    got.extend(sock.receive_many_nowait(5))
                except trio.WouldBlock:
                    pass
            await trio.testing.wait_all_tasks_blocked()
        assert sorted(got) == sent


async def test_closed_mux() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        sock = mux.socket()
    with pytest.raises(trio.ClosedResourceError):
        await sock.receive()
    with pytest.raises(trio.ClosedResourceError):
        await sock.send(frame(b"x"))
    with pytest.raises(trio.ClosedResourceError):
        mux.socket()
    ours, _ = trio.testing.memory_stream_pair()
    with pytest.raises(trio.ClosedResourceError):
        mux.attach(ours)


async def test_async_for_ends_when_the_mux_closes_not_when_you_close_the_socket() -> None:
    async with trio_kcm.open_mux(parser=trio_kcm.LengthPrefixed(">I", adjust=4)) as mux:
        mine = mux.socket()
        iterated = mux.socket()
        await mine.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await mine.__anext__()  # closed by us: an error, as for a closed channel
    with pytest.raises(trio.ClosedResourceError):
        await mine.__anext__()  # still ours that closed it, after the mux closed too
    with pytest.raises(StopAsyncIteration):
        await iterated.__anext__()  # closed by the mux: iteration ends
