"""``peak-ewma``: the faster member wins, spikes count at once, and then decay.

Time is virtual.  The unit tests drive the policy through a
:class:`~trio_kcm.testing.PolicyHarness` and give it the harness's clock
(``clock=lambda: h.now``): time moves only when the test advances it, or a
write takes time.  The real-mux tests run on ``autojump_clock``.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from typing import Any

import pytest
import trio
import trio.testing
from kcm_policy_testkit import PARSER, Peer, attach_peers, frame, strangers
from trio_kcm_policies import PeakEwma
from trio_kcm_policies.peak_ewma import Estimate

import trio_kcm
from trio_kcm.testing import PolicyHarness


def harnessed(**options: Any) -> tuple[PolicyHarness, PeakEwma]:
    """A peak-ewma policy in a harness, on the harness's virtual clock."""
    h: PolicyHarness
    policy = PeakEwma(clock=lambda: h.now, **options)
    h = PolicyHarness(policy)
    return h, policy


def estimate_of(policy: PeakEwma, sock: trio_kcm.KCMSocket) -> float:
    """The socket's estimate now (on the policy's clock)."""
    return policy._rx_members[sock.index].est.value(policy._clock(), policy._tau)


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


def simulate(h: PolicyHarness, service: list[float], steps: int) -> tuple[Counter[int], list[int]]:
    """A message every millisecond; socket ``i``'s worker takes ``service[i]``
    seconds per message, and receives each as it starts on it."""
    pool = h.sockets(len(service))
    free = [0.0] * len(pool)
    due: list[deque[float]] = [deque() for _ in pool]
    counts: Counter[int] = Counter()
    longest = [0] * len(pool)
    for _ in range(steps):
        now = h.now
        for s in pool:
            while due[s.index] and due[s.index][0] <= now + 1e-9:
                due[s.index].popleft()
                h.receive(s)
        (sock,) = h.read(None, [b"m"])
        counts[sock.index] += 1
        start = max(now, free[sock.index])
        free[sock.index] = start + service[sock.index]
        due[sock.index].append(start)
        longest[sock.index] = max(longest[sock.index], sock.statistics().rx_queued_msgs)
        h.advance(0.001)
    return counts, longest


def test_prefers_the_socket_that_drains_faster() -> None:
    # 1000 messages/s; the fast worker handles 833/s, the slow one 250/s.
    # Even shares would swamp the slow one (500/s): its queue would grow by
    # 250 a second.  Peak-EWMA sends it what it can take.
    h, _ = harnessed(seed=1)
    counts, longest = simulate(h, [0.0012, 0.004], 3000)
    assert counts[0] > 0.75 * 3000, counts
    assert counts[1] > 0.05 * 3000, counts  # the slow one still works
    assert max(longest) <= 3, longest
    # The same workload round-robin: the slow worker's queue runs away.
    _, rr_longest = simulate(PolicyHarness("round-robin"), [0.0012, 0.004], 3000)
    assert rr_longest[1] > 200


def test_reacts_at_once_to_a_spike_and_forgets_it_with_time() -> None:
    h, policy = harnessed(seed=2, decay=1.0)
    a, b = h.sockets(2)
    # Both answer in 5 ms.
    for _ in range(200):
        (sock,) = h.read(None, [b"m"])
        h.advance(0.005)
        h.receive(sock)
    assert estimate_of(policy, a) == pytest.approx(0.005, rel=0.05)
    assert estimate_of(policy, b) == pytest.approx(0.005, rel=0.05)
    # One of a's messages waits 2 s: from the moment it is received, a is
    # avoided -- no averaging in first.
    (picked,) = h.read(None, [b"m"])
    other = b if picked is a else a
    h.advance(2.0)
    h.receive(picked)
    spike = h.now
    assert estimate_of(policy, picked) == pytest.approx(2.0)
    picks = []
    for _ in range(100):
        (sock,) = h.read(None, [b"m"])
        picks.append(sock)
        h.advance(0.005)
        h.receive(sock)
    assert picks == [other] * 100
    # With no news from it, its estimate decays towards zero (time constant
    # 1 s): once 2 s * exp(-t) is below the other's 5 ms, it is tried again
    # (t = ln 400 = 6 s), and found fast.
    back = None
    for _ in range(2000):
        (sock,) = h.read(None, [b"m"])
        if sock is picked and back is None:
            back = h.now - spike
        h.advance(0.005)
        h.receive(sock)
    assert back is not None
    assert back == pytest.approx(math.log(2.0 / 0.005), abs=0.2)
    assert estimate_of(policy, picked) < 0.01


