"""KCMSocket.flush(): wait until what a socket accepted was written, or given up."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import PeerReader, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


async def _flush_in_background(
    nursery: trio.Nursery, sock: trio_kcm.KCMSocket
) -> tuple[trio.Event, list[BaseException]]:
    done = trio.Event()
    raised: list[BaseException] = []

    async def run() -> None:
        try:
            await sock.flush()
        except trio.ClosedResourceError as exc:
            raised.append(exc)
        done.set()

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return done, raised


async def test_flush_waits_until_the_peer_took_every_accepted_message() -> None:
    # A lockstep stream: a write completes only as the peer reads it.
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, peer = trio.testing.lockstep_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        for i in range(5):
            await sock.send(frame(b"m%d" % i))
        done, raised = await _flush_in_background(nursery, sock)
        assert not done.is_set()
        reader = PeerReader(peer)
        assert await reader.read_frames(5) == [frame(b"m%d" % i) for i in range(5)]
        with trio.fail_after(5):
            await done.wait()
        assert raised == []
        assert sock.statistics().tx_queued_msgs == 0


async def test_flush_does_not_wait_for_messages_accepted_after_it() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, peer = trio.testing.lockstep_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        await sock.send(frame(b"before"))
        done, _ = await _flush_in_background(nursery, sock)
        await sock.send(frame(b"after"))  # queued behind, not waited for
        reader = PeerReader(peer)
        assert await reader.read_frames(1) == [frame(b"before")]
        with trio.fail_after(5):
            await done.wait()
        assert sock.statistics().tx_queued_msgs == 1  # "after" may still be queued
        assert await reader.read_frames(1) == [frame(b"after")]


async def test_flush_with_nothing_outstanding_returns_at_once() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        sock = mux.socket()
        with trio.testing.assert_checkpoints():
            await sock.flush()


async def test_flush_returns_when_a_failed_stream_gives_its_messages_up() -> None:
    async with (
        trio_kcm.open_mux(parser=P, retry_in_doubt=False) as mux,
        trio.open_nursery() as nursery,
    ):
        ours, peer = trio.testing.lockstep_stream_pair()
        handle = mux.attach(ours)
        sock = mux.socket()
        await sock.send(frame(b"in doubt"))
        done, raised = await _flush_in_background(nursery, sock)
        assert not done.is_set()
        await peer.aclose()  # the write in flight fails: in doubt, not retried
        with trio.fail_after(5):
            await done.wait()
        assert raised == []
        err = await anext(mux.errors())
        assert err.stream is handle
        assert err.in_doubt == (frame(b"in doubt"),)


async def test_flush_waits_for_another_tasks_open_batch_and_sends_its_own() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        release = trio.Event()

        async def batcher() -> None:
            async with sock.batch():
                await sock.send(frame(b"held by another task"))
                await release.wait()

        nursery.start_soon(batcher)
        await trio.testing.wait_all_tasks_blocked()
        done, _ = await _flush_in_background(nursery, sock)
        assert not done.is_set()  # the other task's batch has not ended
        release.set()
        with trio.fail_after(5):
            await done.wait()
        async with sock.batch():
            await sock.send(frame(b"mine"))
            await sock.flush()  # my own batch goes out first, then it is flushed
            assert sock.statistics().tx_batched_msgs == 0
        got = await PeerReader(peer).read_frames(2)
        assert got == [frame(b"held by another task"), frame(b"mine")]


async def test_closing_the_socket_ends_a_flush_with_closed_resource_error() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, peer = trio.testing.lockstep_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        await sock.send(frame(b"slow"))
        done, raised = await _flush_in_background(nursery, sock)
        await sock.aclose()
        with trio.fail_after(5):
            await done.wait()
        assert [type(e) for e in raised] == [trio.ClosedResourceError]
        # Accepted, so still sent.
        assert await PeerReader(peer).read_frames(1) == [frame(b"slow")]
        with pytest.raises(trio.ClosedResourceError):
            await sock.flush()


async def test_a_cancelled_flush_leaves_nothing_behind() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.lockstep_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        await sock.send(frame(b"slow"))
        with trio.move_on_after(0.01):
            await sock.flush()
        # The message is unaffected, and a flush after it works as ever.
        async with trio.open_nursery() as nursery:
            done, raised = await _flush_in_background(nursery, sock)
            assert await PeerReader(peer).read_frames(1) == [frame(b"slow")]
            with trio.fail_after(5):
                await done.wait()
        assert raised == []
