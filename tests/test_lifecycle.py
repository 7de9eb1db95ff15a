"""Attach, unattach, closing the mux, statistics."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import PeerReader, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


async def test_attach_twice_is_refused() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio_kcm.open_mux(parser=P) as other:
        ours, _ = trio.testing.memory_stream_pair()
        mux.attach(ours)
        with pytest.raises(ValueError, match="already attached"):
            mux.attach(ours)
        with pytest.raises(ValueError, match="already attached"):
            other.attach(ours)


async def test_unattach_hands_the_stream_back_with_unread_bytes() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        sock = mux.socket()
        half = frame(b"second")[:5]
        await peer.send_all(frame(b"first") + half)
        await trio.testing.wait_all_tasks_blocked()
        stream = await mux.unattach(handle)
        assert stream is ours
        assert handle.state == "unattached"
        assert handle.unread_data == half
        assert await sock.receive() == frame(b"first")  # complete ones are delivered
        assert mux.streams == ()
        # Open, and positioned right after the unread bytes.
        await peer.send_all(frame(b"second")[5:])
        assert handle.unread_data + await stream.receive_some(100) == frame(b"second")
        with pytest.raises(ValueError):
            await mux.unattach(handle)
        stats = mux.statistics()
        assert (stats.psock_attach, stats.psock_unattach) == (1, 1)
        await stream.aclose()


async def test_unattach_waits_for_the_write_in_progress_and_moves_the_rest() -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
        slow_ours, slow_peer = trio.testing.memory_stream_pair()
        release = trio.Event()

        async def slow_hook() -> None:
            await release.wait()
            trio.testing.memory_stream_pump(slow_ours.send_stream, slow_peer.receive_stream)

        slow_ours.send_stream.send_all_hook = slow_hook
        slow = mux.attach(slow_ours)
        sock = mux.socket()
        await sock.send(frame(b"in progress"))  # round-robin: onto the only stream
        await trio.testing.wait_all_tasks_blocked()
        fast_ours, fast_peer = trio.testing.memory_stream_pair()
        mux.attach(fast_ours)
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def unattach() -> None:
                await mux.unattach(slow)
                done.set()

            nursery.start_soon(unattach)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # waiting for the write
            with pytest.raises(trio.BusyResourceError):
                await mux.unattach(slow)
            for i in range(4):
                await sock.send(frame(b"later %d" % i))  # all go to the other stream
            release.set()
        assert await PeerReader(slow_peer).read_frames(1) == [frame(b"in progress")]
        assert await PeerReader(fast_peer).read_frames(4) == [
            frame(b"later %d" % i) for i in range(4)
        ]
        assert slow.state == "unattached"
        assert slow.statistics().tx_msgs == 1
        await slow_ours.aclose()


async def test_unattach_of_a_foreign_handle() -> None:
    async with trio_kcm.open_mux(parser=P) as a, trio_kcm.open_mux(parser=P) as b:
        ours, _ = trio.testing.memory_stream_pair()
        handle = a.attach(ours)
        with pytest.raises(ValueError):
            await b.unattach(handle)


async def test_closing_flushes_accepted_messages_and_closes_streams() -> None:
    ours, peer = trio.testing.memory_stream_pair()
    async with trio_kcm.open_mux(parser=P, send_buffer_size=1 << 20) as mux:
        mux.attach(ours)
        sock = mux.socket()
        for i in range(100):
            sock.send_nowait(frame(b"%d" % i))
    frames, rest = await PeerReader(peer).read_until_eof()  # EOF: the mux closed it
    assert frames == [frame(b"%d" % i) for i in range(100)]
    assert rest == b""
    stats = mux.statistics()
    assert (stats.tx_msgs, stats.tx_dropped, stats.streams, stats.sockets) == (100, 0, 0, 0)
    with pytest.raises(trio.ClosedResourceError):
        sock.send_nowait(frame(b"too late"))


async def test_close_timeout_bounds_the_flush_and_counts_drops(autojump_clock: object) -> None:
    ours, _peer = trio.testing.lockstep_stream_pair()  # nobody reads the peer: writes block
    start = trio.current_time()
    async with trio_kcm.open_mux(parser=P, close_timeout=3) as mux:
        mux.attach(ours)
        sock = mux.socket()
        await sock.send(frame(b"stuck"))
        await sock.send(frame(b"behind it"))
    assert 3 <= trio.current_time() - start < 4
    stats = mux.statistics()
    assert stats.tx_dropped == 2
    assert stats.tx_msgs == 0
    # The write that was cut short is reported, its messages in doubt.
    errors = [err async for err in mux.errors()]
    assert [e.errno for e in errors] == [errno.EPIPE]
    assert errors[0].in_doubt[0] == frame(b"stuck")
    assert set(errors[0].in_doubt) <= {frame(b"stuck"), frame(b"behind it")}


async def test_closing_counts_undelivered_messages() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        sock.disable_receive()
        await peer.send_all(frame(b"a") + frame(b"b"))
        await trio.testing.wait_all_tasks_blocked()
    assert mux.statistics().rx_ready_drops == 2


async def test_body_exception_propagates_unwrapped_and_nothing_is_flushed() -> None:
    ours, peer = trio.testing.memory_stream_pair()
    with pytest.raises(KeyError, match="mine"):
        async with trio_kcm.open_mux(parser=P) as mux:
            mux.attach(ours)
            raise KeyError("mine")
    assert await peer.receive_some(10) == b""  # closed


async def test_statistics_and_format() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        sock = mux.socket()
        await sock.send(frame(b"out"))
        await peer.send_all(frame(b"in") + frame(b"in2"))
        assert await sock.receive() == frame(b"in")
        await trio.testing.wait_all_tasks_blocked()
        s = handle.statistics()
        assert (s.rx_msgs, s.rx_bytes, s.tx_msgs, s.tx_bytes, s.state) == (2, 13, 1, 7, "active")
        k = sock.statistics()
        assert (k.rx_msgs, k.rx_queued_msgs, k.rx_queued_bytes, k.tx_msgs) == (1, 1, 7, 1)
        m = mux.statistics()
        assert (m.rx_msgs, m.rx_bytes, m.tx_msgs, m.tx_bytes) == (2, 13, 1, 7)
        assert (m.streams, m.sockets, m.psock_attach) == (1, 1, 1)
        text = trio_kcm.format_stats(mux)
        lines = text.splitlines()
        assert lines[0] == "*** KCM statistics (1 MUX) ****"
        assert lines[1].split()[:5] == ["Object", "RX-Msgs", "RX-Bytes", "TX-Msgs", "TX-Bytes"]
        assert lines[2].split()[:5] == ["mux", "2", "13", "1", "7"]
        assert lines[3].split()[:9] == ["kcm-0", "1", "6", "1", "7", "1", "7", "0", "0"]
        assert lines[4].split()[:5] == ["psock-0", "2", "13", "1", "7"]
        assert handle.tcp_info() is None  # not a TCP stream
        with pytest.raises(AttributeError):
            s.rx_msgs = 3  # type: ignore[misc]


async def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        async with trio_kcm.open_mux(parser=P, max_message_size=0):
            pass
    with pytest.raises(ValueError):
        async with trio_kcm.open_mux(parser=P, assembly_timeout=0):
            pass
    with pytest.raises(ValueError):
        async with trio_kcm.open_mux(parser=P, socket_type="stream"):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError):
        async with trio_kcm.open_mux(parser=42):  # type: ignore[arg-type]
            pass
    with pytest.raises(trio_kcm.PolicyLoadError, match="no-such-policy"):
        async with trio_kcm.open_mux(parser=P, policy="no-such-policy"):
            pass


async def test_reservation_counters_follow_bursts() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.lockstep_stream_pair()
        handle = mux.attach(ours)
        sock = mux.socket()
        reader = PeerReader(peer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.read_frames, 3)
            await sock.send(frame(b"1"))  # a burst starts: reserved
            await sock.send(frame(b"2"))
            await sock.send(frame(b"3"))
        await trio.testing.wait_all_tasks_blocked()
        s = handle.statistics()
        assert s.tx_msgs == 3
        assert s.reserved >= 1
        assert s.reserved == s.unreserved  # every burst ended
        other = sock.clone()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.read_frames, 1)
            await other.send(frame(b"4"))
        await trio.testing.wait_all_tasks_blocked()
        t = handle.statistics()
        assert t.reserved == t.unreserved == s.reserved + 1


async def test_socket_buffer_sizes_and_clone() -> None:
    async with trio_kcm.open_mux(parser=P, receive_buffer_size=1000, send_buffer_size=2000) as mux:
        plain = mux.socket()
        assert (plain.receive_buffer_size, plain.send_buffer_size) == (1000, 2000)
        custom = mux.socket(receive_buffer_size=10, send_buffer_size=20)
        twin = custom.clone()
        assert (twin.receive_buffer_size, twin.send_buffer_size) == (10, 20)
        assert twin.mux is mux and twin is not custom
        assert sorted(s.index for s in mux.sockets) == [0, 1, 2]
        await custom.aclose()
        assert mux.socket().index == 1  # the lowest free number, as in the kernel
        with pytest.raises(ValueError):
            mux.socket(receive_buffer_size=0)


async def test_many_streams_one_socket_exactly_once() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        sock = mux.socket()
        peers = []
        for _ in range(8):
            ours, peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            peers.append(peer)
        sent = []
        async with trio.open_nursery() as nursery:
            for n, peer in enumerate(peers):
                messages = [frame(b"%d-%d" % (n, i)) for i in range(200)]
                sent.extend(messages)
                nursery.start_soon(peer.send_all, b"".join(messages))
        got: list[bytes] = []
        while len(got) < len(sent):
            got.extend(await sock.receive_many(1000))
        assert sorted(got) == sorted(sent)
        for n in range(8):  # one stream's messages keep their order on one socket
            mine = [m for m in got if m[4:].startswith(b"%d-" % n)]
            assert mine == [frame(b"%d-%d" % (n, i)) for i in range(200)]


class _Stuck(trio.abc.Stream):
    """A stream nobody writes to; closing it may raise, and a cancelled read
    may take a while to give up (until ``release`` is set)."""

    def __init__(self, *, aclose_raises: bool = False, slow_cancel: bool = False) -> None:
        self.aclose_raises = aclose_raises
        self.slow_cancel = slow_cancel
        self.release = trio.Event()
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            await trio.sleep_forever()
        finally:
            if self.slow_cancel:
                with trio.CancelScope(shield=True):
                    await self.release.wait()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep_forever()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()  # pragma: no cover

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()
        if self.aclose_raises:
            raise trio.BrokenResourceError("close failed")


async def test_a_stream_that_fails_to_close_does_not_stop_the_others() -> None:
    bad = _Stuck(aclose_raises=True)
    good = _Stuck()
    async with trio_kcm.open_mux(parser=P) as mux:
        mux.attach(bad)
        mux.attach(good)
    assert bad.closed and good.closed
    assert mux.statistics().streams == 0


async def test_unattach_after_the_mux_closed_is_refused() -> None:
    stream = _Stuck()
    async with trio_kcm.open_mux(parser=P) as mux:
        handle = mux.attach(stream)
    assert stream.closed
    with pytest.raises(trio.ClosedResourceError):
        await mux.unattach(handle)


async def test_unattach_cancelled_with_no_write_in_flight_completes() -> None:
    stream = _Stuck(slow_cancel=True)
    got: list[trio.abc.Stream] = []
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        handle = mux.attach(stream)
        scope = trio.CancelScope()

        async def unattach() -> None:
            with scope:
                got.append(await mux.unattach(handle))

        nursery.start_soon(unattach)
        await trio.testing.wait_all_tasks_blocked()  # it waits for the reader to stop
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        stream.release.set()
        await trio.testing.wait_all_tasks_blocked()
        # Nothing was being written: the cancel cannot leave it half done.
        assert got == [stream]
        assert handle.state == "unattached"
        assert mux.statistics().stream_errors == 0
    assert not stream.closed  # handed back: the application's now


class _Gate(trio.abc.Stream):
    """``send_all`` waits for ``release``; nothing ever arrives."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.release.wait()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


