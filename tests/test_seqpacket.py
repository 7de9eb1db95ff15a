"""SEQPACKET: a message built over several sends, and read in pieces; DGRAM stays whole."""

from __future__ import annotations

import errno
import gc

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import Gate, PeerReader, deadline, frame, unframe_all

P = trio_kcm.LengthPrefixed(">I", adjust=4)
SEQ = trio_kcm.SocketType.SEQPACKET


def seqpacket(**kwargs: object) -> trio_kcm.Mux:  # type: ignore[return]
    """open_mux for SEQPACKET (a context manager)."""
    return trio_kcm.open_mux(parser=P, socket_type=SEQ, **kwargs)  # type: ignore[arg-type,return-value]


def chunks(message: bytes, *sizes: int) -> list[bytes]:
    out, pos = [], 0
    for n in sizes:
        out.append(message[pos : pos + n])
        pos += n
    out.append(message[pos:])
    return out


# ---------------------------------------------------------------------------
# sending in parts


@deadline(20)
async def test_parts_make_one_message_sent_whole() -> None:
    async with seqpacket() as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        message = frame(b"built from several parts")
        *head, last = chunks(message, 2, 5, 10)
        for part in head:
            await sock.send(part, more=True)
        await trio.testing.wait_all_tasks_blocked()
        assert sock.statistics().tx_msgs == 0  # nothing accepted yet
        await sock.send(bytearray(last))
        assert await PeerReader(peer).read_frames(1) == [message]
        stats = sock.statistics()
        assert (stats.tx_msgs, stats.tx_bytes) == (1, len(message))
        # send_nowait takes parts too.
        sock.send_nowait(frame(b"abc")[:3], more=True)
        sock.send_nowait(frame(b"abc")[3:])
        assert await PeerReader(peer).read_frames(1) == [frame(b"abc")]


@deadline(20)
async def test_tasks_build_their_own_messages_and_whole_ones_pass_by() -> None:
    async with seqpacket(policy="round-robin") as mux:
        gate = Gate()
        mux.attach(gate.stream)
        sock = mux.socket()

        async def builder(k: int) -> None:
            for i in range(20):
                message = frame(b"task %d message %02d " % (k, i) + b"." * (i * 3))
                for part in chunks(message, 1, 3, 7)[:-1]:
                    await sock.send(part, more=True)
                await sock.send(chunks(message, 1, 3, 7)[-1])

        async def whole() -> None:
            for i in range(20):
                await sock.send(frame(b"whole %02d" % i))

        async with trio.open_nursery() as nursery:
            for k in range(3):
                nursery.start_soon(builder, k)
            nursery.start_soon(whole)
        await trio.testing.wait_all_tasks_blocked()
        frames = gate.written()
        assert len(frames) == 80
        for k in range(3):
            mine = [f for f in frames if f[4:].startswith(b"task %d " % k)]
            assert mine == [
                frame(b"task %d message %02d " % (k, i) + b"." * (i * 3)) for i in range(20)
            ]
        assert [f for f in frames if f[4:].startswith(b"whole")] == [
            frame(b"whole %02d" % i) for i in range(20)
        ]


@deadline(20)
async def test_the_whole_is_validated_and_a_refused_one_is_dropped() -> None:
    async with seqpacket(max_message_size=50) as mux:
        gate = Gate()
        mux.attach(gate.stream)
        sock = mux.socket()
        await sock.send(frame(b"abcdef")[:5], more=True)
        with pytest.raises(trio_kcm.BadMessage):
            await sock.send(b"c")  # header says 6 bytes of payload, 2 came
        # The next message starts afresh.
        await sock.send(frame(b"ok"))
        # Too big while building: dropped at once.
        await sock.send(frame(b"x" * 40)[:30], more=True)
        with pytest.raises(OSError) as info:
            await sock.send(b"y" * 30, more=True)
        assert info.value.errno == errno.EMSGSIZE
        await sock.send(frame(b"ok2"))
        # Too big at the last part.
        await sock.send(frame(b"x" * 40)[:30], more=True)
        with pytest.raises(OSError) as info:
            await sock.send(b"y" * 30)
        assert info.value.errno == errno.EMSGSIZE
        with pytest.raises(TypeError):
            await sock.send("text", more=True)  # type: ignore[arg-type]
        await sock.send(frame(b"ok3"))
        await trio.testing.wait_all_tasks_blocked()
        assert gate.written() == [frame(b"ok"), frame(b"ok2"), frame(b"ok3")]


