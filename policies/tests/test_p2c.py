"""``p2c``: two random candidates, never the fuller of the two."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from kcm_policy_testkit import PARSER, attach_peers, frame
from trio_kcm_policies import PowerOfTwoChoices
from trio_kcm_policies._common import Candidates

import trio_kcm
from trio_kcm.testing import PolicyHarness


class RecordingRandom(random.Random):
    """A ``random.Random`` that remembers what each ``randrange`` returned."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.calls: list[tuple[int, int]] = []

    def randrange(self, *args: Any, **kwargs: Any) -> int:
        value = super().randrange(*args, **kwargs)
        self.calls.append((args[0], value))
        return value


def sampled(items: list[Any], calls: list[tuple[int, int]]) -> tuple[Any, Any]:
    """The two candidates a pick drew, from its two ``randrange`` calls.

    ``Candidates.two`` documents the draw: a position uniform over ``n``, then
    one uniform over the ``n - 1`` others.
    """
    (n1, i), (n2, j) = calls
    assert (n1, n2) == (len(items), len(items) - 1)
    if j >= i:
        j += 1
    return items[i], items[j]


# ---------------------------------------------------------------------------
# the candidate list


def test_candidates_swap_remove_keeps_a_dense_list() -> None:
    c: Candidates[str] = Candidates()
    for x in "abcde":
        c.add(x)
    c.add("a")  # already there
    assert c.items == list("abcde")
    c.discard("b")  # the last fills the hole
    assert c.items == list("aecd")
    c.discard("d")
    c.discard("zz")
    assert c.items == list("aec")
    assert "b" not in c and "e" in c and len(c) == 3
    for x in "aec":
        c.discard(x)
    assert c.items == [] and c.two(random.Random(0)) is None
    c.add("q")
    assert c.two(random.Random(0)) == ("q", "q")


def test_candidates_two_is_a_uniform_pair_of_distinct_members() -> None:
    c: Candidates[int] = Candidates()
    for x in range(4):
        c.add(x)
    rng = random.Random(5)
    pairs = Counter()
    for _ in range(12_000):
        pair = c.two(rng)
        assert pair is not None
        a, b = pair
        assert a != b
        pairs[a, b] += 1
    # 12 ordered pairs, 1000 each expected.
    assert len(pairs) == 12
    assert all(800 < n < 1200 for n in pairs.values()), pairs


# ---------------------------------------------------------------------------
# receive


def test_two_sockets_always_the_emptier() -> None:
    # With two candidates both are drawn every time: p2c is exact.
    h = PolicyHarness(PowerOfTwoChoices(seed=1))
    a, b = h.sockets(2)
    sizes = [random.Random(2).randint(1, 50) for _ in range(200)]
    for size in sizes:
        loads = (a.rx_queued_bytes, b.rx_queued_bytes)
        (sock,) = h.read(None, [b"x" * size])
        if loads[0] != loads[1]:
            assert sock is (a if loads[0] < loads[1] else b)
    assert abs(a.rx_queued_bytes - b.rx_queued_bytes) <= 50


def test_one_socket_and_none() -> None:
    policy = PowerOfTwoChoices(seed=0)
    assert policy.pick_socket(None, b"m") is None
    h = PolicyHarness(policy)
    a = h.socket()
    assert h.read(None, [b"m"]) == [a]
    h.disable_receive(a)
    assert policy.pick_socket(None, b"m") is None
    assert h.held == [b"m"]  # its message moved, and no socket can take it


_rx_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 9), st.just(0)),
        st.tuples(st.just("disable"), st.integers(0, 9), st.just(0)),
        st.tuples(st.just("pick"), st.integers(1, 30), st.integers(1, 8)),
        st.tuples(st.just("receive"), st.integers(0, 9), st.integers(1, 5)),
    ),
    max_size=100,
)