async def _unattach_cancelled_as_the_write_ends(yields: int) -> str:
    gate = _Gate()
    got: list[trio.abc.Stream] = []
    async with trio_kcm.open_mux(parser=P) as mux:
        handle = mux.attach(gate)
        sock = mux.socket()
        await sock.send(frame(b"x"))
        await trio.testing.wait_all_tasks_blocked()  # the write is under way
        scope = trio.CancelScope()

        async def unattach() -> None:
            with scope:
                got.append(await mux.unattach(handle))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(unattach)
            await trio.testing.wait_all_tasks_blocked()  # it waits for the write
            gate.release.set()
            for _ in range(yields):
                await trio.lowlevel.cancel_shielded_checkpoint()
            scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert handle not in mux.streams
        if handle.state == "unattached":
            assert got == [gate] and not gate.closed
            assert mux.statistics().stream_errors == 0
            return "unattached"
        assert handle.state == "failed" and not got and gate.closed
        error = await mux.errors().__anext__()
        assert error.errno == errno.EPIPE
        assert error.in_doubt == (frame(b"x"),)
        return "failed"


@pytest.mark.parametrize("yields", [0, 1, 2])
async def test_unattach_cancelled_as_its_write_completes(yields: int) -> None:
    # The write and the cancel land together, in either order.  Either the
    # unattach completes (the write ended: nothing in doubt, the stream handed
    # back open), or the stream fails with the write in doubt and the mux
    # closes it.  Never a failed stream left open and attached (the race once
    # left it so, with its peer waiting for ever).
    outcomes = {await _unattach_cancelled_as_the_write_ends(yields) for _ in range(30)}
    if yields:
        assert outcomes == {"unattached"}  # the write had ended before the cancel


