"""``consistent-hash``: key affinity, minimal movement, full sockets keep their keys."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from kcm_policy_testkit import PARSER, attach_peers, frame, strangers
from trio_kcm_policies import ConsistentHash
from trio_kcm_policies.consistent_hash import hash_key

import trio_kcm
from trio_kcm.testing import PolicyHarness

KEYS = [b"key-%05d" % i for i in range(6000)]


def owners(policy: ConsistentHash, keys: list[bytes] = KEYS) -> dict[bytes, int | None]:
    """Where each key goes now (a pick has no effect but the delivery it means)."""
    out: dict[bytes, int | None] = {}
    for key in keys:
        sock = policy.pick_socket(None, key)
        out[key] = None if sock is None else sock.index
    return out


def harnessed(
    n: int, receive_buffer_size: int = 1 << 20, **options: Any
) -> tuple[PolicyHarness, ConsistentHash, list[trio_kcm.KCMSocket]]:
    """A consistent-hash policy in a harness, with ``n`` sockets."""
    policy = ConsistentHash(**options)
    h = PolicyHarness(policy)
    return h, policy, h.sockets(n, receive_buffer_size=receive_buffer_size)


def with_sockets(indices: list[int], **options: Any) -> ConsistentHash:
    """A policy whose receive candidates are the sockets ``indices``, added in that order.

    A harness numbers its sockets in turn, so all up to the highest index are
    made; then each is disabled, and those in ``indices`` are enabled again,
    in that order.
    """
    h, policy, pool = harnessed(max(indices) + 1, **options)
    for sock in pool:
        h.disable_receive(sock)
    for i in indices:
        h.enable_receive(pool[i])
    return policy


def fill(h: PolicyHarness, sock: trio_kcm.KCMSocket) -> list[bytes]:
    """Read messages whose keys ``sock`` owns, one a read, until it is full; return them.

    They come on a stream of their own: nothing waits ahead of them.
    """
    policy = h.rx_policy
    stream = h.attach()
    own = (k for k in KEYS if policy.pick_socket(None, k) is sock)
    delivered = []
    while sock in h.receive_candidates:
        key = next(own, None)
        assert key is not None, "not enough keys to fill the socket"
        assert h.read(stream, [key]) == [sock]
        delivered.append(key)
    return delivered


def queued(h: PolicyHarness, socks: list[trio_kcm.KCMSocket]) -> dict[bytes, int]:
    """Take every message queued on ``socks``: where each one was."""
    return {m: s.index for s in socks for m in h.receive(s, 1 << 20)}


# ---------------------------------------------------------------------------
# placement


def test_key_hash_is_stable_across_processes_and_types() -> None:
    # BLAKE2b, not the per-process salted hash(): pinned.
    assert hash_key(b"trio-kcm") == 9809028793077561052
    assert hash_key("7") == hash_key(7) == hash_key(b"7") == 16667848380713045890
    assert hash_key(bytearray(b"ab")) == hash_key(memoryview(b"ab")) == hash_key("ab")
    with pytest.raises(TypeError, match="key must be bytes, str or int, not bool"):
        hash_key(True)
    with pytest.raises(TypeError, match="not float"):
        hash_key(1.0)  # type: ignore[arg-type]


def test_same_key_same_socket_whatever_the_order_of_arrival() -> None:
    a = with_sockets([0, 1, 2, 3, 4, 5])
    b = with_sockets([5, 3, 1, 0, 4, 2])
    assert owners(a) == owners(b)
    # And it does not change with use.
    assert owners(a) == owners(a)


def test_keys_are_spread_evenly() -> None:
    n = 8
    share = Counter(owners(with_sockets(list(range(n)))).values())
    assert set(share) == set(range(n))
    expected = len(KEYS) / n
    for count in share.values():
        assert 0.7 * expected < count < 1.3 * expected, share


@pytest.mark.parametrize("n", [2, 4, 9])
def test_adding_a_socket_moves_about_one_nth_of_keys_all_to_it(n: int) -> None:
    h, policy, _ = harnessed(n)
    before = owners(policy)
    assert h.socket().index == n
    after = owners(policy)
    moved = [k for k in KEYS if before[k] != after[k]]
    # Every key that moved went to the newcomer: nobody else's keys moved.
    assert all(after[k] == n for k in moved)
    expected = len(KEYS) / (n + 1)
    assert 0.6 * expected < len(moved) < 1.4 * expected, (len(moved), expected)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_removing_a_socket_moves_only_its_keys(n: int) -> None:
    h, policy, pool = harnessed(n)
    before = owners(policy)
    victim = pool[n // 2]
    h.disable_receive(victim)
    after = owners(policy)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert {before[k] for k in moved} == {victim.index}  # only the victim's keys
    assert all(after[k] != victim.index for k in KEYS)
    expected = len(KEYS) / n
    assert 0.6 * expected < len(moved) < 1.4 * expected, (len(moved), expected)
    # It comes back: it takes back exactly its own keys.
    h.enable_receive(victim)
    assert owners(policy) == before


# ---------------------------------------------------------------------------
# full, disabled and closed sockets


def test_a_full_socket_keeps_its_keys_and_holds_their_messages() -> None:
    h, policy, pool = harnessed(4, receive_buffer_size=60)
    before = owners(policy)
    full = pool[1]
    assert len(fill(h, full)) == 7  # 9 bytes each: 63 >= 60
    assert full not in h.receive_candidates  # the mux said socket_removed
    now = owners(policy)
    for key in KEYS:
        if before[key] == full.index:
            assert now[key] is None  # held: never handed to another socket
        else:
            assert now[key] == before[key]  # nobody else's keys moved
    # The mux holds the message, and the rest of the read with it (the stream
    # stops reading there) ...
    key = next(k for k in KEYS if before[k] == full.index)
    stream = h.attach()
    other_key = next(k for k in KEYS if before[k] == 0)
    assert h.read(stream, [other_key, key, other_key]) == [pool[0]]
    assert stream.statistics().rx_ready_msgs == 2
    # ... until the full socket's application has received half its buffer:
    # then its keys are its own again, and the stream goes on where it stopped.
    h.receive(full, 3)
    assert full not in h.receive_candidates  # 36 bytes: not yet
    h.receive(full, 1)
    assert full in h.receive_candidates
    assert owners(policy) == before
    assert h.read(stream, []) == [full, pool[0]]


def test_when_full_next_goes_round_the_ring_then_comes_back() -> None:
    h, policy, pool = harnessed(5, receive_buffer_size=60, when_full="next")
    before = owners(policy)
    full = pool[3]
    fill(h, full)
    now = owners(policy)
    # Its keys go where they would if it were not on the ring at all; the
    # others' stay.
    assert now == owners(with_sockets([0, 1, 2, 4]))
    assert all(now[k] == before[k] for k in KEYS if before[k] != full.index)
    # Two full: the walk skips both.
    second = pool[0]
    fill(h, second)
    assert owners(policy) == owners(with_sockets([1, 2, 4]))
    # Room again: everything back where it was.
    h.receive(full, 100)
    h.receive(second, 100)
    assert owners(policy) == before


def test_disabled_socket_leaves_the_ring_even_when_full() -> None:
    h, policy, pool = harnessed(4, receive_buffer_size=60)
    before = owners(policy)
    victim = pool[2]
    filled = fill(h, victim)
    h.disable_receive(victim)  # full, then disabled: no socket_removed
    assert victim.index not in policy._rx_ring.members  # at once, not at its next pick
    without = with_sockets([0, 1, 3])
    assert owners(policy) == owners(without)
    # Its messages moved, each to its key's new owner.
    relocated = queued(h, pool)
    assert sorted(relocated) == sorted(filled)
    for m, index in relocated.items():
        assert without.pick_socket(None, m).index == index  # type: ignore[union-attr]
    h.enable_receive(victim)
    assert owners(policy) == before


def test_a_socket_closed_while_full_does_not_hold_its_keys_forever() -> None:
    # The mux says socket_removed when it fills up, and nothing more when it
    # closes, but socket_drained (its queue moves away).
    h, policy, pool = harnessed(3, receive_buffer_size=60)
    before = owners(policy)
    victim = pool[0]
    moved = fill(h, victim)
    h.close(victim)
    assert not h.held  # its messages found a home ...
    assert sorted(queued(h, pool[1:])) == sorted(moved)
    # ... and its keys are the others' now: nothing waits for a closed socket.
    assert owners(policy) == owners(with_sockets([1, 2]))
    # A new socket gets the lowest free index, 0: it takes the same arcs.
    newcomer = h.socket(receive_buffer_size=60)
    assert newcomer.index == 0
    assert owners(policy) == before
    assert policy.pick_socket(None, moved[0]) is newcomer


def test_index_reused_while_the_old_socket_was_never_evicted() -> None:
    # Closed while full, and no pick happened for its keys before the index
    # came back -- as in the mux when no socket could take its messages then:
    # the newcomer replaces it, same arcs, and gets the messages that waited.
    h, policy, pool = harnessed(3, receive_buffer_size=60)
    before = owners(policy)
    for sock in pool:
        fill(h, sock)  # full, all of them: they keep their keys
    assert h.receive_candidates == ()
    h.close(pool[1])
    assert len(h.held) == 7  # nobody to pick for
    newcomer = h.socket()
    assert newcomer.index == 1
    assert h.held == []
    assert newcomer.statistics().rx_queued_msgs == 7
    h.receive(pool[0], 100)
    h.receive(pool[2], 100)
    assert owners(policy) == before
    assert policy.pick_socket(None, next(k for k in KEYS if before[k] == 1)) is newcomer


# ---------------------------------------------------------------------------
# the rules, against a brute-force reference


def reference_points(indices: set[int], replicas: int) -> list[tuple[int, int]]:
    """The documented placement: BLAKE2b of "index-replica", personalised."""
    points = []
    for i in indices:
        for r in range(replicas):
            digest = hashlib.blake2b(b"%d-%d" % (i, r), digest_size=8, person=b"trio-kcm-ring")
            points.append((int.from_bytes(digest.digest(), "big"), i))
    return sorted(points)


def reference_owner(
    key: bytes, members: set[int], live: set[int], replicas: int, when_full: str
) -> int | None:
    points = reference_points(members, replicas)
    h = hash_key(key)
    start = next((k for k, (p, _) in enumerate(points) if p >= h), 0)
    order = [points[(start + k) % len(points)][1] for k in range(len(points))]
    if order[0] in live:
        return order[0]
    if when_full == "wait":
        return None
    return next(i for i in order if i in live)


_ops = st.lists(
    st.tuples(st.sampled_from(["add", "disable", "close", "fill", "receive"]), st.integers(0, 5)),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(_ops, st.sampled_from(["wait", "next"]))
def test_property_picks_follow_the_ring(ops: list[tuple[str, int]], when_full: str) -> None:
    replicas = 7
    policy = ConsistentHash(replicas=replicas, when_full=when_full)
    h = PolicyHarness(policy)
    sockets: dict[int, trio_kcm.KCMSocket] = {}  # the open ones, by index
    keys = KEYS[:60]
    previous: dict[bytes, int | None] | None = None
    previous_members: set[int] = set()
    for kind, i in ops:
        sock = sockets.get(i)
        if kind == "add":
            if sock is None:  # a new socket: the lowest free index
                sock = h.socket(receive_buffer_size=3)
                sockets[sock.index] = sock
            else:
                h.enable_receive(sock)
        elif sock is None:
            pass
        elif kind == "disable":
            h.disable_receive(sock)
        elif kind == "close":
            h.close(sockets.pop(i))
        elif kind == "receive":
            h.receive(sock, 10)
        elif sock in h.receive_candidates:  # fill it, with a key of its own
            fill(h, sock)
        members = {s.index for s in sockets.values() if s.receive_enabled}
        live = {s.index for s in h.receive_candidates}
        assert live <= members
        if not live:
            continue
        now = owners(policy, keys)
        for key in keys:
            assert now[key] == reference_owner(key, members, live, replicas, when_full)
        if previous is not None and when_full == "wait":
            # A key that changed hands: its old owner left the ring, or its new
            # one joined it.  (Full sockets are still members: None is theirs.)
            for key in keys:
                old, new = previous[key], now[key]
                if old is not None and new is not None and old != new:
                    assert old not in members or new not in previous_members, key
        previous = now
        previous_members = members


# ---------------------------------------------------------------------------
# transmit


def test_transmit_same_key_same_stream_and_minimal_movement() -> None:
    h = PolicyHarness(ConsistentHash())
    pool = h.attach_many(5)
    sender = h.socket(send_buffer_size=1 << 20)

    def where() -> dict[bytes, int]:
        out = {}
        for key in KEYS[:3000]:
            stream = h.send(sender, [key, b"rest of the batch"])
            assert stream is not None
            out[key] = stream.index
        return out

    before = where()
    assert where() == before
    assert len(set(before.values())) == 5
    h.fail(pool[2])
    after = where()
    moved = [k for k in before if before[k] != after[k]]
    assert {before[k] for k in moved} == {2}
    assert 0.6 * 600 < len(moved) < 1.4 * 600
    # The failed stream's groups were picked for again: each is on its key's
    # stream now, as new ones are.
    for stream in h.transmit_candidates:
        assert {after[group[0]] for group in h.queued(stream)} == {stream.index}
    new = h.attach()
    assert new.index == 2  # a new stream given the same index: the same keys
    assert where() == before
    for stream in h.transmit_candidates:
        h.fail(stream)
    assert h.send(sender) is None


def test_transmit_by_socket_keeps_each_socket_on_one_stream() -> None:
    h = PolicyHarness(ConsistentHash(tx_key="socket"))
    h.attach_many(4)
    senders = h.sockets(40)
    chosen = {}
    for sender in senders:
        picks = {h.send(sender, [b"message %d" % k]) for k in range(20)}
        assert len(picks) == 1  # whatever the messages
        chosen[sender.index] = picks.pop()
    assert len(set(chosen.values())) == 4


# ---------------------------------------------------------------------------
# keys and options


def test_key_options() -> None:
    by_slice = with_sockets(list(range(6)), key=slice(4, 8))
    by_function = with_sockets(list(range(6)), key=lambda m: m[4:8].decode())
    messages = [frame(b"k%03d and then a payload %d" % (i % 9, i)) for i in range(300)]
    # Same key, same socket, whatever follows it.
    for policy in (by_slice, by_function):
        seen: dict[bytes, Any] = {}
        for m in messages:
            sock = policy.pick_socket(None, m)
            assert seen.setdefault(m[4:8], sock) is sock
    # A slice and a function giving the same key agree (str is hashed as UTF-8).
    for m in messages:
        assert by_slice.pick_socket(None, m) is not None
        assert (
            by_slice.pick_socket(None, m).index  # type: ignore[union-attr]
            == by_function.pick_socket(None, m).index  # type: ignore[union-attr]
        )
    # The default key is the whole message.
    default = with_sockets(list(range(6)))
    explicit = with_sockets(list(range(6)), key=lambda m: m)
    assert owners(default) == owners(explicit)


def test_options_are_checked() -> None:
    with pytest.raises(TypeError, match="key= must be"):
        ConsistentHash(key=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="replicas= must be an int"):
        ConsistentHash(replicas=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replicas= must be 1 to 10000"):
        ConsistentHash(replicas=0)
    with pytest.raises(ValueError, match="when_full= must be 'wait' or 'next'"):
        ConsistentHash(when_full="drop")
    with pytest.raises(ValueError, match="tx_key= must be 'message' or 'socket'"):
        ConsistentHash(tx_key="stream")
    policy = with_sockets([0], key=lambda m: 1.5)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="check the key= function"):
        policy.pick_socket(None, b"m")
    with pytest.raises(trio_kcm.PolicyLoadError) as info:
        trio_kcm.load_policy("consistent-hash", when_full="later")
    assert isinstance(info.value.__cause__, ValueError)


def test_nothing_to_pick() -> None:
    policy = ConsistentHash()
    sock, _ = strangers()
    assert policy.pick_socket(None, b"m") is None
    assert policy.pick_stream(sock, [b"m"], 1) is None


# ---------------------------------------------------------------------------
# in a real mux, loaded by name


def key_of(message: bytes) -> bytes:
    return message[4:8]


async def test_by_name_in_a_real_mux_each_key_to_one_socket() -> None:
    policy = trio_kcm.load_policy("consistent-hash", key=slice(4, 8))
    assert type(policy) is ConsistentHash and policy.name == "consistent-hash"
    async with trio_kcm.open_mux(parser=PARSER, policy=policy) as mux:
        peers = attach_peers(mux, 3)
        sockets = [mux.socket() for _ in range(4)]
        sent = []
        for r in range(5):
            for k, (_, peer) in enumerate(peers):
                batch = [frame(b"k%03d r%d s%d i%02d" % (i % 12, r, k, i)) for i in range(30)]
                sent += batch
                await peer.send_all(b"".join(batch))
        await trio.testing.wait_all_tasks_blocked()
        got = {s.index: s.receive_many_nowait(10_000) for s in sockets}
        assert sorted(m for ms in got.values() for m in ms) == sorted(sent)
        home: dict[bytes, int] = {}
        for index, messages in got.items():
            for m in messages:
                assert home.setdefault(key_of(m), index) == index, key_of(m)
        assert len(home) == 12
        # The placement depends on indices only: a policy that never saw this
        # mux agrees.
        offline = with_sockets([0, 1, 2, 3], key=slice(4, 8))
        for key, index in home.items():
            assert offline.pick_socket(None, frame(key)).index == index  # type: ignore[union-attr]

        # Transmit: the same key on the same stream.
        out = [frame(b"k%03d out %02d" % (i % 7, i)) for i in range(70)]
        for i, m in enumerate(out):
            await sockets[i % 4].send(m)
        await trio.testing.wait_all_tasks_blocked()
        counts = [h.statistics().tx_msgs for h, _ in peers]
        assert sum(counts) == 70
        stream_of: dict[bytes, int] = {}
        for k, ((_, peer), n) in enumerate(zip(peers, counts, strict=True)):
            for m in await peer.read_frames(n):
                assert stream_of.setdefault(key_of(m), k) == k
        assert sorted(stream_of) == sorted({key_of(m) for m in out})


def owned_key(owner_index: int, others: list[int], not_owner: bool = False) -> bytes:
    """A key (4 bytes) that socket ``owner_index`` owns among ``others``."""
    offline = with_sockets(sorted({owner_index, *others}), key=slice(4, 8))
    for i in range(10_000):
        key = b"%04d" % i
        sock = offline.pick_socket(None, frame(key))
        assert sock is not None
        if (sock.index == owner_index) != not_owner:
            return key
    raise AssertionError("no such key")  # pragma: no cover


async def test_full_owner_applies_backpressure_in_a_real_mux() -> None:
    async with trio_kcm.open_mux(
        parser=PARSER, policy=trio_kcm.load_policy("consistent-hash", key=slice(4, 8))
    ) as mux:
        ((_, peer),) = attach_peers(mux, 1)
        small = mux.socket(receive_buffer_size=40)  # index 0: full after 4 messages of 10
        other = mux.socket()  # index 1
        hot = owned_key(0, [1])
        cold = owned_key(1, [0])
        first = [frame(hot + b"-%d" % i) for i in range(4)]  # 10 bytes each
        await peer.send_all(b"".join(first))
        await trio.testing.wait_all_tasks_blocked()
        assert small.statistics().rx_queued_msgs == 4  # full now
        # A message for the full owner, then one for the other socket: the
        # first is held, and the stream stops there (no reordering).
        rest = [frame(hot + b"-4"), frame(cold + b"-0"), frame(hot + b"-5")]
        await peer.send_all(b"".join(rest))
        await trio.testing.wait_all_tasks_blocked()
        assert other.statistics().rx_queued_msgs == 0
        assert small.statistics().rx_queued_msgs == 4
        # The owner's worker catches up: delivery resumes, keys where they belong.
        assert small.receive_many_nowait(2) == first[:2]
        await trio.testing.wait_all_tasks_blocked()
        assert small.receive_many_nowait(100) == [*first[2:], rest[0], rest[2]]
        assert other.receive_many_nowait(100) == [rest[1]]


async def test_full_owner_spills_to_the_next_with_when_full_next() -> None:
    async with trio_kcm.open_mux(
        parser=PARSER,
        policy=trio_kcm.load_policy("consistent-hash", key=slice(4, 8), when_full="next"),
    ) as mux:
        ((_, peer),) = attach_peers(mux, 1)
        small = mux.socket(receive_buffer_size=40)
        other = mux.socket()
        hot = owned_key(0, [1])
        messages = [frame(hot + b"-%d" % i) for i in range(7)]
        await peer.send_all(b"".join(messages))
        await trio.testing.wait_all_tasks_blocked()
        assert small.receive_many_nowait(100) == messages[:4]
        assert other.receive_many_nowait(100) == messages[4:]
        # Room again: the key is its owner's again.
        await peer.send_all(frame(hot + b"-7"))
        await trio.testing.wait_all_tasks_blocked()
        assert small.receive_many_nowait(100) == [frame(hot + b"-7")]


async def test_disabled_owner_hands_its_messages_to_the_new_owners() -> None:
    async with trio_kcm.open_mux(
        parser=PARSER, policy=trio_kcm.load_policy("consistent-hash", key=slice(4, 8))
    ) as mux:
        ((_, peer),) = attach_peers(mux, 1)
        sockets = [mux.socket() for _ in range(3)]
        keys = [b"%04d" % i for i in range(30)]
        messages = [frame(k) for k in keys]
        await peer.send_all(b"".join(messages))
        await trio.testing.wait_all_tasks_blocked()
        before = {m: s.index for s in sockets for m in s.receive_many_nowait(100)}
        assert sorted(before) == sorted(messages)
        # Queue them again, then disable socket 1: its messages move, each to
        # its key's owner among 0 and 2; no other key moves.
        await peer.send_all(b"".join(messages))
        await trio.testing.wait_all_tasks_blocked()
        sockets[1].disable_receive()
        after = {m: s.index for s in (sockets[0], sockets[2]) for m in s.receive_many_nowait(100)}
        assert sorted(after) == sorted(messages)
        offline = with_sockets([0, 2], key=slice(4, 8))
        for m, index in after.items():
            if before[m] != 1:
                assert index == before[m]
            assert offline.pick_socket(None, m).index == index  # type: ignore[union-attr]
