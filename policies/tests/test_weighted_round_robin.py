"""``weighted-round-robin``: shares follow weights, smoothly, newcomers fairly."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from kcm_policy_testkit import PARSER, attach_peers, frame, strangers
from trio_kcm_policies import WeightedRoundRobin

import trio_kcm
from trio_kcm.testing import PolicyHarness


def picks(h: PolicyHarness, count: int) -> list[int]:
    """``count`` picks, each received at once (nobody fills up)."""
    out = []
    for _ in range(count):
        (sock,) = h.read(None, [b"m"])
        h.receive(sock)
        out.append(sock.index)
    return out


def longest_run(sequence: list[int], cyclic: bool = False) -> dict[int, int]:
    if cyclic:
        sequence = sequence + sequence
    out: dict[int, int] = {}
    for item, group in itertools.groupby(sequence):
        out[item] = max(out.get(item, 0), len(list(group)))
    return out


def harnessed(weights: dict[int, float], n: int) -> tuple[PolicyHarness, list[trio_kcm.KCMSocket]]:
    h = PolicyHarness(WeightedRoundRobin(socket_weights=weights))
    return h, h.sockets(n)


# ---------------------------------------------------------------------------
# shares and smoothness


def test_five_one_one_is_interleaved_not_a_burst() -> None:
    h, _ = harnessed({0: 5}, 3)
    seq = picks(h, 21)
    assert "".join("abc"[i] for i in seq) == "abaacaa" * 3
    # Never more than three a's in a row, even across rounds (nginx's
    # sequence, a a b a c a a, has four across rounds; a list with a five
    # times, a a a a a b c, has five).
    assert longest_run(seq[:7], cyclic=True) == {0: 3, 1: 1, 2: 1}


def test_equal_weights_are_plain_round_robin() -> None:
    h, _ = harnessed({}, 4)
    assert picks(h, 12) == [0, 1, 2, 3] * 3


@pytest.mark.parametrize(
    "weights",
    [[1, 2], [3, 1, 1], [10, 1], [1, 1, 1, 7], [2.5, 1.0, 0.5], [100, 1, 1]],
)
def test_each_member_within_one_pick_of_its_share_at_every_point(weights: list[float]) -> None:
    h, _ = harnessed(dict(enumerate(weights)), len(weights))
    total = sum(weights)
    counts = Counter[int]()
    for t, index in enumerate(picks(h, 2000), start=1):
        counts[index] += 1
        for i, w in enumerate(weights):
            assert abs(counts[i] - t * w / total) < 1.0, (t, i, counts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8))
def test_property_integer_weights_exact_per_round_and_smooth(weights: list[int]) -> None:
    h, _ = harnessed(dict(enumerate(weights)), len(weights))
    total = sum(weights)
    seq = picks(h, 3 * total)
    # Each round of W picks gives each member exactly its weight.
    for r in range(3):
        assert Counter(seq[r * total : (r + 1) * total]) == {i: w for i, w in enumerate(weights)}
    # Any window of L picks gives member i within 2 of L * w / W: no bursts.
    for length in {1, 2, 3, total // 2, total}:
        if length < 1:
            continue
        for start in range(len(seq) - length + 1):
            window = Counter(seq[start : start + length])
            for i, w in enumerate(weights):
                assert abs(window[i] - length * w / total) < 2.0, (start, length, i)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(0.1, 20.0), min_size=2, max_size=6),
    st.lists(st.tuples(st.integers(0, 5), st.integers(1, 40)), max_size=12),
)
def test_property_shares_hold_between_membership_changes(
    weights: list[float], changes: list[tuple[int, int]]
) -> None:
    """Toggle a member (full or disabled, then back), then run a while: in
    every stretch of fixed membership each member gets its share within 2."""
    n = len(weights)
    h, pool = harnessed(dict(enumerate(weights)), n)
    for who, run in [(None, 30), *changes]:
        if who is not None and who < n:
            if pool[who] in h.receive_candidates:
                h.disable_receive(pool[who])
            else:
                h.enable_receive(pool[who])
        live = [s.index for s in h.receive_candidates]
        if not live:
            assert h.rx_policy.pick_socket(None, b"m") is None  # (the mux would not ask)
            continue
        total = sum(weights[i] for i in live)
        counts = Counter[int]()
        for t, index in enumerate(picks(h, run), start=1):
            assert index in live
            counts[index] += 1
            for i in live:
                assert abs(counts[i] - t * weights[i] / total) < 2.0, (t, i, counts)


# ---------------------------------------------------------------------------
# joining and coming back


def test_a_newcomer_joins_now_no_burst_no_wait() -> None:
    h, _ = harnessed({}, 3)
    picks(h, 1000)  # long history: virtual time far on
    assert h.socket().index == 3
    seq = picks(h, 40)
    # Its share from now on (a quarter), spread out: not 1000 picks of
    # "catching up", and not starved until the others' counts fall back.
    assert 3 in seq[:4]
    assert Counter(seq)[3] == 10
    assert longest_run(seq)[3] == 1


def test_a_heavy_newcomer_gets_its_share_smoothly() -> None:
    h, _ = harnessed({3: 6}, 3)
    picks(h, 999)
    h.socket()
    seq = picks(h, 90)
    assert Counter(seq) == {3: 60, 0: 10, 1: 10, 2: 10}
    assert longest_run(seq)[3] <= 3


def test_a_socket_back_from_full_is_not_rushed() -> None:
    h = PolicyHarness(WeightedRoundRobin())
    slow = h.socket(receive_buffer_size=2)
    fast = h.socket()
    seq = []
    for _ in range(4):
        (sock,) = h.read(None, [b"m"])
        seq.append(sock.index)
        if sock is fast:
            h.receive(fast)
    assert seq == [0, 1, 0, 1]
    assert slow not in h.receive_candidates  # full: everything goes to fast meanwhile
    assert picks(h, 50) == [1] * 50
    h.receive(slow, 2)  # back: no burst of 50 to make up for the wait
    assert picks(h, 10) in ([0, 1] * 5, [1, 0] * 5)


def test_weights_by_function_are_asked_each_time_a_socket_comes_back() -> None:
    weights = {0: 1.0, 1: 1.0}
    asked: list[int] = []

    def weight(sock: Any) -> float:
        asked.append(sock.index)
        return weights[sock.index]

    h = PolicyHarness(WeightedRoundRobin(socket_weights=weight))
    a, _ = h.sockets(2)
    assert Counter(picks(h, 10)) == {0: 5, 1: 5}
    weights[0] = 4.0
    h.disable_receive(a)
    h.enable_receive(a)
    assert asked == [0, 1, 0]
    assert Counter(picks(h, 50)) == {0: 40, 1: 10}


def test_heaps_stay_small_under_churn() -> None:
    policy = WeightedRoundRobin(socket_weights={0: 3, 2: 2})
    h = PolicyHarness(policy)
    pool = h.sockets(4)
    for k in range(20_000):
        victim = pool[k % 4]
        if k % 3 == 0:
            if victim in h.receive_candidates:
                h.disable_receive(victim)
            else:
                h.enable_receive(victim)
        if h.receive_candidates:
            picks(h, 1)
        else:
            assert policy.pick_socket(None, b"m") is None  # (the mux would not ask)
        assert policy._rx.heap_size() <= 2 * 4 + 32 + 1


def test_heaps_stay_small_when_a_socket_flaps_between_picks() -> None:
    # Full, room, full, room... with no pick in between: each return pushes
    # an entry, and the stale ones must not pile up.
    policy = WeightedRoundRobin()
    h = PolicyHarness(policy)
    a, _ = h.sockets(2)
    for _ in range(10_000):
        h.disable_receive(a)
        h.enable_receive(a)
    assert policy._rx.heap_size() <= 2 * 2 + 32 + 1
    assert Counter(picks(h, 10)) == {0: 5, 1: 5}


# ---------------------------------------------------------------------------
# transmit


def test_transmit_weights_and_removal() -> None:
    h = PolicyHarness(WeightedRoundRobin(stream_weights={1: 2}))
    t0, t1, t2 = h.attach_many(3)
    sender = h.socket()
    seq = []
    for _ in range(40):
        stream = h.send(sender, [b"m"])
        assert stream is not None
        seq.append(stream.index)
        h.write(stream)
    assert Counter(seq) == {0: 10, 1: 20, 2: 10}
    assert longest_run(seq)[1] <= 2
    h.fail(t1)  # nothing queued on it
    assert Counter(h.send(sender) for _ in range(10)) == {t0: 5, t2: 5}
    # A new stream with index 1 is new: it gets its weight, not t1's past.
    new = h.attach()
    assert new.index == 1
    got = Counter(h.send(sender) for _ in range(40))
    assert got == {t0: 10, new: 20, t2: 10}
    # A failed stream's groups are picked for again, by weight, on the others.
    h.fail(t0)
    assert (len(h.queued(new)), len(h.queued(t2))) == (20 + 10, 15 + 5)
    h.fail(new)
    h.fail(t2)
    assert h.send(sender) is None


# ---------------------------------------------------------------------------
# options


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"socket_weights\[0\]= must be finite and > 0"):
        WeightedRoundRobin(socket_weights={0: 0})
    with pytest.raises(ValueError, match="must be finite and > 0"):
        WeightedRoundRobin(stream_weights={2: -1.5})
    with pytest.raises(ValueError, match="must be finite and > 0"):
        WeightedRoundRobin(stream_weights={2: math.nan})
    with pytest.raises(TypeError, match=r"stream_weights\[1\]= must be a number"):
        WeightedRoundRobin(stream_weights={1: "heavy"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="keys must be indices"):
        WeightedRoundRobin(socket_weights={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="keys must be indices"):
        WeightedRoundRobin(socket_weights={-1: 1})
    with pytest.raises(TypeError, match="a mapping of index to weight, a function, or None"):
        WeightedRoundRobin(socket_weights=[1, 2])  # type: ignore[arg-type]
    # A weight function is checked on each answer; a bad one is a bug of the
    # policy's caller, raised from the event (and out of open_mux).
    h = PolicyHarness(WeightedRoundRobin(socket_weights=lambda sock: 0.0))
    with pytest.raises(ValueError, match=r"socket_weights\(.*\) result= must be finite and > 0"):
        h.socket()
    with pytest.raises(trio_kcm.PolicyLoadError) as info:
        trio_kcm.load_policy("weighted-round-robin", weights={0: 2})
    assert isinstance(info.value.__cause__, TypeError)


def test_nothing_to_pick() -> None:
    policy = WeightedRoundRobin()
    sock, _ = strangers()
    assert policy.pick_socket(None, b"m") is None
    assert policy.pick_stream(sock, [b"m"], 1) is None


# ---------------------------------------------------------------------------
# in a real mux, loaded by name


async def test_by_name_in_a_real_mux_receive_and_transmit_follow_weights() -> None:
    policy = trio_kcm.load_policy(
        "weighted-round-robin", socket_weights={0: 3}, stream_weights={1: 2}
    )
    assert type(policy) is WeightedRoundRobin and policy.name == "weighted-round-robin"
    async with trio_kcm.open_mux(parser=PARSER, policy=policy) as mux:
        peers = attach_peers(mux, 2)
        heavy, light = mux.socket(), mux.socket()
        sent = [frame(b"in %03d" % i) for i in range(400)]
        await peers[0][1].send_all(b"".join(sent))
        await trio.testing.wait_all_tasks_blocked()
        got_heavy = heavy.receive_many_nowait(1000)
        got_light = light.receive_many_nowait(1000)
        assert (len(got_heavy), len(got_light)) == (300, 100)
        assert sorted(got_heavy + got_light) == sorted(sent)
        # Smooth: the light socket's messages are spread, one in every four.
        where = [0 if m in set(got_heavy) else 1 for m in sent]
        assert longest_run(where)[0] <= 3

        out = [frame(b"out %03d" % i) for i in range(90)]
        for m in out:
            await heavy.send(m)
        await trio.testing.wait_all_tasks_blocked()
        counts = [h.statistics().tx_msgs for h, _ in peers]
        assert counts == [30, 60]
        received = []
        for (_, peer), n in zip(peers, counts, strict=True):
            received += await peer.read_frames(n)
        assert sorted(received) == sorted(out)