@settings(max_examples=200, deadline=None)
@given(_rx_ops, st.integers(0, 2**32))
def test_receive_property_never_the_fuller_of_the_two_drawn(ops: list[Any], seed: int) -> None:
    rng = RecordingRandom(seed)
    policy = PowerOfTwoChoices(rng=rng)
    h = PolicyHarness(policy)
    pool = h.sockets(10, receive_buffer_size=60)
    for sock in pool:
        h.disable_receive(sock)  # no candidate to begin with
    for kind, i, n in ops:
        if kind == "add":
            h.enable_receive(pool[i])
        elif kind == "disable":
            h.disable_receive(pool[i])
        elif kind == "receive":
            h.receive(pool[i], n)
        else:
            for _ in range(n):
                items = list(policy._rx.items)
                # It follows the events exactly.
                assert set(items) == set(h.receive_candidates)
                loads = {s: s.rx_queued_bytes for s in items}
                rng.calls.clear()
                picked = h.read(None, [b"x" * i])
                if not items:
                    assert picked == [] and rng.calls == []  # not asked: it waits
                    continue
                (sock,) = picked
                if len(items) == 1:
                    assert rng.calls == [] and sock is items[0]
                    continue
                first, second = sampled(items, rng.calls)
                assert sock in (first, second)
                other = second if sock is first else first
                assert loads[sock] <= loads[other], (sock, other)


def test_receive_spreads_load_better_than_one_random_choice() -> None:
    # The defining effect: many sockets, messages arriving and some received
    # at random; the fullest queue stays close to the mean.
    rng = random.Random(7)
    h = PolicyHarness(PowerOfTwoChoices(seed=3))
    pool = h.sockets(50)
    for _ in range(20_000):
        h.read(None, [b"x"])
        if rng.random() < 0.45:
            h.receive(rng.choice(pool))
    loads = [s.rx_queued_bytes for s in pool]
    mean = sum(loads) / len(loads)
    # One random choice would leave a spread of several sqrt(mean); p2c keeps
    # the maximum within a few messages of the mean.
    assert max(loads) - mean < 8, (max(loads), mean)


def test_same_seed_same_picks() -> None:
    def run(policy: PowerOfTwoChoices) -> list[int]:
        h = PolicyHarness(policy)
        pool = h.sockets(8)
        out = []
        for k in range(300):
            (sock,) = h.read(None, [b"x" * (k % 7 + 1)])
            out.append(sock.index)
            if k % 3 == 0:
                h.receive(pool[k % 8], 2)
        return out

    assert run(PowerOfTwoChoices(seed=42)) == run(PowerOfTwoChoices(seed=42))
    assert run(PowerOfTwoChoices(seed=42)) == run(PowerOfTwoChoices(rng=random.Random(42)))
    assert run(PowerOfTwoChoices(seed=42)) != run(PowerOfTwoChoices(seed=43))


# ---------------------------------------------------------------------------
# transmit


_tx_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 20)),
        st.tuples(st.just("pick"), st.integers(1, 40)),
        st.tuples(st.just("write"), st.integers(0, 20)),
    ),
    max_size=100,
)


@settings(max_examples=200, deadline=None)
@given(_tx_ops, st.integers(0, 2**32))
def test_transmit_property_never_the_fuller_of_the_two_drawn(ops: list[Any], seed: int) -> None:
    rng = RecordingRandom(seed)
    policy = PowerOfTwoChoices(rng=rng)
    h = PolicyHarness(policy)
    sender = h.socket()
    for kind, i in ops:
        live = h.transmit_candidates
        if kind == "add":
            h.attach()
        elif kind == "remove":
            if live:
                h.fail(live[i % len(live)])  # its groups are picked for again
        elif kind == "write":
            busy = [t for t in live if h.queued(t)]
            if busy:
                h.write(busy[i % len(busy)])
        else:
            items = list(policy._tx.items)
            assert set(items) == set(live)
            loads = {t: t.tx_queued_bytes for t in live}
            rng.calls.clear()
            stream = h.send(sender, [b"y" * i])
            if len(items) < 2:
                assert stream is (items[0] if items else None)
                continue
            first, second = sampled(items, rng.calls)
            assert stream in (first, second)
            other = second if stream is first else first
            assert loads[stream] <= loads[other]