def test_a_stalled_socket_is_avoided_before_it_reports() -> None:
    # A short time constant: without news, estimates fade within 0.1 s.
    h, _ = harnessed(seed=3, decay=0.1)
    a, b = h.sockets(2)
    for _ in range(100):
        (sock,) = h.read(None, [b"m"])
        h.advance(0.001)
        h.receive(sock)
    # a's worker stops; b's goes on.  a's estimate is 1 ms and fading, and
    # nothing it drains will say otherwise, but its oldest message keeps
    # getting older: that is its latency now.
    counts: Counter[trio_kcm.KCMSocket] = Counter()
    for _ in range(1000):
        (sock,) = h.read(None, [b"m"])
        counts[sock] += 1
        h.advance(0.001)
        if sock is b:
            h.receive(b)
    assert counts[a] <= 3, counts


def test_a_newcomer_starts_at_the_average_and_gets_its_share() -> None:
    h, policy = harnessed(seed=4)
    h.sockets(3)
    workers: dict[trio_kcm.KCMSocket, deque[float]] = {}

    def step() -> trio_kcm.KCMSocket:
        now = h.now
        for s, q in workers.items():
            while q and q[0] <= now + 1e-9:
                q.popleft()
                h.receive(s)
        (sock,) = h.read(None, [b"m"])
        # Everyone takes 4 ms to get to it.
        workers.setdefault(sock, deque()).append(now + 0.004)
        h.advance(0.001)
        return sock

    for _ in range(500):
        step()
    average = policy._rx_average
    assert average is not None
    assert average.value(h.now, policy._tau) == pytest.approx(0.004, rel=0.1)
    late = h.socket()
    assert estimate_of(policy, late) == pytest.approx(0.004, rel=0.1)  # a guess
    counts = Counter(step() for _ in range(1000))
    # Neither flooded nor starved: about a quarter of what comes next.
    assert 0.15 < counts[late] / 1000 < 0.4, counts
    assert policy._rx_members[late.index].est.measured


def test_initial_option_sets_the_guess() -> None:
    h, policy = harnessed(initial=0.25, seed=0)
    a = h.socket()
    assert estimate_of(policy, a) == 0.25
    h.read(None, [b"m"])
    h.advance(0.001)
    h.receive(a)
    assert estimate_of(policy, a) == pytest.approx(0.001)  # measured: the guess is gone


def test_messages_moved_away_are_not_samples() -> None:
    h, policy = harnessed(seed=5)
    a, b = h.sockets(2)
    for _ in range(20):
        (sock,) = h.read(None, [b"m"])
        h.advance(0.002)
        h.receive(sock)
    before = estimate_of(policy, a)
    # Messages wait on a for a long time, then a is disabled: they move to b.
    for _ in range(100):
        if a.rx_queued_bytes:
            break
        h.read(None, [b"m"])
    assert a.rx_queued_bytes
    h.receive(b, 100)
    h.advance(30.0)
    h.disable_receive(a)
    assert not a.rx_queued_bytes
    assert b.rx_queued_bytes
    assert policy._rx_members[a.index].outstanding == deque()
    assert policy._rx_members[a.index].est.est == pytest.approx(before)
    # Moved messages restart their wait on b.
    h.advance(0.003)
    h.receive(b, 100)
    assert estimate_of(policy, b) < 1.0
    h.enable_receive(a)  # it kept its estimate
    assert policy._rx_members[a.index].est.est == pytest.approx(before)


def test_full_socket_disabled_its_moved_messages_are_not_samples() -> None:
    h, policy = harnessed(seed=6, initial=0.0)
    a = h.socket(receive_buffer_size=3)
    assert h.read(None, [b"m"] * 3) == [a] * 3
    assert a not in h.receive_candidates  # full
    b = h.socket()
    h.advance(30.0)
    h.disable_receive(a)  # no socket_removed (it was not a candidate): socket_drained
    assert b.rx_queued_bytes and not a.rx_queued_bytes
    assert not policy._rx_members[0].est.measured
    assert not policy._rx_members[0].outstanding


def test_ties_go_to_the_fewer_outstanding() -> None:
    # Nothing measured, no time passing: every cost is zero, and the picks
    # spread like least-loaded instead of piling up on whichever is drawn.
    for seed in range(5):
        h, _ = harnessed(seed=seed)
        pool = h.sockets(2)
        picks = Counter(h.read(None, [b"m"] * 20))
        assert picks == {pool[0]: 10, pool[1]: 10}


