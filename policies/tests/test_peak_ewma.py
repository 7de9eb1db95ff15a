"""``peak-ewma``: the faster member wins, spikes count at once, and then decay.

Time is Trio's: the unit tests run on ``mock_clock`` (time moves only when the
test jumps it), the real-mux tests on ``autojump_clock``.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from typing import Any

import pytest
import trio
import trio.testing
from kcm_policy_testkit import (
    PARSER,
    FakeSock,
    Peer,
    RxDriver,
    TxDriver,
    attach_peers,
    frame,
    socks,
    streams,
)
from trio_kcm_policies import PeakEwma
from trio_kcm_policies.peak_ewma import Estimate

import trio_kcm


def estimate_of(policy: PeakEwma, sock: FakeSock) -> float:
    return policy._rx_members[sock.index].est.value(trio.current_time(), policy._tau)


# ---------------------------------------------------------------------------
# the estimate


def test_estimate_peak_at_once_then_decay_with_the_time_constant() -> None:
    tau = 10.0
    e = Estimate(0.5, 0.0)
    e.sample(0.010, 0.0, tau)  # the first sample replaces the guess, even a lower one
    assert e.est == 0.010
    e.sample(1.0, 0.001, tau)  # a spike: taken at once
    assert e.est == 1.0
    # Steady samples of 10 ms, every 10 ms, for one time constant: the spike's
    # excess is down to 1/e.
    t = 0.001
    for _ in range(1000):
        t += 0.010
        e.sample(0.010, t, tau)
    expected = 0.010 + (1.0 - 0.010) * math.exp(-(t - 0.001) / tau)
    assert e.est == pytest.approx(expected, rel=1e-6)
    assert e.est == pytest.approx(0.010 + 0.99 / math.e, rel=1e-3)
    # A steady latency is its own estimate (after 20 more time constants).
    for _ in range(20_000):
        t += 0.010
        e.sample(0.010, t, tau)
    assert e.est == pytest.approx(0.010, rel=0.01)
    # A sample above the estimate is a peak again, however small the excess.
    e.sample(0.0125, t + 0.01, tau)
    assert e.est == 0.0125


def test_estimate_without_samples_decays_towards_zero() -> None:
    e = Estimate(0.0, 0.0)
    e.sample(2.0, 0.0, 10.0)
    assert e.value(0.0, 10.0) == 2.0
    assert e.value(10.0, 10.0) == pytest.approx(2.0 / math.e)
    assert e.value(50.0, 10.0) == pytest.approx(2.0 * math.exp(-5))
    assert e.est == 2.0  # reading has no side effect
    # A sample after a long silence: the decayed value is what it is compared to.
    e.sample(1.0, 10.0, 10.0)
    assert e.est == 1.0  # 1.0 > 2/e: a peak
    e2 = Estimate(0.0, 0.0)
    e2.sample(2.0, 0.0, 10.0)
    e2.sample(0.5, 10.0, 10.0)
    w = math.exp(-1)
    assert e2.est == pytest.approx(2.0 * w + 0.5 * (1 - w))


def test_non_peak_average_follows_samples_both_ways() -> None:
    e = Estimate(0.0, 0.0, peak=False)
    e.sample(1.0, 0.0, 10.0)
    assert e.est == 1.0
    e.sample(3.0, 10.0, 10.0)  # not a peak: pulled towards 3 only
    assert e.est == pytest.approx(1.0 * math.exp(-1) + 3.0 * (1 - math.exp(-1)))


# ---------------------------------------------------------------------------
# receive


def simulate(
    policy: Any, clock: trio.testing.MockClock, service: list[float], steps: int
) -> tuple[Counter[int], list[int]]:
    """A message every millisecond; socket ``i``'s worker takes ``service[i]``
    seconds per message, and receives (drains) each as it starts on it."""
    rx = RxDriver(policy)
    pool = socks(len(service))
    rx.add(*pool)
    free = [0.0] * len(pool)
    due: list[deque[float]] = [deque() for _ in pool]
    counts: Counter[int] = Counter()
    longest = [0] * len(pool)
    for _ in range(steps):
        now = trio.current_time()
        for s in pool:
            while due[s.index] and due[s.index][0] <= now + 1e-9:
                due[s.index].popleft()
                rx.receive(s, 1)
        sock = rx.pick(None, b"m")
        assert sock is not None
        counts[sock.index] += 1
        start = max(now, free[sock.index])
        free[sock.index] = start + service[sock.index]
        due[sock.index].append(start)
        longest[sock.index] = max(longest[sock.index], len(rx.queues[sock]))
        clock.jump(0.001)
    return counts, longest


async def test_prefers_the_socket_that_drains_faster(mock_clock: trio.testing.MockClock) -> None:
    # 1000 messages/s; the fast worker handles 833/s, the slow one 250/s.
    # Even shares would swamp the slow one (500/s): its queue would grow by
    # 250 a second.  Peak-EWMA sends it what it can take.
    counts, longest = simulate(PeakEwma(seed=1), mock_clock, [0.0012, 0.004], 3000)
    assert counts[0] > 0.75 * 3000, counts
    assert counts[1] > 0.05 * 3000, counts  # the slow one still works
    assert max(longest) <= 3, longest
    # The same workload round-robin: the slow worker's queue runs away.
    rr = trio_kcm.load_policy("round-robin")
    _, rr_longest = simulate(rr, mock_clock, [0.0012, 0.004], 3000)
    assert rr_longest[1] > 200


async def test_reacts_at_once_to_a_spike_and_forgets_it_with_time(
    mock_clock: trio.testing.MockClock,
) -> None:
    policy = PeakEwma(seed=2, decay=1.0)
    rx = RxDriver(policy)
    a, b = socks(2)
    rx.add(a, b)
    # Both answer in 5 ms.
    for _ in range(200):
        sock = rx.pick(None)
        assert sock is not None
        mock_clock.jump(0.005)
        rx.receive(sock, 1)
    assert estimate_of(policy, a) == pytest.approx(0.005, rel=0.05)
    assert estimate_of(policy, b) == pytest.approx(0.005, rel=0.05)
    # One of a's messages waits 2 s: from the moment it is received, a is
    # avoided -- no averaging in first.
    assert rx.pick(None) is not None
    picked = a if rx.queues[a] else b
    other = b if picked is a else a
    mock_clock.jump(2.0)
    rx.receive(picked, 1)
    spike = trio.current_time()
    assert estimate_of(policy, picked) == pytest.approx(2.0)
    picks = []
    for _ in range(100):
        sock = rx.pick(None)
        picks.append(sock)
        mock_clock.jump(0.005)
        rx.receive(sock, 1)  # type: ignore[arg-type]
    assert picks == [other] * 100
    # With no news from it, its estimate decays towards zero (time constant
    # 1 s): once 2 s * exp(-t) is below the other's 5 ms, it is tried again
    # (t = ln 400 = 6 s), and found fast.
    back = None
    for _ in range(2000):
        sock = rx.pick(None)
        if sock is picked and back is None:
            back = trio.current_time() - spike
        mock_clock.jump(0.005)
        rx.receive(sock, 1)  # type: ignore[arg-type]
    assert back is not None
    assert back == pytest.approx(math.log(2.0 / 0.005), abs=0.2)
    assert estimate_of(policy, picked) < 0.01


async def test_a_stalled_socket_is_avoided_before_it_reports(
    mock_clock: trio.testing.MockClock,
) -> None:
    # A short time constant: without news, estimates fade within 0.1 s.
    policy = PeakEwma(seed=3, decay=0.1)
    rx = RxDriver(policy)
    a, b = socks(2)
    rx.add(a, b)
    for _ in range(100):
        sock = rx.pick(None)
        mock_clock.jump(0.001)
        rx.receive(sock, 1)  # type: ignore[arg-type]
    # a's worker stops; b's goes on.  a's estimate is 1 ms and fading, and
    # nothing it drains will say otherwise, but its oldest message keeps
    # getting older: that is its latency now.
    counts: Counter[FakeSock] = Counter()
    for _ in range(1000):
        sock = rx.pick(None)
        assert sock is not None
        counts[sock] += 1
        mock_clock.jump(0.001)
        if sock is b:
            rx.receive(b, 1)
    assert counts[a] <= 3, counts


async def test_a_newcomer_starts_at_the_average_and_gets_its_share(
    mock_clock: trio.testing.MockClock,
) -> None:
    policy = PeakEwma(seed=4)
    rx = RxDriver(policy)
    pool = socks(4)
    rx.add(*pool[:3])
    workers = {s: deque[float]() for s in pool}

    def step() -> FakeSock:
        now = trio.current_time()
        for s, q in workers.items():
            while q and q[0] <= now + 1e-9:
                q.popleft()
                rx.receive(s, 1)
        sock = rx.pick(None)
        assert sock is not None
        workers[sock].append(now + 0.004)  # everyone takes 4 ms to get to it
        mock_clock.jump(0.001)
        return sock

    for _ in range(500):
        step()
    average = policy._rx_average
    assert average is not None
    assert average.value(trio.current_time(), policy._tau) == pytest.approx(0.004, rel=0.1)
    rx.add(pool[3])
    assert estimate_of(policy, pool[3]) == pytest.approx(0.004, rel=0.1)  # a guess
    counts = Counter(step() for _ in range(1000))
    # Neither flooded nor starved: about a quarter of what comes next.
    assert 0.15 < counts[pool[3]] / 1000 < 0.4, counts
    assert policy._rx_members[3].est.measured


async def test_initial_option_sets_the_guess(mock_clock: trio.testing.MockClock) -> None:
    policy = PeakEwma(initial=0.25, seed=0)
    rx = RxDriver(policy)
    (a,) = socks(1)
    rx.add(a)
    assert estimate_of(policy, a) == 0.25
    rx.pick(None)
    mock_clock.jump(0.001)
    rx.receive(a, 1)
    assert estimate_of(policy, a) == pytest.approx(0.001)  # measured: the guess is gone


async def test_messages_moved_away_are_not_samples(mock_clock: trio.testing.MockClock) -> None:
    policy = PeakEwma(seed=5)
    rx = RxDriver(policy)
    a, b = socks(2)
    rx.add(a, b)
    for _ in range(20):
        sock = rx.pick(None)
        mock_clock.jump(0.002)
        rx.receive(sock, 1)  # type: ignore[arg-type]
    before = estimate_of(policy, a)
    # Messages wait on a for a long time, then a is disabled: they move to b.
    for _ in range(100):
        if rx.queues[a]:
            break
        rx.pick(None)
    assert rx.queues[a]
    rx.receive(b, 100)
    mock_clock.jump(30.0)
    rx.disable(a)
    assert not rx.queues[a]
    assert policy._rx_members[a.index].outstanding == deque()
    assert policy._rx_members[a.index].est.est == pytest.approx(before)
    # Moved messages restart their wait on b.
    mock_clock.jump(0.003)
    rx.receive(b, 100)
    assert estimate_of(policy, b) < 1.0
    rx.add(a)  # re-enabled: it kept its estimate
    assert policy._rx_members[a.index].est.est == pytest.approx(before)


async def test_full_socket_disabled_its_moved_messages_are_not_samples(
    mock_clock: trio.testing.MockClock,
) -> None:
    policy = PeakEwma(seed=6, initial=0.0)
    rx = RxDriver(policy)
    a = FakeSock(0, receive_buffer_size=3)
    b = FakeSock(1)
    rx.add(a)
    for _ in range(3):
        rx.pick(None)
    assert a not in rx.candidates  # full
    rx.add(b)
    mock_clock.jump(30.0)
    rx.disable(a)  # no socket_removed (it was not a candidate): socket_drained
    assert rx.queues[b] and not rx.queues[a]
    assert not policy._rx_members[0].est.measured
    assert not policy._rx_members[0].outstanding


async def test_ties_go_to_the_fewer_outstanding(mock_clock: trio.testing.MockClock) -> None:
    # Nothing measured, no time passing: every cost is zero, and the picks
    # spread like least-loaded instead of piling up on whichever is drawn.
    for seed in range(5):
        rx = RxDriver(PeakEwma(seed=seed))
        pool = socks(2)
        rx.add(*pool)
        picks = Counter(rx.pick(None) for _ in range(20))
        assert picks == {pool[0]: 10, pool[1]: 10}


async def test_full_socket_keeps_its_outstanding_and_measures_the_wait(
    mock_clock: trio.testing.MockClock,
) -> None:
    policy = PeakEwma(seed=6)
    rx = RxDriver(policy)
    a = FakeSock(0, receive_buffer_size=3)
    rx.add(a)
    for _ in range(3):
        rx.pick(None)
    assert a not in rx.candidates  # full: removed
    mock_clock.jump(0.5)
    rx.receive(a, 2)  # partly drained: the wait is measured, it is back
    assert a in rx.candidates
    assert estimate_of(policy, a) == pytest.approx(0.5)
    assert len(policy._rx_members[0].outstanding) == 1


async def test_partial_drains_count_whole_messages(mock_clock: trio.testing.MockClock) -> None:
    policy = PeakEwma(seed=0)
    (a,) = socks(1)
    policy.socket_added(a)  # type: ignore[arg-type]
    assert policy.pick_socket(None, b"x" * 10) is a
    mock_clock.jump(1.0)
    assert policy.pick_socket(None, b"y" * 10) is a
    mock_clock.jump(1.0)
    policy.socket_drained(a, 4)  # type: ignore[arg-type]  # part of the first
    assert not policy._rx_members[0].est.measured
    policy.socket_drained(a, 6)  # type: ignore[arg-type]  # the rest of it
    assert policy._rx_members[0].est.est == 2.0
    policy.socket_drained(a, 10)  # type: ignore[arg-type]
    assert not policy._rx_members[0].outstanding


async def test_closed_socket_index_reused(mock_clock: trio.testing.MockClock) -> None:
    policy = PeakEwma(seed=0, initial=0.0)
    rx = RxDriver(policy)
    a, b = socks(2)
    rx.add(a, b)
    policy._rx_members[0].est.sample(9.0, trio.current_time(), 10.0)
    rx.close(a)
    newcomer = FakeSock(0)
    rx.add(newcomer)
    assert policy._rx_members[0].obj is newcomer
    assert estimate_of(policy, newcomer) == 0.0  # not the closed socket's 9 s
    assert sorted(m.obj.index for m in policy._rx.items) == [0, 1]


# ---------------------------------------------------------------------------
# transmit


async def test_transmit_prefers_the_stream_that_writes_faster(
    mock_clock: trio.testing.MockClock,
) -> None:
    policy = PeakEwma(seed=7)
    tx = TxDriver(policy)
    fast, slow = streams(2)
    tx.add(fast, slow)
    sender = FakeSock(0)
    counts: Counter[Any] = Counter()
    for _ in range(500):
        stream = tx.pick(sender, [b"m"])
        assert stream is not None
        counts[stream] += 1
        tx.write(stream, 0.001 if stream is fast else 0.050)
        mock_clock.jump(0.001)
    assert counts[fast] > 0.95 * 500, counts
    # A spike on the fast one: acted on at once.
    tx.pick(sender, [b"m"])
    tx.write(fast, 5.0)
    picks = [tx.pick(sender) for _ in range(20)]
    assert picks == [slow] * 20


async def test_transmit_outstanding_groups_count(mock_clock: trio.testing.MockClock) -> None:
    policy = PeakEwma(seed=8, initial=0.01)
    tx = TxDriver(policy)
    t0, t1 = streams(2)
    tx.add(t0, t1)
    sender = FakeSock(0)
    # Equal estimates: groups alternate as each one's outstanding grows.
    picks = [tx.pick(sender) for _ in range(10)]
    assert Counter(picks) == {t0: 5, t1: 5}
    assert len(policy._tx_members[0].outstanding) == 5
    tx.write(t0)
    assert len(policy._tx_members[0].outstanding) == 4
    tx.remove(t1)  # failed: it is forgotten
    assert 1 not in policy._tx_members
    assert [tx.pick(sender) for _ in range(3)] == [t0] * 3
    tx.remove(t0)
    assert tx.pick(sender) is None


# ---------------------------------------------------------------------------
# options


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="decay= must be finite and > 0"):
        PeakEwma(decay=0)
    with pytest.raises(ValueError, match="decay= must be finite and > 0"):
        PeakEwma(decay=math.inf)
    with pytest.raises(TypeError, match="decay= must be a number"):
        PeakEwma(decay="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial= must be finite and >= 0"):
        PeakEwma(initial=-1.0)
    with pytest.raises(TypeError, match="initial= must be a number or None"):
        PeakEwma(initial="fast")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock= must be callable"):
        PeakEwma(clock=3.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed= or rng=, not both"):
        PeakEwma(seed=1, rng=random.Random())
    with pytest.raises(trio_kcm.PolicyLoadError) as info:
        trio_kcm.load_policy("peak-ewma", decay=-1)
    assert isinstance(info.value.__cause__, ValueError)


def test_an_injected_clock_needs_no_trio_run() -> None:
    now = [100.0]
    policy = PeakEwma(seed=1, clock=lambda: now[0])
    rx = RxDriver(policy)
    a, b = socks(2)
    rx.add(a, b)
    sock = rx.pick(None)
    now[0] += 0.25
    rx.receive(sock, 1)  # type: ignore[arg-type]
    assert policy._rx_members[sock.index].est.est == 0.25  # type: ignore[union-attr]


def test_nothing_to_pick() -> None:
    policy = PeakEwma(clock=lambda: 0.0)
    assert policy.pick_socket(None, b"m") is None
    assert policy.pick_stream(FakeSock(0), [b"m"], 1) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# in a real mux, loaded by name


async def test_by_name_in_a_real_mux_the_slow_worker_gets_less(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio_kcm.open_mux(parser=PARSER, policy="peak-ewma") as mux:
        assert type(mux.rx_policy) is PeakEwma and mux.rx_policy.name == "peak-ewma"
        ((_, peer),) = attach_peers(mux, 1)
        fast, slow = mux.socket(), mux.socket()
        got: dict[str, list[bytes]] = {"fast": [], "slow": []}
        sent = [frame(b"job %03d" % i) for i in range(300)]

        async def worker(name: str, sock: trio_kcm.KCMSocket, seconds: float) -> None:
            async for message in sock:
                got[name].append(message)
                await trio.sleep(seconds)  # the work (virtual time)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, "fast", fast, 0.002)
            nursery.start_soon(worker, "slow", slow, 0.050)
            for message in sent:
                await peer.send_all(message)
                await trio.sleep(0.005)
            await trio.sleep(60)  # virtual: every job is done long before
            nursery.cancel_scope.cancel()
        assert sorted(got["fast"] + got["slow"]) == sorted(sent)  # whole, once each
        assert len(got["fast"]) > 0.8 * len(sent), {k: len(v) for k, v in got.items()}
        assert got["slow"], "the slow worker was never tried"


async def test_by_name_in_a_real_mux_the_slow_stream_gets_less(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio_kcm.open_mux(
        parser=PARSER, policy=trio_kcm.load_policy("peak-ewma", seed=3)
    ) as mux:
        peers = []
        for delay in (0.001, 0.100):
            ours, theirs = trio.testing.memory_stream_pair()
            pump = ours.send_stream.send_all_hook
            assert pump is not None

            async def slow_pump(pump: Any = pump, delay: float = delay) -> None:
                await trio.sleep(delay)  # the network (virtual time)
                await pump()

            ours.send_stream.send_all_hook = slow_pump
            handle = mux.attach(ours)
            peers.append((handle, theirs))
        sock = mux.socket()
        sent = [frame(b"out %03d" % i) for i in range(200)]
        for message in sent:
            await sock.send(message)
            await trio.sleep(0.01)
        await trio.sleep(10)
        counts = [h.statistics().tx_msgs for h, _ in peers]
        assert sum(counts) == 200
        assert counts[0] > 0.8 * 200, counts
        received = []
        for (_, theirs), n in zip(peers, counts, strict=True):
            received += await Peer(theirs).read_frames(n)
        assert sorted(received) == sorted(sent)
