"""tx_stall_timeout: a stream whose write makes no progress stops getting messages."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import Gate, PeerReader, deadline, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


def events_of(mux: trio_kcm.Mux, *kinds: type) -> list[trio_kcm.MuxEvent]:
    events = [e for e in mux._lifecycle.events.items if isinstance(e, kinds)]
    mux._lifecycle.events.items.clear()
    return events


@deadline(100)
async def test_a_stalled_stream_hands_its_queue_over(autojump_clock: trio.abc.Clock) -> None:
    gate = Gate()
    async with trio_kcm.open_mux(parser=P, policy="round-robin", tx_stall_timeout=4) as mux:
        a = mux.attach(gate.stream)
        b_ours, b_peer = trio.testing.memory_stream_pair()
        mux.attach(b_ours)
        sock = mux.socket()
        gate.close_gate()
        start = trio.current_time()
        # Round-robin: m0, m2, m4 to a; m0 starts alone, and blocks.
        await sock.send(frame(b"m0"))
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, 6):
            await sock.send(frame(b"m%d" % i))
        await trio.testing.wait_all_tasks_blocked()
        assert a.statistics().tx_queued_msgs == 3
        assert await PeerReader(b_peer).read_frames(3) == [frame(b"m1"), frame(b"m3"), frame(b"m5")]
        assert not a.stalled
        await trio.sleep(3.9)
        assert not a.stalled  # not yet
        await trio.sleep(1.2)
        assert a.stalled
        (stalled,) = events_of(mux, trio_kcm.StreamStalled)
        assert isinstance(stalled, trio_kcm.StreamStalled)
        assert (stalled.stream, stalled.moved) == (a, 2)
        assert 4 <= stalled.time - start <= 5  # within a quarter of the timeout
        # The two that had not started went to b; the started one stays on a.
        assert await PeerReader(b_peer).read_frames(2) == [frame(b"m2"), frame(b"m4")]
        assert a.statistics().tx_queued_msgs == 1
        assert mux.statistics().tx_retries == 2
        # New messages go to b only.
        for i in range(6, 10):
            await sock.send(frame(b"m%d" % i))
        assert await PeerReader(b_peer).read_frames(4) == [frame(b"m%d" % i) for i in range(6, 10)]
        assert gate.written() == [frame(b"m0")]
        # The write completes: a is used again.
        gate.open.set()
        await trio.sleep(1.01)
        assert not a.stalled
        (resumed,) = events_of(mux, trio_kcm.StreamResumed)
        assert isinstance(resumed, trio_kcm.StreamResumed) and resumed.stream is a
        assert 0 < resumed.stalled_for <= 6
        for i in range(10, 14):
            await sock.send(frame(b"m%d" % i))
        await trio.testing.wait_all_tasks_blocked()
        assert len(gate.written()) == 2  # round-robin again
        assert a.statistics().tx_msgs == 3


@deadline(100)
async def test_a_slow_write_that_completes_in_time_is_no_stall(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def slow() -> None:
        await trio.sleep(3)

    send = trio.testing.MemorySendStream(slow)
    stream = trio.StapledStream(send, trio.testing.MemoryReceiveStream())
    async with trio_kcm.open_mux(parser=P, tx_stall_timeout=4) as mux:
        h = mux.attach(stream)
        sock = mux.socket()
        for i in range(5):
            await sock.send(frame(b"%d" % i))
            await trio.sleep(3.5)
        assert h.statistics().tx_msgs == 5
        assert not h.stalled
        assert not events_of(mux, trio_kcm.StreamStalled)


@deadline(100)
async def test_pinned_messages_stay_on_a_stalled_stream(autojump_clock: trio.abc.Clock) -> None:
    gate = Gate()
    async with trio_kcm.open_mux(parser=P, tx_stall_timeout=1) as mux:
        a = mux.attach(gate.stream)
        b_ours, b_peer = trio.testing.memory_stream_pair()
        mux.attach(b_ours)
        sock = mux.socket()
        gate.close_gate()
        await sock.send_to(frame(b"first"), a)
        await trio.testing.wait_all_tasks_blocked()
        await sock.send_to(frame(b"pinned"), a)
        await trio.sleep(2)
        assert a.stalled
        (stalled,) = events_of(mux, trio_kcm.StreamStalled)
        assert isinstance(stalled, trio_kcm.StreamStalled) and stalled.moved == 0
        await sock.send_to(frame(b"also pinned"), a)  # a stalled stream still takes send_to
        await sock.send(frame(b"policy"))
        assert await PeerReader(b_peer).read_frames(1) == [frame(b"policy")]
        gate.open.set()
        await trio.testing.wait_all_tasks_blocked()
        assert gate.written() == [frame(b"first"), frame(b"pinned"), frame(b"also pinned")]


@deadline(100)
async def test_with_every_stream_stalled_messages_wait(autojump_clock: trio.abc.Clock) -> None:
    gate = Gate()
    async with trio_kcm.open_mux(parser=P, tx_stall_timeout=1) as mux:
        a = mux.attach(gate.stream)
        sock = mux.socket()
        gate.close_gate()
        await sock.send(frame(b"0"))
        await trio.testing.wait_all_tasks_blocked()
        await sock.send(frame(b"1"))
        await trio.sleep(2)
        assert a.stalled
        assert sock.statistics().tx_queued_msgs == 2  # one in flight, one waiting for a stream
        # A new stream takes the waiting one.
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        assert await PeerReader(peer).read_frames(1) == [frame(b"1")]
        gate.open.set()
        await trio.testing.wait_all_tasks_blocked()
        assert gate.written() == [frame(b"0")]


@deadline(100)
async def test_closing_waits_for_a_stalled_write(autojump_clock: trio.abc.Clock) -> None:
    gate = Gate()
    async with trio.open_nursery() as nursery:
        async with trio_kcm.open_mux(parser=P, tx_stall_timeout=1, close_timeout=30) as mux:
            a = mux.attach(gate.stream)
            sock = mux.socket()
            gate.close_gate()
            await sock.send(frame(b"slow"))
            await trio.sleep(2)
            assert a.stalled

            async def open_later() -> None:
                await trio.sleep(10)
                gate.open.set()

            nursery.start_soon(open_later)
            closing = trio.current_time()
        assert trio.current_time() - closing == pytest.approx(10, abs=0.5)
    assert gate.written() == [frame(b"slow")]
    assert mux.statistics().tx_dropped == 0


@deadline(100)
async def test_a_stalled_stream_that_fails_reports_its_write_in_doubt(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = Gate()
    async with trio_kcm.open_mux(parser=P, tx_stall_timeout=1) as mux:
        a = mux.attach(gate.stream)
        sock = mux.socket()
        gate.close_gate()
        await sock.send(frame(b"stuck"))
        await trio.sleep(2)
        assert a.stalled
        gate.receive.put_eof()
        error = await mux.errors().__anext__()
        assert error.stream is a and error.in_doubt == (frame(b"stuck"),)
        await trio.testing.wait_all_tasks_blocked()
        kinds = [type(e) for e in events_of(mux, trio_kcm.MuxEvent)]
        assert kinds == [
            trio_kcm.StreamAttached,
            trio_kcm.StreamStalled,
            trio_kcm.StreamFailed,
            trio_kcm.StreamUnattached,
        ]


@deadline(100)
async def test_no_watchdog_without_a_timeout(autojump_clock: trio.abc.Clock) -> None:
    gate = Gate()
    async with trio_kcm.open_mux(parser=P) as mux:
        a = mux.attach(gate.stream)
        sock = mux.socket()
        gate.close_gate()
        await sock.send(frame(b"x"))
        before = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        # Nothing in the mux sleeps: the clock does not move by itself.
        assert trio.current_time() == before
        assert not a.stalled
        gate.open.set()


@deadline(100)
async def test_tx_stall_timeout_is_checked() -> None:
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="tx_stall_timeout"):
            async with trio_kcm.open_mux(parser=P, tx_stall_timeout=bad):
                pass  # pragma: no cover
