"""Socket calls that complete without waiting: cancel points always, schedule points by turns.

See ``trio_kcm/_turns.py``: ``send`` and ``receive`` that need not wait skip
their schedule point while the mux saw a yield less than MAX_RUN_SECONDS and
fewer than MAX_RUN_CALLS such calls ago.  These tests pin the clock the mux
reads (``frozen_turns``, or a clock of their own) so that the count alone,
or a time they choose, ends a run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio
import trio.testing

import trio_kcm
import trio_kcm._turns
from trio_kcm._turns import MAX_RUN_CALLS, MAX_RUN_SECONDS, Turns

from .conftest import PeerReader, frame, unframe_all

P = trio_kcm.LengthPrefixed(">I", adjust=4)


class FakeTime:
    """A perf_counter for _turns that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime()
    monkeypatch.setattr(trio_kcm._turns, "perf_counter", clock)
    return clock


class StepWatch(trio.abc.Instrument):
    """Counts the calls the current task makes within each of its steps.

    A step ends where the task yields: the most calls in one step is the
    longest the task ran without giving other tasks their turn.
    """

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.calls = 0
        self.longest = 0
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
            self.calls = 0

    def count(self) -> None:
        self.calls += 1
        self.longest = max(self.longest, self.calls)


@contextmanager
def watch_steps() -> Iterator[StepWatch]:
    watch = StepWatch()
    trio.lowlevel.add_instrument(watch)
    try:
        yield watch
    finally:
        trio.lowlevel.remove_instrument(watch)


@asynccontextmanager
async def memory_mux() -> AsyncIterator[tuple[trio_kcm.Mux, trio.abc.Stream]]:
    """A mux with one in-memory stream and a huge send buffer; yields the peer's end."""
    ours, theirs = trio.testing.memory_stream_pair()
    async with trio_kcm.open_mux(parser=P, send_buffer_size=1 << 24) as mux:
        mux.attach(ours)
        yield mux, theirs


# -- the rule itself -----------------------------------------------------------


def test_turns_skips_up_to_the_count_then_asks_for_a_yield(fake_time: FakeTime) -> None:
    turns = Turns()
    assert all(turns.skip() for _ in range(MAX_RUN_CALLS))
    assert not turns.skip()
    assert not turns.skip()  # still due: only yielded() restarts the count
    turns.yielded()
    assert turns.skip()


def test_turns_asks_for_a_yield_once_the_time_is_up(fake_time: FakeTime) -> None:
    turns = Turns()
    assert turns.skip()
    fake_time.now += MAX_RUN_SECONDS / 2
    assert turns.skip()
    fake_time.now += MAX_RUN_SECONDS / 2
    assert not turns.skip()
    turns.yielded()  # the time counts from the yield
    assert turns.skip()


# -- sends ---------------------------------------------------------------------


async def test_a_sending_loop_yields_at_least_every_max_run_calls_sends(
    frozen_turns: None,
) -> None:
    async with memory_mux() as (mux, _peer):
        sock = mux.socket()
        await trio.testing.wait_all_tasks_blocked()
        with watch_steps() as watch:
            for i in range(10 * MAX_RUN_CALLS):
                await sock.send(frame(b"%d" % i))
                watch.count()
        # One step: the send that yielded returns, then MAX_RUN_CALLS skip.
        assert watch.longest == MAX_RUN_CALLS + 1
        assert watch.steps >= 10 * MAX_RUN_CALLS // (MAX_RUN_CALLS + 1)


async def test_a_slow_sending_loop_yields_once_the_time_is_up(fake_time: FakeTime) -> None:
    async with memory_mux() as (mux, _peer):
        sock = mux.socket()
        await trio.testing.wait_all_tasks_blocked()
        with watch_steps() as watch:
            for i in range(30):
                fake_time.now += MAX_RUN_SECONDS * 0.4  # each loop takes 0.4 ms
                await sock.send(frame(b"%d" % i))
                watch.count()
        # 0.4, 0.8 ms after the last yield: skipped; 1.2 ms: it yields.
        assert watch.longest == 3


async def test_every_send_is_a_cancel_point_and_what_was_accepted_goes_out(
    frozen_turns: None,
) -> None:
    # The first sends of a run are accepted and left for the writer, which has
    # not run yet; the cancelled send in the same run is not accepted, and the
    # accepted ones are written all the same.
    async with memory_mux() as (mux, peer):
        sock = mux.socket()
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            for i in range(5):
                await sock.send(frame(b"ok%d" % i))
            assert mux.statistics().tx_msgs == 0  # nothing written: no yield yet
            scope.cancel()
            await sock.send(frame(b"cancelled"))
            pytest.fail("send() is not a cancel point")  # pragma: no cover
        assert sock.statistics().tx_msgs == 5
        got = await PeerReader(peer).read_frames(5)
        assert got == [frame(b"ok%d" % i) for i in range(5)]
    assert mux.statistics().tx_msgs == 5  # the cancelled one never went out


