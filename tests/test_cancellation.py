"""Senders and receivers cancelled at random points (hypothesis-chosen schedules).

Promises checked: a healthy stream's peer never sees a partial frame; a message
whose ``send`` returned arrives exactly once; a message whose ``send`` was
cancelled (withdrawn) never arrives; no received message is delivered twice or
lost, whatever receive calls were cancelled around it.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import trio
import trio.testing
import trio_util
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_kcm

from .conftest import frame, unframe_all

P = trio_kcm.LengthPrefixed(">I", adjust=4)
SOCKETS = 3
STREAMS = 2
#: Deadlines, in virtual seconds after an operation starts (inf: never).
DELAYS = [0.0, 0.0005, 0.001, 0.003, 0.01, math.inf]

delay = st.sampled_from(DELAYS)
sock_index = st.integers(0, SOCKETS - 1)
OPS = st.one_of(
    st.tuples(st.just("send"), sock_index, st.integers(1, 3), delay),
    st.tuples(st.just("send_many"), sock_index, st.integers(1, 6), delay),
    st.tuples(st.just("batch"), sock_index, st.integers(1, 6), delay),
    st.tuples(st.just("receive"), sock_index, st.integers(1, 4), delay),
    st.tuples(st.just("peer_send"), st.integers(0, STREAMS - 1), st.integers(1, 8)),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.001, 0.005])),
)


class Run:
    def __init__(self, mux: trio_kcm.Mux, nursery: trio.Nursery) -> None:
        self.mux = mux
        self.nursery = nursery
        self.socks = [mux.socket(send_buffer_size=150) for _ in range(SOCKETS)]
        self.pairs = [trio.testing.lockstep_stream_pair() for _ in range(STREAMS)]
        for ours, _ in self.pairs:
            mux.attach(ours)
        self.count = 0
        self.busy = trio_util.AsyncValue(0)  # operations other than receives not done
        self.accepted: list[bytes] = []
        self.withdrawn: list[bytes] = []
        self.peer_sent: list[bytes] = []
        self.received: list[bytes] = []
        self.at_peers: list[list[bytes]] = [[] for _ in range(STREAMS)]
        self.leftovers: list[bytes] = [b"" for _ in range(STREAMS)]

    def fresh(self, n: int) -> list[bytes]:
        out = [frame(b"m%d" % (self.count + i) + b"." * 40) for i in range(n)]
        self.count += n
        return out

    async def peer_reader(self, i: int) -> None:
        """Reads slowly (64 bytes per virtual ms), so senders block."""
        stream = self.pairs[i][1]
        buffer = b""
        while True:
            data = await stream.receive_some(64)
            if not data:
                break
            buffer += data
            frames, buffer = unframe_all(buffer)
            self.at_peers[i].extend(frames)
            await trio.sleep(0.001)
        self.leftovers[i] = buffer

    async def op(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "receive":
            await self.sock_op(self.socks[op[1]], kind, op)
            return
        self.busy.value += 1
        try:
            await self.other_op(kind, op)
        finally:
            self.busy.value -= 1

    async def other_op(self, kind: str, op: tuple[Any, ...]) -> None:
        if kind == "peer_send":
            messages = self.fresh(op[2])
            self.peer_sent.extend(messages)
            await self.pairs[op[1]][1].send_all(b"".join(messages))
            return
        if kind == "wait":
            await trio.sleep(op[1])
            return
        await self.sock_op(self.socks[op[1]], kind, op)

    async def sock_op(self, sock: trio_kcm.KCMSocket, kind: str, op: tuple[Any, ...]) -> None:
        with trio.move_on_after(op[3]):
            if kind == "receive":
                self.received.extend(await sock.receive_many(op[2]))
            elif kind == "send":
                for message in self.fresh(op[2]):
                    try:
                        await sock.send(message)
                    except trio.Cancelled:
                        self.withdrawn.append(message)
                        raise
                    self.accepted.append(message)
            elif kind == "send_many":
                messages = self.fresh(op[2])
                try:
                    await sock.send_many(messages)
                except trio.Cancelled:
                    self.withdrawn.extend(messages)
                    raise
                self.accepted.extend(messages)
            else:  # batch: each send that returned is accepted, flushed at exit
                async with sock.batch():
                    for message in self.fresh(op[2]):
                        try:
                            await sock.send(message)
                        except trio.Cancelled:
                            self.withdrawn.append(message)
                            raise
                        self.accepted.append(message)


async def run_schedule(schedule: list[tuple[Any, ...]]) -> Run:
    with trio.fail_after(1000):
        async with (
            trio.open_nursery() as readers,
            trio_kcm.open_mux(parser=P, policy="round-robin", close_timeout=100) as mux,
            trio.open_nursery() as nursery,
        ):
            run = Run(mux, nursery)
            for i in range(STREAMS):
                readers.start_soon(run.peer_reader, i)
            for op in schedule:
                # Each operation in its own task, so they overlap.
                nursery.start_soon(run.op, op)
                await trio.sleep(0.0003)
            # Let every send finish (or be cancelled), then take what is
            # left and stop the receives still waiting.
            await run.busy.wait_value(0)
            # Every peer_send's bytes were read (lockstep): the messages
            # are queued in sockets, or were taken by receives.
            await trio.testing.wait_all_tasks_blocked()
            for sock in run.socks:
                try:
                    run.received.extend(sock.receive_many_nowait(1000))
                except trio.WouldBlock:
                    pass
            nursery.cancel_scope.cancel()
        # The mux flushed what was accepted and closed the streams.
    at_peers = [m for frames in run.at_peers for m in frames]
    assert run.leftovers == [b""] * STREAMS, "a partial frame on a healthy stream"
    assert collections.Counter(at_peers) == collections.Counter(run.accepted)
    assert not set(run.withdrawn) & set(at_peers), "a withdrawn message was sent"
    assert sorted(run.received) == sorted(run.peer_sent), "lost or duplicated on receive"
    stats = mux.statistics()
    assert (stats.stream_errors, stats.tx_dropped, stats.rx_ready_drops) == (0, 0, 0)
    return run


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=st.lists(OPS, min_size=1, max_size=40))
def test_cancellation_at_random_points(schedule: list[tuple[Any, ...]]) -> None:
    trio.run(run_schedule, schedule, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_some_schedules_really_cancel_midway(autojump_clock: object) -> None:
    # The property above is only worth something if cancellations land while
    # senders wait for buffer space (and inside batches).
    run = await run_schedule(
        [
            ("send_many", 0, 6, math.inf),  # fills socket 0's buffer
            ("send", 0, 3, 0.001),  # waits behind it, then is cancelled
            ("receive", 1, 2, 0.0005),  # nothing to receive: cancelled
            ("peer_send", 0, 4),
            ("batch", 0, 5, 0.002),
        ]
    )
    assert run.withdrawn and run.accepted
    assert len(run.received) == 4
