"""Stale messages: Mux.socket(time_to_live=..., expire_at_deadline=...) withdraws them unwritten."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import HeldStream, PeerReader, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


class Recording(trio_kcm.Policy):
    """Round robin over one stream, recording the transmit events."""

    def __init__(self) -> None:
        self.stream: trio_kcm.AttachedStream | None = None
        self.sock: trio_kcm.KCMSocket | None = None
        self.log: list[tuple[str, int]] = []

    def socket_added(self, sock: trio_kcm.KCMSocket, /) -> None:
        self.sock = sock

    def pick_socket(
        self, stream: trio_kcm.AttachedStream | None, message: bytes, /
    ) -> trio_kcm.KCMSocket | None:
        return self.sock

    def stream_added(self, stream: trio_kcm.AttachedStream, /) -> None:
        self.stream = stream

    def pick_stream(
        self, sock: trio_kcm.KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> trio_kcm.AttachedStream | None:
        self.log.append(("pick", nbytes))
        return self.stream

    def written(
        self, stream: trio_kcm.AttachedStream, sock: trio_kcm.KCMSocket, nbytes: int, s: float, /
    ) -> None:
        self.log.append(("written", nbytes))

    def withdrawn(
        self, stream: trio_kcm.AttachedStream, sock: trio_kcm.KCMSocket, nbytes: int, /
    ) -> None:
        self.log.append(("withdrawn", nbytes))

    def released(self, stream: trio_kcm.AttachedStream, sock: trio_kcm.KCMSocket, /) -> None:
        self.log.append(("released", 0))


async def test_messages_waiting_for_a_stream_are_withdrawn_after_their_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        sock = mux.socket(time_to_live=1.0)
        for i in range(3):
            await sock.send(frame(b"stale %d" % i))
        await trio.sleep(0.5)
        await sock.send(frame(b"fresh"))
        await trio.sleep(0.7)  # the first three are 1.2 s old, "fresh" 0.7 s
        stats = sock.statistics()
        assert (stats.tx_expired, stats.tx_queued_msgs) == (3, 1)
        assert mux.statistics().tx_expired == 3
        ours, theirs = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        assert await PeerReader(theirs).read_frames(1) == [frame(b"fresh")]
        await trio.testing.wait_all_tasks_blocked()
        assert handle.statistics().tx_msgs == 1
        assert sock.statistics().tx_queued_msgs == 0


async def test_a_message_written_in_time_is_not_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, theirs = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket(time_to_live=1.0)
        await sock.send(frame(b"m"))
        assert await PeerReader(theirs).read_frames(1) == [frame(b"m")]
        await trio.sleep(5)
        assert sock.statistics().tx_expired == 0


async def test_withdrawing_frees_the_send_buffer_for_a_waiting_sender(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        sock = mux.socket(send_buffer_size=10, time_to_live=1.0)
        await sock.send(frame(b"0123456789"))  # the buffer is full
        accepted_at: list[float] = []

        async def sender() -> None:
            await sock.send(frame(b"next"))
            accepted_at.append(trio.current_time())

        start = trio.current_time()
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert accepted_at == []
        await trio.sleep(1.5)
        # Room came when the first went stale, 1 s after it was accepted
        # ("next" goes stale in its turn at 2 s).
        assert accepted_at == [pytest.approx(start + 1.0)]
        assert sock.statistics().tx_expired == 1


async def test_queued_on_a_stream_withdrawn_the_write_in_flight_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = Recording()
    async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
        held = HeldStream()
        handle = mux.attach(held)
        sock = mux.socket(time_to_live=1.0)
        await sock.send(frame(b"first"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(held.started) == 1  # its write is in flight
        await sock.send(frame(b"second"))
        await sock.send(frame(b"third"))
        await trio.sleep(2)
        # The two queued behind the write went stale; the write is whole.
        assert sock.statistics().tx_expired == 2
        assert handle.tx_queued_bytes == len(frame(b"first"))
        held.release()
        await trio.testing.wait_all_tasks_blocked()
        assert held.writes == [frame(b"first")]
        assert sock.statistics().tx_queued_msgs == 0
        sizes = [len(frame(m)) for m in (b"first", b"second", b"third")]
        assert policy.log == [
            ("pick", sizes[0]),
            ("pick", sizes[1]),
            ("pick", sizes[2]),
            ("withdrawn", sizes[1]),
            ("withdrawn", sizes[2]),
            ("written", sizes[0]),
            ("released", 0),  # the burst ends when the last of it is gone
        ]
        stats = handle.statistics()
        assert (stats.reserved, stats.unreserved, stats.tx_msgs) == (1, 1, 1)


async def test_send_to_messages_go_stale_too(autojump_clock: trio.testing.MockClock) -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        held = HeldStream()
        handle = mux.attach(held)
        sock = mux.socket(time_to_live=1.0)
        await sock.send_to(frame(b"first"), handle)
        await trio.testing.wait_all_tasks_blocked()
        await sock.send_to(frame(b"second"), handle)
        await trio.sleep(2)
        assert sock.statistics().tx_expired == 1
        held.release()
        await trio.testing.wait_all_tasks_blocked()
        assert held.writes == [frame(b"first")]


async def test_expire_at_deadline_uses_the_senders_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        sock = mux.socket(expire_at_deadline=True)
        with trio.move_on_after(1):
            await sock.send(frame(b"within a deadline"))
        await sock.send(frame(b"no deadline"))
        await trio.sleep(0.9)
        assert sock.statistics().tx_expired == 0
        await trio.sleep(0.2)
        assert sock.statistics().tx_expired == 1
        ours, theirs = trio.testing.memory_stream_pair()
        mux.attach(ours)
        assert await PeerReader(theirs).read_frames(1) == [frame(b"no deadline")]


async def test_a_waiting_sender_keeps_its_own_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Accepted later, by the expiry task's progress, the message still goes
    # stale at the deadline of the task that sent it.
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        sock = mux.socket(send_buffer_size=10, expire_at_deadline=True)
        start = trio.current_time()
        with trio.move_on_after(1):
            await sock.send(frame(b"0123456789"))  # the buffer is full
        accepted_at: list[float] = []

        async def sender() -> None:
            with trio.move_on_after(5):
                await sock.send(frame(b"waits"))
                accepted_at.append(trio.current_time())

        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(2)
        assert accepted_at == [pytest.approx(start + 1)]  # room: the first went stale
        assert sock.statistics().tx_expired == 1
        await trio.sleep(2)  # start + 4
        assert sock.statistics().tx_queued_msgs == 1
        await trio.sleep(2)  # start + 6: past the sender's deadline
        stats = sock.statistics()
        assert (stats.tx_expired, stats.tx_queued_msgs) == (2, 0)


async def test_a_batch_goes_stale_from_when_it_ends(autojump_clock: trio.testing.MockClock) -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        sock = mux.socket(time_to_live=1.0)
        async with sock.batch():
            await sock.send(frame(b"a"))
            await trio.sleep(5)  # held by the batch: not stale yet
            await sock.send(frame(b"b"))
        await trio.sleep(0.5)
        assert sock.statistics().tx_expired == 0
        await trio.sleep(1)
        assert sock.statistics().tx_expired == 2


async def test_flush_returns_once_stale_messages_are_withdrawn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        sock = mux.socket(time_to_live=3.0)
        await sock.send(frame(b"nobody attaches a stream"))
        start = trio.current_time()
        await sock.flush()
        assert trio.current_time() - start == pytest.approx(3.0)
        assert sock.statistics().tx_expired == 1


async def test_options_are_checked_and_cloned() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        with pytest.raises(ValueError, match="time_to_live"):
            mux.socket(time_to_live=0)
        sock = mux.socket(time_to_live=2.5, expire_at_deadline=True)
        clone = sock.clone()
        assert (clone.time_to_live, clone.expire_at_deadline) == (2.5, True)
        plain = mux.socket()
        assert (plain.time_to_live, plain.expire_at_deadline) == (None, False)