def test_full_socket_keeps_its_outstanding_and_measures_the_wait() -> None:
    h, policy = harnessed(seed=6)
    a = h.socket(receive_buffer_size=3)
    h.read(None, [b"m"] * 3)
    assert a not in h.receive_candidates  # full: removed
    h.advance(0.5)
    h.receive(a, 2)  # down to half its buffer: the wait is measured, it is back
    assert a in h.receive_candidates
    assert estimate_of(policy, a) == pytest.approx(0.5)
    assert len(policy._rx_members[0].outstanding) == 1


def test_partial_drains_count_whole_messages() -> None:
    # The mux drains whole messages, but the protocol counts bytes: called
    # directly, with a socket of the harness.
    h, policy = harnessed(seed=0)
    a = h.socket()
    assert policy.pick_socket(None, b"x" * 10) is a
    h.advance(1.0)
    assert policy.pick_socket(None, b"y" * 10) is a
    h.advance(1.0)
    policy.socket_drained(a, 4)  # part of the first
    assert not policy._rx_members[0].est.measured
    policy.socket_drained(a, 6)  # the rest of it
    assert policy._rx_members[0].est.est == 2.0
    policy.socket_drained(a, 10)
    assert not policy._rx_members[0].outstanding


def test_closed_socket_index_reused() -> None:
    h, policy = harnessed(seed=0, initial=0.0)
    a, _ = h.sockets(2)
    policy._rx_members[0].est.sample(9.0, h.now, 10.0)
    h.close(a)
    newcomer = h.socket()
    assert newcomer.index == 0
    assert policy._rx_members[0].obj is newcomer
    assert estimate_of(policy, newcomer) == 0.0  # not the closed socket's 9 s
    assert sorted(m.obj.index for m in policy._rx.items) == [0, 1]


# ---------------------------------------------------------------------------
# transmit


def test_transmit_prefers_the_stream_that_writes_faster() -> None:
    h, _ = harnessed(seed=7)
    fast, slow = h.attach_many(2)
    sender = h.socket()
    counts: Counter[Any] = Counter()
    for _ in range(500):
        stream = h.send(sender, [b"m"])
        assert stream is not None
        counts[stream] += 1
        h.write(stream, 0.001 if stream is fast else 0.050)
        h.advance(0.001)
    assert counts[fast] > 0.95 * 500, counts
    # A spike on the fast one: acted on at once.
    assert h.send(sender, [b"m"]) is fast
    h.write(fast, 5.0)
    picks = [h.send(sender) for _ in range(20)]
    assert picks == [slow] * 20


def test_transmit_outstanding_groups_count() -> None:
    h, policy = harnessed(seed=8, initial=0.01)
    t0, t1 = h.attach_many(2)
    sender = h.socket()
    # Equal estimates: groups alternate as each one's outstanding grows.
    picks = [h.send(sender) for _ in range(10)]
    assert Counter(picks) == {t0: 5, t1: 5}
    assert len(policy._tx_members[0].outstanding) == 5
    h.write(t0)
    assert len(policy._tx_members[0].outstanding) == 4
    h.fail(t1)  # it is forgotten, and its 5 groups are picked for again: on t0
    assert 1 not in policy._tx_members
    assert len(policy._tx_members[0].outstanding) == 9
    assert [h.send(sender) for _ in range(3)] == [t0] * 3
    h.fail(t0)
    assert h.send(sender) is None


def test_a_withdrawn_group_is_no_longer_outstanding_and_no_sample() -> None:
    h, policy = harnessed(seed=9, initial=0.01)
    (t0,) = h.attach_many(1)
    sender = h.socket()
    for _ in range(3):
        h.send(sender)
    member = policy._tx_members[0]
    oldest = member.outstanding[0]
    before = member.est.est
    h.advance(5.0)
    policy.withdrawn(t0, sender, 1)  # the mux withdrew a stale group
    assert len(member.outstanding) == 2
    assert member.outstanding[0] == oldest  # the one being written keeps its age
    assert member.est.est == before  # no latency sample


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
    h = PolicyHarness(policy)  # the harness's clock is not the policy's
    h.sockets(2)
    (sock,) = h.read(None, [b"m"])
    now[0] += 0.25
    h.receive(sock)
    assert policy._rx_members[sock.index].est.est == 0.25


def test_nothing_to_pick() -> None:
    policy = PeakEwma(clock=lambda: 0.0)
    sock, _ = strangers()
    assert policy.pick_socket(None, b"m") is None
    assert policy.pick_stream(sock, [b"m"], 1) is None


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