@deadline(20)
async def test_a_cancelled_part_abandons_the_message() -> None:
    async with seqpacket() as mux:
        gate = Gate()
        mux.attach(gate.stream)
        sock = mux.socket()
        await sock.send(b"\x00\x00", more=True)
        with trio.CancelScope() as scope:
            scope.cancel()
            await sock.send(b"\x00\x03ab", more=True)
        assert scope.cancelled_caught
        await sock.send(frame(b"fresh"))  # not appended to the abandoned parts
        await trio.testing.wait_all_tasks_blocked()
        assert gate.written() == [frame(b"fresh")]


@deadline(20)
async def test_a_cancelled_last_part_is_withdrawn_whole() -> None:
    gate = Gate()
    async with seqpacket(send_buffer_size=10) as mux:
        mux.attach(gate.stream)
        sock = mux.socket()
        gate.close_gate()
        await sock.send(frame(b"fills the buffer"))
        await trio.testing.wait_all_tasks_blocked()
        message = frame(b"never sent")
        await sock.send(message[:6], more=True)
        with trio.move_on_after(1) as scope:
            await sock.send(message[6:])
        assert scope.cancelled_caught
        with pytest.raises(trio_kcm.BadMessage):
            await sock.send(message[6:])  # the first part is gone with the cancel
        gate.open.set()
    assert gate.written() == [frame(b"fills the buffer")]


@deadline(20)
async def test_closing_abandons_the_message() -> None:
    gate = Gate()
    async with seqpacket() as mux:
        mux.attach(gate.stream)
        sock = mux.socket()
        other = sock.clone()
        await sock.send(frame(b"half")[:5], more=True)
        await other.send(frame(b"other half")[:5], more=True)
        await sock.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await sock.send(frame(b"whole"))
        with pytest.raises(trio.ClosedResourceError):
            await sock.send(b"x", more=True)
    # The mux closed with other's message unfinished: nothing of it went out.
    assert gate.written() == []
    with pytest.raises(trio.ClosedResourceError):
        await other.send(frame(b"whole"))
    assert other._building is None  # dropped


@deadline(20)
async def test_abandon_message_and_a_task_that_ends() -> None:
    async with seqpacket() as mux:
        gate = Gate()
        mux.attach(gate.stream)
        sock = mux.socket()
        await sock.send(b"\x00\x00\x00", more=True)
        sock.abandon_message()
        sock.abandon_message()  # nothing left: no error
        await sock.send(frame(b"a"))

        async def leaves_a_half_message() -> None:
            await sock.send(b"\x00\x00\x00", more=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leaves_a_half_message)
        await sock.send(frame(b"b"))
        await trio.testing.wait_all_tasks_blocked()
        assert gate.written() == [frame(b"a"), frame(b"b")]
        gc.collect()
        assert sock._building is not None and len(sock._building) == 0  # forgotten with its task


async def test_dgram_keeps_messages_whole() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        for call in (
            lambda: sock.send_nowait(b"\x00", more=True),
            lambda: sock.receive_some_nowait(10),
        ):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.EOPNOTSUPP
        with pytest.raises(OSError):
            await sock.send(b"\x00", more=True)
        with pytest.raises(OSError):
            await sock.receive_some(10)
        await peer.send_all(frame(b"x" * 100))
        assert await sock.receive() == frame(b"x" * 100)


# ---------------------------------------------------------------------------
# receiving in pieces


