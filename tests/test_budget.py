"""open_mux(receive_memory_limit=...): a mux-wide bound on received data, under hostile load.

Hostile peers announce large messages and never finish them, many at once,
fast or slowloris-paced; well-behaved peers send small messages beside them.
Memory is measured with tracemalloc (everything the process allocates, the
peers' own buffers included) against the limit plus a stated constant per
stream.  Peers are lockstep streams: a write waits until the mux reads it, as
TCP's window makes a peer wait, so what a held peer has not sent is not in
this process's memory.
"""

from __future__ import annotations

import errno
import struct
import tracemalloc
from collections import Counter

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import PeerReader, deadline, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)

#: What each stream may add beyond the limit: a read once the reads'
#: quarter is spent and a partial message below the hold threshold (2 x 4
#: KiB), the assembler's and the peer's buffers.
PER_STREAM = 12 * 1024


def bound(limit: int, streams: int) -> int:
    """The documented bound: the limit, and a few KiB per stream."""
    return limit + streams * PER_STREAM


async def hostile(stream: trio.abc.Stream, announced: int, chunk: int = 1024) -> None:
    """Announce ``announced`` bytes, send all but the last byte, and stay."""
    try:
        await stream.send_all(struct.pack(">I", announced - 4))
        for _ in range((announced - 5) // chunk):
            await stream.send_all(b"x" * chunk)
    except trio.BrokenResourceError:
        pass  # the mux failed this stream (ENOBUFS)
    await trio.sleep_forever()


async def healthy(stream: trio.abc.Stream, index: int, count: int) -> None:
    for k in range(count):
        await stream.send_all(frame(b"%d:%d:" % (index, k) + b"." * 90))


async def run_attack(
    limit: int | None, n_hostile: int, n_healthy: int, announced: int, per_peer: int = 10
) -> tuple[int, Counter[bytes], trio_kcm.MuxStatistics]:
    """Returns (peak bytes above the baseline, deliveries per message, statistics)."""
    got: Counter[bytes] = Counter()
    async with (
        trio_kcm.open_mux(parser=P, receive_memory_limit=limit) as mux,
        trio.open_nursery() as nursery,
    ):
        sock = mux.socket()
        peers = []
        for _ in range(n_hostile + n_healthy):
            ours, theirs = trio.testing.lockstep_stream_pair()
            mux.attach(ours)
            peers.append(theirs)

        async def consume() -> None:
            async for message in sock:
                got[message[4:].rsplit(b":", 1)[0]] += 1

        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i, peer in enumerate(peers):
                if i < n_hostile:
                    nursery.start_soon(hostile, peer, announced)
                else:
                    nursery.start_soon(healthy, peer, i, per_peer)
            await trio.testing.wait_all_tasks_blocked(cushion=0.02)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        stats = mux.statistics()
        nursery.cancel_scope.cancel()
    return peak, got, stats


def expected(n_hostile: int, n_healthy: int, per_peer: int = 10) -> Counter[bytes]:
    return Counter(
        b"%d:%d" % (i, k) for i in range(n_hostile, n_hostile + n_healthy) for k in range(per_peer)
    )


@deadline(60)
async def test_two_thousand_streams_half_hostile_stay_within_the_limit() -> None:
    limit = 4 * 1024 * 1024
    peak, got, stats = await run_attack(limit, 1000, 1000, announced=64 * 1024)
    assert peak <= bound(limit, 2000)
    # Every healthy message arrived, once; nothing of the hostile ones.
    assert got == expected(1000, 1000)
    # 48 hostile messages were admitted (48 x 64 KiB: the three quarters of
    # the limit that messages may hold), the others wait at their header;
    # none failed.
    assert stats.rx_budget_waiting >= 900
    assert stats.rx_budget_failures == stats.stream_errors == 0
    assert stats.rx_buffered <= limit + 2000 * 2 * 4096


@deadline(60)
async def test_without_a_limit_the_same_attack_takes_what_it_sends() -> None:
    # The bound below is not loose: with no limit, 200 peers announcing
    # 128 KiB each hold ~25 MiB, far above the bound for a 2 MiB limit.
    peak, got, _ = await run_attack(None, 200, 200, announced=128 * 1024)
    assert peak > bound(2 * 1024 * 1024, 400)
    assert got == expected(200, 200)


@deadline(60)
async def test_a_limit_holds_the_same_attack() -> None:
    limit = 2 * 1024 * 1024
    peak, got, stats = await run_attack(limit, 300, 300, announced=128 * 1024)
    assert peak <= bound(limit, 600)
    assert got == expected(300, 300)
    # 12 were admitted (1.5 MiB), the others wait: held, not failed.
    assert stats.rx_budget_holds >= 280
    assert stats.stream_errors == stats.rx_budget_failures == 0


@deadline(10)
async def test_a_large_message_waits_at_its_header_until_it_fits() -> None:
    limit = 128 * 1024  # messages may hold 96 KiB of it
    async with trio_kcm.open_mux(parser=P, receive_memory_limit=limit) as mux:
        sock = mux.socket()
        big_ours, big_peer = trio.testing.memory_stream_pair()
        big = mux.attach(big_ours)
        # 60 KiB of a 63 KiB message: admitted, its whole length paid for.
        await big_peer.send_all(struct.pack(">I", 63 * 1024 - 4) + b"a" * (60 * 1024 - 4))
        await trio.testing.wait_all_tasks_blocked()
        late_ours, late_peer = trio.testing.memory_stream_pair()
        late = mux.attach(late_ours)
        await late_peer.send_all(struct.pack(">I", 40 * 1024 - 4) + b"b" * (40 * 1024 - 4))
        await trio.testing.wait_all_tasks_blocked()
        stats = mux.statistics()
        assert stats.rx_budget_waiting == 1  # it does not fit yet: not read further
        assert stats.rx_buffered <= limit + 2 * 4096
        with pytest.raises(trio.WouldBlock):
            sock.receive_nowait()  # nothing complete: the big one is not yet
        await big_peer.send_all(b"a" * (3 * 1024))  # the big one completes...
        first = await sock.receive()
        assert first == struct.pack(">I", 63 * 1024 - 4) + b"a" * (63 * 1024 - 4)
        second = await sock.receive()  # ...is taken, and the late one goes on
        assert second == struct.pack(">I", 40 * 1024 - 4) + b"b" * (40 * 1024 - 4)
        assert big.state == late.state == "active"
        stats = mux.statistics()
        assert (stats.stream_errors, stats.rx_budget_waiting, stats.rx_buffered) == (0, 0, 0)


@deadline(60)
async def test_complete_messages_nobody_takes_stop_every_reader() -> None:
    # The application is behind: the limit works as a mux-wide receive
    # buffer; nothing is lost, and taking the messages resumes the readers.
    limit = 64 * 1024
    async with (
        trio_kcm.open_mux(parser=P, receive_memory_limit=limit, receive_buffer_size=1 << 30) as mux,
        trio.open_nursery() as nursery,
    ):
        sock = mux.socket()
        count = 2000  # ~200 KiB per peer, 3 peers
        for i in range(3):
            ours, theirs = trio.testing.lockstep_stream_pair()
            mux.attach(ours)
            nursery.start_soon(healthy, theirs, i, count)
        await trio.testing.wait_all_tasks_blocked()
        stats = mux.statistics()
        assert limit * 3 // 4 <= stats.rx_buffered <= limit + 3 * 2 * 4096
        assert stats.rx_budget_waiting == 3
        got: Counter[bytes] = Counter()
        while sum(got.values()) < 3 * count:
            for message in await sock.receive_many(100):
                got[message[4:].rsplit(b":", 1)[0]] += 1
        assert got == expected(0, 3, count)
        await trio.testing.wait_all_tasks_blocked()
        assert mux.statistics().rx_buffered == 0
        nursery.cancel_scope.cancel()


async def test_time_held_counts_against_assembly_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = 64 * 1024
    async with (
        trio_kcm.open_mux(parser=P, receive_memory_limit=limit, assembly_timeout=10) as mux,
        trio.open_nursery() as nursery,
    ):
        for _ in range(2):
            ours, theirs = trio.testing.lockstep_stream_pair()
            mux.attach(ours)
            nursery.start_soon(hostile, theirs, 48 * 1024)
        start = trio.current_time()
        errors = []
        async for error in mux.errors():
            errors.append((error.errno, trio.current_time() - start))
            if len(errors) == 2:
                break
        # One was held (the two do not fit together) or failed at once; the
        # one that stayed ran out of time 10 s after its first byte.
        assert sorted(e for e, _ in errors) in (
            [errno.ETIMEDOUT, errno.ETIMEDOUT],
            sorted([errno.ENOBUFS, errno.ETIMEDOUT]),
        )
        assert max(t for _, t in errors) == pytest.approx(10, abs=0.5)
        assert mux.statistics().rx_buffered == 0  # their partial messages are gone
        nursery.cancel_scope.cancel()


async def test_slowloris_peers_hold_only_what_they_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 500 peers each send a header announcing 512 KiB and then a byte a
    # second: one is admitted, the others are held at their header, all are
    # cut off at assembly_timeout; a healthy peer beside them is answered
    # throughout.
    async with (
        trio_kcm.open_mux(parser=P, receive_memory_limit=1 << 20, assembly_timeout=30) as mux,
        trio.open_nursery() as nursery,
    ):
        sock = mux.socket()

        async def slowloris(stream: trio.abc.Stream) -> None:
            try:
                await stream.send_all(struct.pack(">I", (512 << 10) - 4))
                while True:
                    await trio.sleep(1)
                    await stream.send_all(b"z")
            except trio.BrokenResourceError:
                pass

        for _ in range(500):
            ours, theirs = trio.testing.memory_stream_pair()
            mux.attach(ours)
            nursery.start_soon(slowloris, theirs)
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        reader = PeerReader(peer)
        for second in range(40):
            await peer.send_all(frame(b"ping %d" % second))
            message, origin = await sock.receive_from()
            await sock.send_to(frame(b"pong " + message[4:]), origin)
            assert await reader.read_frames(1) == [frame(b"pong ping %d" % second)]
            if second == 20:
                # One of them was admitted (its 512 KiB paid for); the
                # others wait at their header, not read: 4 bytes each.
                stats = mux.statistics()
                assert stats.rx_budget_waiting == 499
                assert stats.rx_buffered <= (512 << 10) + 499 * 4
            await trio.sleep(1)
        stats = mux.statistics()
        assert stats.stream_errors == 500  # all cut off at 30 s: ETIMEDOUT
        assert stats.rx_buffered == 0
        nursery.cancel_scope.cancel()


@deadline(60)
async def test_accounting_returns_to_zero_when_streams_leave() -> None:
    async with trio_kcm.open_mux(parser=P, receive_memory_limit=1 << 20) as mux:
        handles = []
        for i in range(4):
            ours, theirs = trio.testing.memory_stream_pair()
            handles.append(mux.attach(ours))
            await theirs.send_all(frame(b"whole %d" % i) + struct.pack(">I", 100) + b"part")
        await trio.testing.wait_all_tasks_blocked()
        assert mux.statistics().rx_buffered == 4 * (len(frame(b"whole 0")) + 8)
        stream = await mux.unattach(handles[0])  # its partial goes back with it
        assert handles[0].unread_data == struct.pack(">I", 100) + b"part"
        await stream.aclose()
        sock = mux.socket()
        await trio.testing.wait_all_tasks_blocked()  # the held messages reach it
        assert len(await sock.receive_many(10)) == 4
        assert mux.statistics().rx_buffered == 3 * 8


async def test_limit_is_checked_and_none_counts_nothing() -> None:
    with pytest.raises(ValueError, match="receive_memory_limit"):
        async with trio_kcm.open_mux(parser=P, receive_memory_limit=1000):
            pass  # pragma: no cover
    async with trio_kcm.open_mux(parser=P, receive_memory_limit=None) as mux:
        ours, theirs = trio.testing.memory_stream_pair()
        mux.attach(ours)
        await theirs.send_all(frame(b"x"))
        await trio.testing.wait_all_tasks_blocked()
        assert mux.statistics().rx_buffered == 0


@deadline(10)
async def test_a_message_larger_than_the_whole_limit_fails_with_enobufs() -> None:
    # Within max_message_size (8 MiB by default), above the limit: it could
    # never be held, so its stream fails as soon as it is seen to be stuck.
    async with trio_kcm.open_mux(parser=P, receive_memory_limit=64 * 1024) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        await peer.send_all(struct.pack(">I", 100 * 1024) + b"x" * (80 * 1024))
        error = await mux.errors().__anext__()
        assert error.errno == errno.ENOBUFS
        assert "a message of 102404 bytes cannot fit" in str(error)
        assert "messages may hold 49152 bytes of it" in str(error)


async def test_waiters_wake_smallest_need_first_and_cancelled_ones_leave() -> None:
    from trio_kcm._budget import Budget

    budget = Budget(64 * 1024)
    budget.charged = budget.hold  # full
    woke: list[str] = []

    async def waiter(name: str, need: int, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await budget.wait(need)
            woke.append(name)

    async with trio.open_nursery() as nursery:
        big = await nursery.start(waiter, "big", 48 * 1024)
        gone = await nursery.start(waiter, "gone", 1024)
        await nursery.start(waiter, "small", 8 * 1024)
        assert budget.waiting == 3
        gone.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert budget.waiting == 2 and woke == []
        budget.charged -= 16 * 1024  # 16 KiB free: the small one fits
        budget.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert woke == ["small"] and budget.waiting == 1
        budget.charged = 0
        budget.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert woke == ["small", "big"] and budget.waiting == 0
        assert budget.waiters == []
        assert big.cancelled_caught is False
