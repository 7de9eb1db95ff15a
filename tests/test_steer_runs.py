"""Receive steering by runs: a batch-affine policy is asked once per run.

``Policy.batch_affine`` lets the mux deliver the messages of one read that go
to the same socket without asking the policy for each; the result must be
exactly what asking for each message gives.
"""

from __future__ import annotations

import random

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_kcm
from trio_kcm.policies.batch_affinity import BatchAffinity

from .conftest import frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


class PerMessage(BatchAffinity):
    """batch-affinity, asked about every message (the reference)."""

    batch_affine = False


class CountingAffine(BatchAffinity):
    def __init__(self) -> None:
        super().__init__()
        self.picks = 0

    def pick_socket(
        self, stream: trio_kcm.AttachedStream | None, message: bytes, /
    ) -> trio_kcm.KCMSocket | None:
        self.picks += 1
        return super().pick_socket(stream, message)


async def _spread(
    policy: trio_kcm.Policy, reads: list[list[bytes]], limits: list[int]
) -> list[list[bytes]]:
    """What each socket got from ``reads`` (one write each), in rounds.

    Round 0 is what the sockets hold after the reads; a socket that filled up
    takes no more, and what no socket had room for waits with the stream.
    Each later round empties every socket, so the rest comes in.
    """
    ours, peer = trio.testing.memory_stream_pair()
    total = sum(map(len, reads))
    async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
        sockets = [mux.socket(receive_buffer_size=limit) for limit in limits]
        handle = mux.attach(ours)
        for read in reads:
            await peer.send_all(b"".join(read))
            await trio.testing.wait_all_tasks_blocked()
        rounds: list[list[bytes]] = []
        while sum(map(len, rounds)) < total:
            assert len(rounds) < 1000 * len(sockets), "messages were lost"
            for sock in sockets:
                try:
                    rounds.append(sock.receive_many_nowait(10_000))
                except trio.WouldBlock:
                    rounds.append([])
            await trio.testing.wait_all_tasks_blocked()
        await mux.unattach(handle)
    return rounds


@settings(max_examples=40, deadline=None)
@given(
    reads=st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=40), min_size=1, max_size=6),
    limits=st.lists(st.integers(1, 2000), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_runs_deliver_exactly_what_one_pick_per_message_does(
    reads: list[list[int]], limits: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    messages = [[frame(rng.randbytes(size)) for size in read] for read in reads]
    runs = trio.run(_spread, BatchAffinity(), messages, limits)
    assert runs == trio.run(_spread, PerMessage(), messages, limits)
    assert sorted(m for got in runs for m in got) == sorted(m for read in messages for m in read)


async def test_one_pick_per_run_not_per_message() -> None:
    policy = CountingAffine()
    ours, peer = trio.testing.memory_stream_pair()
    messages = [frame(b"%03d" % i + b"x" * 93) for i in range(30)]  # 100 bytes each
    async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
        first = mux.socket(receive_buffer_size=1000)
        second = mux.socket(receive_buffer_size=10_000)
        mux.attach(ours)
        await peer.send_all(b"".join(messages))
        await trio.testing.wait_all_tasks_blocked()
        # The first socket takes messages until its 10th reaches its limit;
        # the other 20 go to the second: two runs, two picks.
        assert first.receive_many_nowait(100) == messages[:10]
        assert second.receive_many_nowait(100) == messages[10:]
        assert policy.picks == 2


async def test_a_run_wakes_one_waiting_receiver_per_message() -> None:
    ours, peer = trio.testing.memory_stream_pair()
    messages = [frame(b"m%d" % i) for i in range(3)]
    got: list[bytes] = []
    async with trio_kcm.open_mux(parser=P) as mux:
        sock = mux.socket()
        mux.attach(ours)
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(lambda: _receive_into(sock, got))
            await trio.testing.wait_all_tasks_blocked()
            await peer.send_all(b"".join(messages))  # one read of three messages
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(got) == sorted(messages)  # three woken, each with one
            await peer.send_all(frame(b"last"))
        assert sorted(got) == sorted([*messages, frame(b"last")])


async def _receive_into(sock: trio_kcm.KCMSocket, out: list[bytes]) -> None:
    out.append(await sock.receive())