@deadline(20)
async def test_receive_some_reads_a_message_in_pieces() -> None:
    async with seqpacket() as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        long = frame(b"0123456789")  # 14 bytes
        await peer.send_all(long + frame(b"short"))
        assert await sock.receive_some(5) == (long[:5], False)
        assert sock.statistics().rx_msgs == 1  # taken at its first piece
        assert await sock.receive_some(5) == (long[5:10], False)
        assert sock.receive_some_nowait(5) == (long[10:], True)
        assert await sock.receive_some(100) == (frame(b"short"), True)
        with pytest.raises(trio.WouldBlock):
            sock.receive_some_nowait(5)
        with pytest.raises(ValueError):
            await sock.receive_some(0)
        await peer.send_all(frame(b"exact"))
        assert await sock.receive_some(len(frame(b"exact"))) == (frame(b"exact"), True)
        # Pieces read back to back make the message.
        big = frame(bytes(range(256)) * 40)
        await peer.send_all(big)
        pieces = []
        while True:
            piece, ended = await sock.receive_some(1000)
            pieces.append(piece)
            if ended:
                break
        assert b"".join(pieces) == big
        assert [len(p) for p in pieces] == [1000] * 10 + [len(big) - 10000]


@deadline(20)
async def test_each_task_reads_its_own_message_and_receive_stays_whole() -> None:
    async with seqpacket() as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        a, b, c = frame(b"a" * 20), frame(b"b" * 20), frame(b"c" * 20)
        await peer.send_all(a + b + c)
        await trio.testing.wait_all_tasks_blocked()
        got: dict[str, list[bytes]] = {"one": [], "two": []}
        step = trio.Event()

        async def reader(name: str) -> None:
            while True:
                piece, ended = await sock.receive_some(7)
                got[name].append(piece)
                await step.wait()
                if ended:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, "one")
            nursery.start_soon(reader, "two")
            await trio.testing.wait_all_tasks_blocked()
            # Each took a message; the third is still whole for receive().
            assert await sock.receive() == c
            step.set()
        assert sorted([b"".join(got["one"]), b"".join(got["two"])]) == [a, b]


@deadline(20)
async def test_receive_some_cancelled_takes_nothing_and_close_drops_the_rest() -> None:
    async with seqpacket() as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        with trio.move_on_after(0.01) as scope:
            await sock.receive_some(10)
        assert scope.cancelled_caught
        await peer.send_all(frame(b"0123456789"))
        with trio.CancelScope() as scope:
            scope.cancel()
            await sock.receive_some(3)
        assert sock.statistics().rx_queued_msgs == 1  # nothing taken
        assert await sock.receive_some(3) == (frame(b"0123456789")[:3], False)
        with trio.CancelScope() as scope:
            scope.cancel()
            await sock.receive_some(3)
        assert await sock.receive_some(3) == (frame(b"0123456789")[3:6], False)
        sock.abandon_message()
        await peer.send_all(frame(b"next"))
        assert await sock.receive_some(100) == (frame(b"next"), True)
        await peer.send_all(frame(b"dropped at close"))
        assert await sock.receive_some(4) == (frame(b"dropped at close")[:4], False)
        await sock.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await sock.receive_some(4)
        with pytest.raises(trio.ClosedResourceError):
            sock.receive_some_nowait(4)


@deadline(20)
async def test_parts_over_tcp_end_to_end() -> None:
    # Two SEQPACKET muxes back to back over a socketpair: a message built in
    # parts on one side is read in pieces on the other.
    a, b = trio.socket.socketpair()
    async with seqpacket() as left, seqpacket() as right:
        left.attach(trio.SocketStream(a))
        right.attach(trio.SocketStream(b))
        tx, rx = left.socket(), right.socket()
        message = frame(b"z" * 100_000)
        *head, last = chunks(message, 1, 10_000, 50_000)
        for part in head:
            await tx.send(part, more=True)
        await tx.send(last)
        pieces = []
        ended = False
        while not ended:
            piece, ended = await rx.receive_some(30_000)
            pieces.append(piece)
        assert b"".join(pieces) == message
        assert unframe_all(b"".join(pieces)) == ([message], b"")