@pytest.mark.parametrize("how", ["send", "send_many", "send_to"])
async def test_a_run_of_sends_is_flushed_when_the_mux_closes_before_any_yield(
    frozen_turns: None, how: str
) -> None:
    ours, peer = trio.testing.memory_stream_pair()
    reader = PeerReader(peer)
    async with trio_kcm.open_mux(parser=P) as mux:
        handle = mux.attach(ours)
        sock = mux.socket()
        await trio.testing.wait_all_tasks_blocked()
        sent = [frame(b"m%d" % i) for i in range(10)]
        for message in sent:
            if how == "send":
                await sock.send(message)
            elif how == "send_many":
                await sock.send_many([message])
            else:
                await sock.send_to(message, handle)
        assert mux.statistics().tx_msgs == 0
    # The mux's close wrote them: whole and in order.
    assert await reader.read_frames(10) == sent


async def test_runs_of_several_tasks_keep_each_socket_in_order_and_frames_whole(
    frozen_turns: None,
) -> None:
    # Small writes on the peer side (1..7 bytes per receive_some) and several
    # tasks sending runs on several sockets: every frame arrives whole, and
    # each task's messages in the order it sent them.
    ours, peer = trio.testing.memory_stream_pair()
    per_task = 3 * MAX_RUN_CALLS
    tasks = 4
    async with trio_kcm.open_mux(parser=P) as mux:
        mux.attach(ours)
        socks = [mux.socket() for _ in range(2)]
        received = b""

        async def sender(t: int) -> None:
            sock = socks[t % 2]
            for i in range(per_task):
                await sock.send(frame(b"t%d-%d" % (t, i) + b"x" * (i % 11)))

        async def read_all() -> None:
            nonlocal received
            n = 0
            while received.count(b"-") < tasks * per_task or unframe_all(received)[1]:
                received += await peer.receive_some(1 + n % 7)
                n += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            for t in range(tasks):
                nursery.start_soon(sender, t)
    frames, rest = unframe_all(received)
    assert rest == b""
    for t in range(tasks):
        mine = [f for f in frames if f[4:].startswith(b"t%d-" % t)]
        assert mine == [frame(b"t%d-%d" % (t, i) + b"x" * (i % 11)) for i in range(per_task)]


async def test_a_send_that_waits_for_room_yields_and_restarts_the_run(frozen_turns: None) -> None:
    async with memory_mux() as (mux, peer), trio.open_nursery() as nursery:
        sock = mux.socket(send_buffer_size=100)
        reader = PeerReader(peer)
        nursery.start_soon(reader.read_frames, 1000)
        await trio.testing.wait_all_tasks_blocked()
        with watch_steps() as watch:
            for _ in range(200):
                await sock.send(frame(b"x" * 60))  # the buffer holds one
                watch.count()
        # Waiting for room is a yield, never a run of skipped ones.
        assert watch.longest <= 2
        nursery.cancel_scope.cancel()


# -- receives ------------------------------------------------------------------


async def _fill(mux: trio_kcm.Mux, peer: trio.abc.SendStream, n: int) -> trio_kcm.KCMSocket:
    sock = mux.socket()
    await peer.send_all(b"".join(frame(b"r%d" % i) for i in range(n)))
    await trio.testing.wait_all_tasks_blocked()
    assert sock.statistics().rx_queued_msgs == n
    return sock


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.receive(),
        lambda s: s.receive_many(1),
        lambda s: s.receive_from(),
    ],
    ids=["receive", "receive_many", "receive_from"],
)
async def test_a_receiving_loop_yields_at_least_every_max_run_calls(
    frozen_turns: None, call: Callable[[trio_kcm.KCMSocket], Awaitable[object]]
) -> None:
    ours, peer = trio.testing.memory_stream_pair()
    async with trio_kcm.open_mux(parser=P) as mux:
        mux.attach(ours)
        n = 5 * MAX_RUN_CALLS
        sock = await _fill(mux, peer, n)
        with watch_steps() as watch:
            for _ in range(n):
                await call(sock)
                watch.count()
        assert watch.longest == MAX_RUN_CALLS + 1


async def test_every_receive_is_a_cancel_point_and_takes_nothing_when_cancelled(
    frozen_turns: None,
) -> None:
    ours, peer = trio.testing.memory_stream_pair()
    async with trio_kcm.open_mux(parser=P) as mux:
        mux.attach(ours)
        sock = await _fill(mux, peer, 10)
        with trio.CancelScope() as scope:
            assert await sock.receive() == frame(b"r0")
            assert await sock.receive() == frame(b"r1")
            scope.cancel()
            await sock.receive()
            pytest.fail("receive() is not a cancel point")  # pragma: no cover
        assert await sock.receive() == frame(b"r2")  # the cancelled call took nothing


async def test_a_receive_that_waited_ends_the_run(frozen_turns: None) -> None:
    # Request/response: a send after a receive that had to wait starts a new
    # run, so the run's count restarts rather than carrying over.
    ours, peer = trio.testing.memory_stream_pair()
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        mux.attach(ours)
        sock = mux.socket()
        reader = PeerReader(peer)

        async def echo() -> None:
            while True:
                [request] = await reader.read_frames(1)
                await peer.send_all(request)

        nursery.start_soon(echo)
        await trio.testing.wait_all_tasks_blocked()
        with watch_steps() as watch:
            for i in range(3 * MAX_RUN_CALLS):
                await sock.send(frame(b"q%d" % i))
                watch.count()
                assert await sock.receive() == frame(b"q%d" % i)
                watch.count()
        # Each receive waits (a new step); the send after it skips.
        assert watch.longest == 2
        nursery.cancel_scope.cancel()
