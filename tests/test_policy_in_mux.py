"""Each built-in policy in a real mux: where received messages and sent groups go.

Over in-memory streams: how round-robin, batch-affinity (the default) and
least-queued spread one read's messages over the sockets and the senders'
groups over the streams, ``rx_policy`` and ``tx_policy`` overriding one side
each, and what the mux tells a policy's ``written()``.  The policies alone,
driven without a mux, are ``tests/test_policy_units.py``.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_kcm
from trio_kcm.policies import BatchAffinity, LeastQueued, RoundRobin

from .conftest import PeerReader, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


# ---------------------------------------------------------------------------
# receive


async def test_round_robin_spreads_one_read_evenly() -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
        assert type(mux.rx_policy) is RoundRobin
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sockets = [mux.socket() for _ in range(4)]
        messages = [frame(b"message %03d" % i) for i in range(400)]
        await peer.send_all(b"".join(messages))  # one write
        await trio.testing.wait_all_tasks_blocked()
        for k, sock in enumerate(sockets):
            assert sock.statistics().rx_queued_msgs == 100
            # ... and in turn: socket k has messages k, k+4, k+8, ...
            assert sock.receive_many_nowait(1000) == messages[k::4]
        assert mux.statistics().rx_msgs == 400


async def test_batch_affinity_one_read_per_socket_in_turn() -> None:
    async with trio_kcm.open_mux(parser=P, policy="batch-affinity") as mux:
        assert type(mux.rx_policy) is BatchAffinity
        pairs = [trio.testing.memory_stream_pair() for _ in range(2)]
        for ours, _ in pairs:
            mux.attach(ours)
        sockets = [mux.socket() for _ in range(4)]
        writes = []
        for w in range(10):
            batch = [frame(b"read %d message %d" % (w, i)) for i in range(7)]
            writes.append(batch)
            # Alternate the streams: the line of sockets is the mux's, not a stream's.
            await pairs[w % 2][1].send_all(b"".join(batch))
            await trio.testing.wait_all_tasks_blocked()
            counts = [s.statistics().rx_queued_msgs for s in sockets]
            expected = [7 * len(range(k, w + 1, 4)) for k in range(4)]
            assert counts == expected, (w, counts)
        for k, sock in enumerate(sockets):
            got = sock.receive_many_nowait(1000)
            assert got == [m for batch in writes[k::4] for m in batch]


async def test_batch_affinity_is_the_default() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        assert type(mux.rx_policy) is BatchAffinity
        assert mux.tx_policy is mux.rx_policy
        assert mux.rx_policy.name == "batch-affinity"


async def test_batch_affinity_full_socket_passes_the_rest_of_the_read_on() -> None:
    async with trio_kcm.open_mux(parser=P, policy="batch-affinity") as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        small = mux.socket(receive_buffer_size=30)  # full after 3 messages of 10 bytes
        big = mux.socket()
        third = mux.socket()
        messages = [frame(b"%06d" % i) for i in range(8)]
        await peer.send_all(b"".join(messages))
        await trio.testing.wait_all_tasks_blocked()
        assert small.receive_many_nowait(100) == messages[:3]
        assert big.receive_many_nowait(100) == messages[3:]
        with pytest.raises(trio.WouldBlock):
            third.receive_nowait()


async def test_least_queued_keeps_sockets_within_one_message() -> None:
    async with trio_kcm.open_mux(parser=P, policy="least-queued") as mux:
        assert type(mux.rx_policy) is LeastQueued
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sockets = [mux.socket() for _ in range(4)]
        await peer.send_all(b"".join(frame(b"%04d" % i) for i in range(402)))
        await trio.testing.wait_all_tasks_blocked()
        counts = [s.statistics().rx_queued_msgs for s in sockets]
        assert sum(counts) == 402
        assert max(counts) - min(counts) <= 1
        # The first socket's worker catches up: it is the emptiest, so it gets
        # new messages until it is level with the others again.
        taken = len(sockets[0].receive_many_nowait(1000))
        assert taken == counts[0]
        total = 4 * 110
        await peer.send_all(b"".join(frame(b"%04d" % i) for i in range(total - 402 + taken)))
        await trio.testing.wait_all_tasks_blocked()
        assert [s.statistics().rx_queued_msgs for s in sockets] == [110] * 4
        for _ in range(5):
            await peer.send_all(frame(b"more"))
            await trio.testing.wait_all_tasks_blocked()
            counts = [s.statistics().rx_queued_msgs for s in sockets]
            assert max(counts) - min(counts) <= 1, counts


# ---------------------------------------------------------------------------
# transmit


def _attach_peers(mux: trio_kcm.Mux, n: int) -> list[PeerReader]:
    peers = []
    for _ in range(n):
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        peers.append(PeerReader(peer))
    return peers


@pytest.mark.parametrize("nstreams", [2, 3])
async def test_round_robin_sends_alternate_streams(nstreams: int) -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
        assert type(mux.tx_policy) is RoundRobin
        peers = _attach_peers(mux, nstreams)
        a = mux.socket()
        b = a.clone()
        messages = [frame(b"out %02d" % i) for i in range(4 * nstreams)]
        for i, m in enumerate(messages):
            await (a if i % 3 else b).send(m)  # the turn is the mux's, not a socket's
        for k, peer in enumerate(peers):
            assert await peer.read_frames_within(4) == messages[k::nstreams]


async def test_round_robin_a_batch_is_one_group() -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
        peers = _attach_peers(mux, 2)
        sock = mux.socket()
        await sock.send_many([frame(b"g1a"), frame(b"g1b"), frame(b"g1c")])
        await sock.send(frame(b"g2"))
        async with sock.batch():
            await sock.send(frame(b"g3a"))
            await sock.send(frame(b"g3b"))
        await sock.send(frame(b"g4"))
        assert await peers[0].read_frames_within(5) == [
            frame(b"g1a"),
            frame(b"g1b"),
            frame(b"g1c"),
            frame(b"g3a"),
            frame(b"g3b"),
        ]
        assert await peers[1].read_frames_within(2) == [frame(b"g2"), frame(b"g4")]


async def test_batch_affinity_burst_stays_on_its_stream() -> None:
    async with trio_kcm.open_mux(parser=P, policy="batch-affinity") as mux:
        peers = _attach_peers(mux, 2)
        x = mux.socket()
        y = mux.socket()
        # No checkpoint between these: x's burst is all queued while x holds
        # its reservation, and y's burst takes the other stream.
        burst_x = [frame(b"x1 %d" % i) for i in range(5)]
        burst_y = [frame(b"y1 %d" % i) for i in range(3)]
        for m in burst_x:
            x.send_nowait(m)
        for m in burst_y:
            y.send_nowait(m)
        assert await peers[0].read_frames_within(5) == burst_x
        assert await peers[1].read_frames_within(3) == burst_y
        await trio.testing.wait_all_tasks_blocked()  # written: both released
        burst_x2 = [frame(b"x2 %d" % i) for i in range(4)]
        for m in burst_x2:
            x.send_nowait(m)
        # x's next burst takes the stream picked longest ago.
        assert await peers[0].read_frames_within(4) == burst_x2
        stats = [h.statistics() for h in mux.streams]
        assert [s.tx_msgs for s in stats] == [9, 3]


async def test_least_queued_transmit_in_a_real_mux() -> None:
    async with trio_kcm.open_mux(parser=P, policy="least-queued") as mux:
        peers = _attach_peers(mux, 2)
        sock = mux.socket()
        big = frame(b"B" * 1000)
        small = [frame(b"s%d" % i) for i in range(6)]
        sock.send_nowait(big)  # stream 0: 1004 bytes queued
        for m in small:  # all smaller in total than the big one: stream 1
            sock.send_nowait(m)
        assert await peers[0].read_frames_within(1) == [big]
        assert await peers[1].read_frames_within(6) == small
        await trio.testing.wait_all_tasks_blocked()
        # Both empty again: equal loads alternate.
        more = [frame(b"m%d" % i) for i in range(6)]
        for m in more:
            sock.send_nowait(m)
        got0 = await peers[0].read_frames_within(3)
        got1 = await peers[1].read_frames_within(3)
        assert sorted(got0 + got1) == sorted(more)
        assert {tuple(got0), tuple(got1)} == {tuple(more[0::2]), tuple(more[1::2])}


async def test_rx_and_tx_policy_override_one_side_each() -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin", tx_policy="least-queued") as mux:
        assert type(mux.rx_policy) is RoundRobin
        assert type(mux.tx_policy) is LeastQueued
        assert mux.rx_policy.name == "round-robin"
        assert mux.tx_policy.name == "least-queued"
    async with trio_kcm.open_mux(parser=P, rx_policy="least-queued") as mux:
        assert type(mux.rx_policy) is LeastQueued
        assert type(mux.tx_policy) is BatchAffinity  # the default policy
    rx, tx = RoundRobin(), BatchAffinity()
    async with trio_kcm.open_mux(parser=P, rx_policy=rx, tx_policy=tx) as mux:
        assert mux.rx_policy is rx
        assert mux.tx_policy is tx
        # They act on their own side: rx round-robin, tx sticky per burst.
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        ours2, _peer2 = trio.testing.memory_stream_pair()
        mux.attach(ours2)
        a, b = mux.socket(), mux.socket()
        await peer.send_all(b"".join(frame(b"%d" % i) for i in range(4)))
        await trio.testing.wait_all_tasks_blocked()
        assert a.receive_many_nowait(10) == [frame(b"0"), frame(b"2")]
        assert b.receive_many_nowait(10) == [frame(b"1"), frame(b"3")]
        for i in range(3):
            a.send_nowait(frame(b"t%d" % i))
        assert await PeerReader(peer).read_frames_within(3) == [frame(b"t%d" % i) for i in range(3)]
    both = LeastQueued()
    async with trio_kcm.open_mux(parser=P, policy=both) as mux:
        assert mux.rx_policy is both
        assert mux.tx_policy is both


# ---------------------------------------------------------------------------
# what written() is told


class _TimedRoundRobin(RoundRobin):
    """round-robin that records what written() is told."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def written(
        self,
        stream: trio_kcm.AttachedStream,
        sock: trio_kcm.KCMSocket,
        nbytes: int,
        seconds: float,
        /,
    ) -> None:
        self.seconds.append(seconds)


async def test_written_is_told_how_long_a_group_took_from_its_pick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A policy that overrides written() gets each group's time from pick to
    # written (the mux times groups only for such a policy).
    policy = _TimedRoundRobin()
    ours, peer = trio.testing.lockstep_stream_pair()
    async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
        mux.attach(ours)
        sock = mux.socket()
        await sock.send(frame(b"slow"))  # the peer reads 5 s later
        await trio.sleep(5)
        assert await PeerReader(peer).read_frames(1) == [frame(b"slow")]
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(PeerReader(peer).read_frames, 1)
            await sock.send(frame(b"fast"))  # the peer is reading
        await trio.testing.wait_all_tasks_blocked()
    assert policy.seconds == [pytest.approx(5.0), pytest.approx(0.0)]
