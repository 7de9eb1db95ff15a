"""Transmit: atomic, ordered, validated, with backpressure and cancellation."""

from __future__ import annotations

import errno
import random

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_kcm

from .conftest import PeerReader, frame, unframe_all

P = trio_kcm.LengthPrefixed(">I", adjust=4)


async def test_send_reaches_peer_whole() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        await sock.send(frame(b"hello"))
        await sock.send(bytearray(frame(b"world")))  # any bytes-like
        assert await PeerReader(peer).read_frames(2) == [frame(b"hello"), frame(b"world")]
        stats = sock.statistics()
        assert (stats.tx_msgs, stats.tx_bytes) == (2, 18)


async def test_outgoing_validation() -> None:
    async with trio_kcm.open_mux(parser=P, max_message_size=100) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        with pytest.raises(trio_kcm.BadMessage, match="incomplete"):
            await sock.send(frame(b"abc")[:-1])  # header announces more than is there
        with pytest.raises(trio_kcm.BadMessage):
            await sock.send(b"\x00\x00")  # not even a header
        with pytest.raises(trio_kcm.BadMessage):
            sock.send_nowait(frame(b"a") + b"\x00")  # trailing junk after a message
        with pytest.raises(OSError) as info:
            await sock.send(frame(b"x" * 200))
        assert info.value.errno == errno.EMSGSIZE
        with pytest.raises(ValueError, match="empty"):
            await sock.send(b"")
        with pytest.raises(TypeError):
            await sock.send("text")  # type: ignore[arg-type]
        # A "super message" of complete messages is fine, and is split by the peer.
        await sock.send(frame(b"a") + frame(b"bb"))
        await sock.send(frame(b"end"))
        await trio.testing.wait_all_tasks_blocked()
        data = await peer.receive_some(1000)
        assert unframe_all(data) == ([frame(b"a"), frame(b"bb"), frame(b"end")], b"")


async def test_validation_can_be_turned_off() -> None:
    async with trio_kcm.open_mux(parser=P, validate=False) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        await mux.socket().send(b"raw bytes")
        assert await peer.receive_some(100) == b"raw bytes"


async def test_parser_that_raises_on_send_gives_badmessage() -> None:
    def parser(view: memoryview) -> int:
        raise KeyError("boom")

    async with trio_kcm.open_mux(parser=parser) as mux:
        with pytest.raises(trio_kcm.BadMessage) as info:
            await mux.socket().send(b"x")
        assert isinstance(info.value.__cause__, KeyError)


async def test_no_stream_messages_wait_in_the_buffer() -> None:
    async with trio_kcm.open_mux(parser=P, send_buffer_size=100) as mux:
        sock = mux.socket()
        for i in range(5):  # 5 x 14 bytes < 100: all accepted with no stream
            await sock.send(frame(b"message %d" % i))
        assert sock.statistics().tx_queued_msgs == 5
        with pytest.raises(trio.WouldBlock):
            for i in range(10):
                sock.send_nowait(frame(b"more %d" % i))
        queued = sock.statistics().tx_queued_bytes
        assert 100 <= queued < 100 + 20  # one message may overshoot, as in the kernel
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        frames = await PeerReader(peer).read_frames(sock.statistics().tx_msgs)
        assert frames[:5] == [frame(b"message %d" % i) for i in range(5)]
        await trio.testing.wait_all_tasks_blocked()
        assert sock.statistics().tx_queued_bytes == 0


async def test_message_bigger_than_buffer_goes_through_an_empty_buffer() -> None:
    async with trio_kcm.open_mux(parser=P, send_buffer_size=10) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        big = frame(b"x" * 1000)
        await mux.socket().send(big)
        assert await PeerReader(peer).read_frames(1) == [big]


async def test_sender_waits_while_buffer_is_full_and_cancel_withdraws(
    autojump_clock: object,
) -> None:
    # A lockstep stream: every send_all blocks until the peer reads.
    async with trio_kcm.open_mux(parser=P, send_buffer_size=50) as mux:
        ours, peer = trio.testing.lockstep_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        first = frame(b"a" * 60)
        await sock.send(first)  # accepted (buffer was empty), writer now blocks
        await trio.testing.wait_all_tasks_blocked()
        withdrawn = frame(b"withdrawn")
        with trio.move_on_after(1) as cs:
            await sock.send(withdrawn)
        assert cs.cancelled_caught  # it waited for space, and was cancelled
        later = frame(b"later")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sock.send, later)
            await trio.testing.wait_all_tasks_blocked()
            assert sock.statistics().tx_msgs == 1  # `later` is not accepted yet
            frames = await PeerReader(peer).read_frames(2)
        assert frames == [first, later]
        assert sock.statistics().tx_msgs == 2