async def test_unattach_cancelled_before_it_starts_does_nothing() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        handle = mux.attach(_Stuck())
        with trio.CancelScope() as scope:
            scope.cancel()
            await mux.unattach(handle)
        assert handle.state == "active"
        assert handle in mux.streams


async def test_a_stream_whose_task_died_is_closed_when_the_mux_exits() -> None:
    class Broken(trio_kcm.Policy):
        def pick_socket(
            self, stream: trio_kcm.AttachedStream | None, message: bytes
        ) -> trio_kcm.KCMSocket | None:
            raise KeyError("policy bug")

    ours, peer = trio.testing.memory_stream_pair()
    with pytest.RaisesGroup(pytest.RaisesExc(KeyError, match="policy bug"), flatten_subgroups=True):
        async with trio_kcm.open_mux(parser=P, rx_policy=Broken(), tx_policy="round-robin") as mux:
            mux.attach(ours)
            mux.socket()
            await peer.send_all(frame(b"boom"))
            await trio.sleep_forever()
    assert await peer.receive_some(10) == b""  # the mux closed it
    assert mux.statistics().streams == 0


@pytest.mark.parametrize("auto_close", [True, False])
async def test_waiting_errors_are_bounded(
    monkeypatch: pytest.MonkeyPatch, auto_close: bool
) -> None:
    import trio_kcm._lifecycle

    monkeypatch.setattr(trio_kcm._lifecycle, "ERROR_BACKLOG", 4)
    handles = []
    async with trio_kcm.open_mux(parser=P, auto_close=auto_close) as mux:
        for _ in range(10):
            ours, peer = trio.testing.memory_stream_pair()
            handles.append(mux.attach(ours))
            await peer.send_stream.aclose()  # EOF: it fails
            await trio.testing.wait_all_tasks_blocked()
        stats = mux.statistics()
    errors = [err async for err in mux.errors()]
    if auto_close:
        # Streams that are gone: only the newest errors wait, the rest are counted.
        assert stats.errors_dropped == 6
        assert [e.stream for e in errors] == handles[6:]
    else:
        # Still attached (failed): their errors are never dropped.
        assert stats.errors_dropped == 0
        assert [e.stream for e in errors] == handles
    assert stats.stream_errors == 10


