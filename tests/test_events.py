"""mux.events(): attach, unattach, failure, ... each naming its stream; bounded."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

import trio_kcm
from trio_kcm._mux import EVENT_BACKLOG

from .conftest import frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


def take_all(mux: trio_kcm.Mux) -> list[trio_kcm.MuxEvent]:
    """The events waiting now (the mux's queue; no await needed to inspect)."""
    events = list(mux._lifecycle.events.items)
    mux._lifecycle.events.items.clear()
    return events


async def test_a_stream_s_life_in_events() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        feed = mux.events()
        h = mux.attach(ours)
        event = await feed.__anext__()
        assert isinstance(event, trio_kcm.StreamAttached)
        assert event == trio_kcm.StreamAttached(h, event.time)
        assert 0 <= trio.current_time() - event.time < 5
        await peer.send_all(b"\xff\xff\xff\xff")  # 4 GiB announced: EMSGSIZE
        failed = await feed.__anext__()
        assert isinstance(failed, trio_kcm.StreamFailed)
        assert failed.stream is h
        assert failed.error.errno == errno.EMSGSIZE
        assert failed.error is await mux.errors().__anext__()  # the same error
        gone = await feed.__anext__()
        assert gone == trio_kcm.StreamUnattached(h, True, gone.time)  # auto_close
        assert h.state == "failed"


async def test_explicit_unattach_and_auto_close_false() -> None:
    async with trio_kcm.open_mux(parser=P, auto_close=False) as mux:
        a, _peer_a = trio.testing.memory_stream_pair()
        b, peer_b = trio.testing.memory_stream_pair()
        ha, hb = mux.attach(a), mux.attach(b)
        await mux.unattach(ha)
        await peer_b.aclose()
        await trio.testing.wait_all_tasks_blocked()
        await mux.unattach(hb)
        events = take_all(mux)
        assert [(type(e).__name__, getattr(e, "stream", None)) for e in events] == [
            ("StreamAttached", ha),
            ("StreamAttached", hb),
            ("StreamUnattached", ha),
            ("StreamFailed", hb),
            ("StreamUnattached", hb),
        ]
        assert isinstance(events[2], trio_kcm.StreamUnattached)
        assert isinstance(events[4], trio_kcm.StreamUnattached)
        assert not events[2].closed  # handed back
        assert not events[4].closed  # auto_close=False: the application closes it
        assert (ha.state, hb.state) == ("unattached", "failed")


async def test_the_feed_ends_after_the_mux_closed_and_reports_the_last_closes() -> None:
    seen: list[trio_kcm.MuxEvent] = []
    async with trio.open_nursery() as nursery, trio_kcm.open_mux(parser=P) as mux:

        async def monitor() -> None:
            async for event in mux.events():
                seen.append(event)

        nursery.start_soon(monitor)
        h = mux.attach(trio.testing.memory_stream_pair()[0])
    # The monitor returned by itself: the nursery did not need cancelling.
    assert [type(e) for e in seen] == [trio_kcm.StreamAttached, trio_kcm.StreamUnattached]
    assert seen[1] == trio_kcm.StreamUnattached(h, True, seen[1].time)
    with pytest.raises(StopAsyncIteration):
        await mux.events().__anext__()


async def test_a_late_monitor_sees_what_happened_and_each_event_is_taken_once() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        handles = [mux.attach(trio.testing.memory_stream_pair()[0]) for _ in range(4)]
        got: dict[str, list[trio_kcm.MuxEvent]] = {"a": [], "b": []}

        async def monitor(name: str) -> None:
            async for event in mux.events():
                got[name].append(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor, "a")
            nursery.start_soon(monitor, "b")
            await trio.testing.wait_all_tasks_blocked()
            for h in handles:
                await mux.unattach(h)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        everything = got["a"] + got["b"]
        assert len(everything) == 8
        assert len({id(e) for e in everything}) == 8  # none seen twice
        attached = [e.stream for e in everything if isinstance(e, trio_kcm.StreamAttached)]
        gone = [e.stream for e in everything if isinstance(e, trio_kcm.StreamUnattached)]
        assert sorted(h.index for h in attached) == sorted(h.index for h in gone) == [0, 1, 2, 3]
        assert set(attached) == set(gone) == set(handles)


async def test_events_are_bounded_and_drops_are_counted() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        cycles = EVENT_BACKLOG // 2 + 100
        last = None
        for _ in range(cycles):
            last = mux.attach(trio.testing.memory_stream_pair()[0])
            await mux.unattach(last)
        stats = mux.statistics()
        assert stats.events_dropped == 2 * cycles - EVENT_BACKLOG
        events = take_all(mux)
        assert len(events) == EVENT_BACKLOG
        # The newest were kept.
        assert events[-1] == trio_kcm.StreamUnattached(last, False, events[-1].time)  # type: ignore[arg-type]
        # A taken event frees its place: nothing more is dropped.
        mux.attach(trio.testing.memory_stream_pair()[0])
        assert mux.statistics().events_dropped == stats.events_dropped
        assert "events_dropped" in repr(mux.statistics())


async def test_events_are_frozen_and_exported() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        h = mux.attach(trio.testing.memory_stream_pair()[0])
        (event,) = take_all(mux)
        with pytest.raises(AttributeError):
            event.stream = h  # type: ignore[misc]
        assert isinstance(event, trio_kcm.MuxEvent)
    for name in (
        "StreamAttached",
        "StreamUnattached",
        "StreamFailed",
        "StreamStalled",
        "StreamResumed",
        "ReconnectScheduled",
    ):
        cls = getattr(trio_kcm, name)
        assert issubclass(cls, trio_kcm.MuxEvent)
        assert cls.__module__ == "trio_kcm"


async def test_failure_event_names_pinned_messages_too() -> None:
    # A message received from a stream that then failed: the reply's error and
    # the failure event name the same handle.
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        await peer.send_all(frame(b"request"))
        _, origin = await sock.receive_from()
        await peer.aclose()
        await trio.testing.wait_all_tasks_blocked()
        failed = [e for e in take_all(mux) if isinstance(e, trio_kcm.StreamFailed)]
        assert [e.stream for e in failed] == [origin]
        with pytest.raises(trio.BrokenResourceError) as info:
            await sock.send_to(frame(b"reply"), origin)
        assert info.value.__cause__ is failed[0].error