async def test_waiting_senders_are_served_in_order() -> None:
    async with trio_kcm.open_mux(parser=P, send_buffer_size=10) as mux:
        sock = mux.socket()
        await sock.send(frame(b"0" * 20))  # fills the buffer; no stream yet
        async with trio.open_nursery() as nursery:
            for i in range(1, 6):
                nursery.start_soon(sock.send, frame(b"%d" % i * 20))
                await trio.testing.wait_all_tasks_blocked()
            ours, peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            frames = await PeerReader(peer).read_frames(6)
        assert frames == [frame(b"%d" % i * 20) for i in range(6)]


async def test_many_concurrent_senders_never_interleave() -> None:
    rng = random.Random(7)
    async with trio_kcm.open_mux(parser=P, send_buffer_size=4096) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sockets = [mux.socket() for _ in range(4)]
        sent: dict[int, list[bytes]] = {}

        async def sender(task_id: int) -> None:
            sock = sockets[task_id % len(sockets)]
            mine = sent.setdefault(task_id, [])
            for seq in range(50):
                payload = b"%d:%d:" % (task_id, seq) + bytes([task_id]) * rng.randrange(1, 300)
                mine.append(frame(payload))
                await sock.send(frame(payload))
                if rng.random() < 0.3:
                    await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for t in range(32):
                nursery.start_soon(sender, t)
        frames = await PeerReader(peer).read_frames(32 * 50)
    assert sorted(frames) == sorted(f for msgs in sent.values() for f in msgs)
    # Each task's messages (one socket, one stream) arrive in the order sent.
    for task_id, msgs in sent.items():
        prefix = b"%d:" % task_id
        assert [f for f in frames if f[4:].startswith(prefix)] == msgs


async def test_send_many_is_one_group_in_one_write() -> None:
    writes: list[bytes] = []
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, _peer = trio.testing.memory_stream_pair()

        async def hook() -> None:
            writes.append(ours.send_stream.get_data_nowait())

        ours.send_stream.send_all_hook = hook
        mux.attach(ours)
        sock = mux.socket()
        batch = [frame(b"m%d" % i) for i in range(20)]
        await sock.send_many(batch)
        await sock.send_many([])  # nothing, not an error
        await trio.testing.wait_all_tasks_blocked()
        assert writes == [b"".join(batch)]
        with pytest.raises(TypeError):
            await sock.send_many(frame(b"one"))  # type: ignore[arg-type]
        with pytest.raises(trio_kcm.BadMessage):  # all checked before any is accepted
            await sock.send_many([frame(b"ok"), b"\x00"])
        assert sock.statistics().tx_msgs == 20


async def test_batch_holds_until_exit() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        async with sock.batch():
            for i in range(5):
                await sock.send(frame(b"b%d" % i))
            await trio.testing.wait_all_tasks_blocked()
            assert mux.streams[0].statistics().tx_msgs == 0  # nothing written yet
            assert sock.statistics().tx_queued_msgs == 5
            other = sock.clone()
            await other.send(frame(b"not in the batch"))  # another socket is unaffected
            await trio.testing.wait_all_tasks_blocked()
            assert await peer.receive_some(1000) == frame(b"not in the batch")
        await trio.testing.wait_all_tasks_blocked()
        assert await peer.receive_some(1000) == b"".join(frame(b"b%d" % i) for i in range(5))
        with pytest.raises(RuntimeError):
            async with sock.batch(), sock.batch():
                pass


async def test_sends_in_a_batch_are_cancel_points_not_schedule_points() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.lowlevel.cancel_shielded_checkpoint()
            await trio.lowlevel.cancel_shielded_checkpoint()
            async with sock.batch():
                before = ticks
                assert before  # the ticker runs whenever this task yields
                for i in range(50):
                    await sock.send(frame(b"b%d" % i))
                await sock.send_many([frame(b"m1"), frame(b"m2")])
                assert ticks == before  # no other task ran
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await sock.send(frame(b"never"))  # still a cancel point
                assert scope.cancelled_caught
            assert ticks > before  # the end of the batch is a checkpoint
            nursery.cancel_scope.cancel()
        expected = [frame(b"b%d" % i) for i in range(50)] + [frame(b"m1"), frame(b"m2")]
        assert await PeerReader(peer).read_frames(52) == expected
        assert sock.statistics().tx_msgs == 52  # the cancelled one was not accepted


async def test_batch_flushes_when_buffer_fills_and_on_exception() -> None:
    async with trio_kcm.open_mux(parser=P, send_buffer_size=30) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        with pytest.raises(ZeroDivisionError):
            async with sock.batch():
                for i in range(10):  # 10 x 7 bytes > 30: the batch must flush to go on
                    await sock.send(frame(b"x%02d" % i))
                1 / 0  # noqa: B018
        frames = await PeerReader(peer).read_frames(10)
        assert frames == [frame(b"x%02d" % i) for i in range(10)]