async def test_the_statistics_format_stats_reads_and_its_flags() -> None:
    # The fields format_stats takes its status flags from, in states that set
    # each of them, and the flags they give.
    async with trio_kcm.open_mux(parser=P, receive_buffer_size=10, close_timeout=0) as mux:
        sock = mux.socket()
        await sock.send(frame(b"waits"))  # no stream yet: it waits for one
        k = sock.statistics()
        assert (k.tx_waiting, k.receive_ready, k.tx_batched_msgs) == (True, True, 0)
        assert "TxWait" in trio_kcm.format_stats(mux).splitlines()[3].split()
        ours, _peer = trio.testing.lockstep_stream_pair()  # writes never finish
        handle = mux.attach(ours)
        await trio.testing.wait_all_tasks_blocked()
        assert not sock.statistics().tx_waiting
        assert handle.statistics().reserved_by == (sock.index,)
        async with sock.batch():
            await sock.send(frame(b"held"))
            assert sock.statistics().tx_batched_msgs == 1
            assert "WMore" in trio_kcm.format_stats(mux).splitlines()[3].split()
        assert sock.statistics().tx_batched_msgs == 0
        rx_ours, rx_peer = trio.testing.memory_stream_pair()
        reader = mux.attach(rx_ours)
        await rx_peer.send_all(frame(b"filled!") + frame(b"waits"))  # 11 B fill it
        await trio.testing.wait_all_tasks_blocked()
        r = reader.statistics()
        assert (r.reading_paused, r.rx_ready_msgs, r.stalled) == (True, 1, False)
        assert not sock.statistics().receive_ready
        lines = trio_kcm.format_stats(mux).splitlines()
        assert "RxWait" not in lines[3].split()
        assert f"Rsvd-{sock.index}" in lines[4].split()
        assert {"RxPause", "RdyRx"} <= set(lines[5].split())
        assert await sock.receive() == frame(b"filled!")
        await trio.testing.wait_all_tasks_blocked()
        r = reader.statistics()
        assert (r.reading_paused, r.rx_ready_msgs) == (False, 0)
        assert sock.statistics().receive_ready
        assert "RxWait" in trio_kcm.format_stats(mux).splitlines()[3].split()