def test_transmit_two_streams_the_less_loaded() -> None:
    h = PolicyHarness(PowerOfTwoChoices(seed=9))
    t0, t1 = h.attach_many(2)
    x = h.socket()
    big = h.send(x, [b"x" * 100])
    assert big in (t0, t1)
    small = t1 if big is t0 else t0
    for _ in range(9):
        assert h.send(x, [b"x" * 10]) is small  # 10..90 < 100
    h.write(big)
    assert h.send(x, [b"x"]) is big
    # big fails: its group is picked for again, on small.
    h.fail(big)
    assert len(h.queued(small)) == 10
    assert h.send(x) is small
    h.fail(small)
    assert h.send(x) is None


# ---------------------------------------------------------------------------
# options


def test_options_are_checked() -> None:
    with pytest.raises(TypeError, match="seed= or rng=, not both"):
        PowerOfTwoChoices(seed=1, rng=random.Random(1))
    with pytest.raises(TypeError, match=r"rng= must be a random\.Random"):
        PowerOfTwoChoices(rng=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed= must be"):
        PowerOfTwoChoices(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed= must be"):
        PowerOfTwoChoices(seed=True)
    with pytest.raises(TypeError):
        PowerOfTwoChoices(1)  # type: ignore[misc]
    PowerOfTwoChoices(seed="text")
    # Through the registry, a bad option is a PolicyLoadError with the cause.
    with pytest.raises(trio_kcm.PolicyLoadError, match="p2c") as info:
        trio_kcm.load_policy("p2c", seed=1, rng=random.Random())
    assert isinstance(info.value.__cause__, TypeError)


# ---------------------------------------------------------------------------
# in a real mux, loaded by name


async def test_p2c_by_name_in_a_real_mux_delivers_everything_once() -> None:
    policy = trio_kcm.load_policy("p2c", seed=11)
    assert type(policy) is PowerOfTwoChoices and policy.name == "p2c"
    async with trio_kcm.open_mux(parser=PARSER, policy="p2c") as mux:
        assert type(mux.rx_policy) is PowerOfTwoChoices
        assert mux.tx_policy is mux.rx_policy
        peers = attach_peers(mux, 3)
        sockets = [mux.socket() for _ in range(5)]
        sent = []
        for k, (_, peer) in enumerate(peers):
            batch = [frame(b"from %d: %03d" % (k, i) + b"." * (i % 13)) for i in range(150)]
            sent += batch
            await peer.send_all(b"".join(batch))
        await trio.testing.wait_all_tasks_blocked()
        got = [m for s in sockets for m in s.receive_many_nowait(10_000)]
        assert sorted(got) == sorted(sent)  # each whole, each once
        counts = [s.statistics().rx_msgs for s in sockets]
        assert min(counts) > 0, counts

        # Transmit: every group once, whole, on some stream.
        out = [frame(b"out %03d" % i + b"-" * (i % 17)) for i in range(120)]
        for i, message in enumerate(out):
            await sockets[i % 5].send(message)
        await trio.testing.wait_all_tasks_blocked()
        written = [h.statistics().tx_msgs for h, _ in peers]
        assert sum(written) == 120 and min(written) > 0, written
        received = []
        for (_, peer), n in zip(peers, written, strict=True):
            received += await peer.read_frames(n)
        assert sorted(received) == sorted(out)


async def test_p2c_in_a_real_mux_avoids_the_socket_that_is_behind() -> None:
    async with trio_kcm.open_mux(parser=PARSER, policy=trio_kcm.load_policy("p2c", seed=5)) as mux:
        ((_, peer),) = attach_peers(mux, 1)
        behind, keeping_up = mux.socket(), mux.socket()
        # Two sockets: both are drawn every time, so the one that never
        # receives gets a message only while it is not fuller.
        for i in range(40):
            await peer.send_all(frame(b"%02d" % i))
            await trio.testing.wait_all_tasks_blocked()
            if keeping_up.statistics().rx_queued_msgs:
                keeping_up.receive_many_nowait(100)
        # Ties (both empty) go either way; once it holds a message, never again.
        assert behind.statistics().rx_queued_msgs == 1
        assert keeping_up.statistics().rx_msgs == 39