async def test_no_partial_frame_when_senders_are_cancelled(autojump_clock: object) -> None:
    rng = random.Random(3)
    async with trio_kcm.open_mux(parser=P, send_buffer_size=64) as mux:
        ours, peer = trio.testing.lockstep_stream_pair()  # every write waits for the peer
        mux.attach(ours)
        sock = mux.socket()
        accepted: list[bytes] = []
        reader = PeerReader(peer)
        got: list[bytes] = []

        async def sender(i: int) -> None:
            msg = frame(b"%d," % i * rng.randrange(1, 40))
            with trio.move_on_after(rng.random()):
                await sock.send(msg)
                accepted.append(msg)

        async def slow_peer() -> None:
            while True:
                got.extend(await reader.read_frames(1))
                await trio.sleep(rng.random() * 0.05)

        async with trio.open_nursery() as outer:
            outer.start_soon(slow_peer)
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(sender, i)
            outer.cancel_scope.cancel()
        assert 0 < len(accepted) < 200  # some senders were cancelled while waiting
        got.extend(await reader.read_frames(len(accepted) - len(got)))
        assert sorted(got) == sorted(accepted)  # withdrawn messages never sent
        assert reader.buffer == b""
        with trio.move_on_after(1) as cs:
            await peer.receive_some(100)
        assert cs.cancelled_caught  # and nothing else follows


async def test_validation_recovers_after_a_refused_message() -> None:
    # Outgoing checks share one assembler: a refusal must leave no state behind.
    async with trio_kcm.open_mux(parser=trio_kcm.Delimited(b"\n")) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        with pytest.raises(trio_kcm.BadMessage, match="incomplete"):
            await sock.send(b"no newline")
        with pytest.raises(trio_kcm.BadMessage, match="incomplete"):
            await sock.send(b"one\ntwo")
        await sock.send(b"fine\n")
        await sock.send(b"a\nb\n")
        await trio.testing.wait_all_tasks_blocked()
        assert await peer.receive_some(100) == b"fine\na\nb\n"


async def test_messages_are_bytes_like_objects_only() -> None:
    async with trio_kcm.open_mux(parser=P, max_message_size=64) as mux:
        sock = mux.socket()
        with pytest.raises(TypeError):
            sock.send_nowait(12)  # type: ignore[arg-type]  # bytes(12) would be 12 zeros
        with pytest.raises(TypeError):
            sock.send_nowait("text")  # type: ignore[arg-type]
        with pytest.raises(OSError) as info:
            sock.send_nowait(memoryview(bytearray(frame(b"x" * 100))))
        assert info.value.errno == errno.EMSGSIZE
        sock.send_nowait(memoryview(frame(b"ok")))
        sock.send_nowait(bytearray(frame(b"ok")))
        assert sock.statistics().tx_queued_msgs == 2


async def test_a_closed_socket_refuses_even_nothing() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        sock = mux.socket()
        await sock.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await sock.send_many([])
        with pytest.raises(trio.ClosedResourceError):
            sock.send_many_nowait([])
        with pytest.raises(trio.ClosedResourceError):
            sock.clone()


async def test_each_waiting_task_gets_its_own_closed_error() -> None:
    errors: list[BaseException] = []
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        sock = mux.socket()

        async def receive() -> None:
            try:
                await sock.receive()
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        for _ in range(2):
            nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        await sock.aclose()
    assert len(errors) == 2
    assert errors[0] is not errors[1]


class _FailLater(trio.abc.Stream):
    """Its first write blocks until ``cut`` is set, then fails."""

    def __init__(self) -> None:
        self.cut = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.cut.wait()
        raise trio.BrokenResourceError("wire cut")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()  # pragma: no cover

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_without_retry_in_doubt_a_socket_keeps_its_order() -> None:
    # m1 is being written on A, m2 waits behind it on A, m3's sender waits for
    # buffer space.  A fails: m1 is given up (in doubt), which frees space for
    # m3 -- yet m2 was accepted first, so it must go out before m3.
    m1, m2, m3 = frame(b"one"), frame(b"two"), frame(b"six")
    failing = _FailLater()
    async with (
        trio_kcm.open_mux(parser=P, retry_in_doubt=False) as mux,
        trio.open_nursery() as nursery,
    ):
        sock = mux.socket(send_buffer_size=2 * len(m1))
        mux.attach(failing)
        sock.send_nowait(m1)
        await trio.testing.wait_all_tasks_blocked()  # m1's write has started
        sock.send_nowait(m2)
        nursery.start_soon(sock.send, m3)
        await trio.testing.wait_all_tasks_blocked()
        assert sock.statistics().tx_queued_msgs == 2  # m3 waits for space
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        failing.cut.set()
        err = await anext(mux.errors())
        assert err.in_doubt == (m1,)
        assert await PeerReader(peer).read_frames(2) == [m2, m3]
