"""mux.supervise(): keep M streams attached, reconnect with backoff, report each step."""

from __future__ import annotations

import functools
import random
import ssl
from collections import Counter
from collections.abc import Callable

import pytest
import trio
import trio.testing
import trustme

import trio_kcm

from .conftest import deadline, frame, unframe_all

P = trio_kcm.LengthPrefixed(">I", adjust=4)
NO_JITTER = trio_kcm.Backoff(initial=1.0, maximum=8.0, multiplier=2.0, jitter=0.0)


class Factory:
    """connect(): memory streams; fails with OSError when told; keeps the peers."""

    def __init__(self, fail: Callable[[int], bool] = lambda n: False) -> None:
        self.fail = fail
        self.calls: list[float] = []
        self.peers: list[trio.abc.Stream] = []
        self.made: list[trio.abc.Stream] = []

    async def __call__(self) -> trio.abc.Stream:
        self.calls.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.fail(len(self.calls)):
            raise ConnectionRefusedError(111, "refused")
        ours, peer = trio.testing.memory_stream_pair()
        self.made.append(ours)
        self.peers.append(peer)
        return ours


def events_of(mux: trio_kcm.Mux) -> list[trio_kcm.MuxEvent]:
    events = list(mux._lifecycle.events.items)
    mux._lifecycle.events.items.clear()
    return events


def reconnects(events: list[trio_kcm.MuxEvent]) -> list[trio_kcm.ReconnectScheduled]:
    return [e for e in events if isinstance(e, trio_kcm.ReconnectScheduled)]


# ---------------------------------------------------------------------------
# Backoff


def test_backoff_grows_caps_and_jitters() -> None:
    b = trio_kcm.Backoff(initial=0.5, maximum=10.0, multiplier=3.0, jitter=0.0)
    assert [b.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert b.delay(10**6) == 10.0  # no overflow
    j = trio_kcm.Backoff(initial=1.0, maximum=100.0, multiplier=2.0, jitter=0.5)
    delays = [j.delay(3) for _ in range(500)]
    assert all(2.0 <= d <= 6.0 for d in delays)
    assert min(delays) < 2.5 and max(delays) > 5.5  # it does spread
    capped = [j.delay(50) for _ in range(200)]
    assert all(50.0 <= d <= 100.0 for d in capped)  # never above maximum
    assert trio_kcm.Backoff().delay(1) == pytest.approx(0.1, rel=0.21)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1.0},
        {"initial": 5.0, "maximum": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"reset_after": -1.0},
    ],
)
def test_backoff_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        trio_kcm.Backoff(**kwargs)


# ---------------------------------------------------------------------------
# supervise


@deadline(100000)
async def test_it_keeps_count_streams_attached(autojump_clock: trio.abc.Clock) -> None:
    factory = Factory()
    async with (
        trio.open_nursery() as nursery,
        trio_kcm.open_mux(parser=P, policy="round-robin") as mux,
    ):
        await nursery.start(functools.partial(mux.supervise, factory, count=3))
        assert len(mux.streams) == 3
        assert [type(e) for e in events_of(mux)] == [trio_kcm.StreamAttached] * 3
        sock = mux.socket()
        for i in range(6):
            await sock.send(frame(b"%d" % i))
        await trio.testing.wait_all_tasks_blocked()
        got = []
        for peer in factory.peers:
            got += unframe_all(await peer.receive_some(1000))[0]
        assert sorted(got) == [frame(b"%d" % i) for i in range(6)]
        # The mux closed: supervise returned by itself, and made no new stream.
    assert len(factory.calls) == 3


@deadline(100000)
async def test_connect_failures_back_off_exponentially(autojump_clock: trio.abc.Clock) -> None:
    factory = Factory(fail=lambda n: n <= 5)
    async with trio.open_nursery() as nursery, trio_kcm.open_mux(parser=P) as mux:
        start = trio.current_time()
        await nursery.start(functools.partial(mux.supervise, factory, backoff=NO_JITTER))
        # 1, 2, 4, 8, 8 seconds between the 6 calls.
        gaps = [b - a for a, b in zip([start, *factory.calls], factory.calls, strict=False)]
        assert gaps == pytest.approx([0, 1, 2, 4, 8, 8])
        events = events_of(mux)
        scheduled = reconnects(events)
        assert [(e.stream, e.attempt, e.delay) for e in scheduled] == [
            (None, 1, 1.0),
            (None, 2, 2.0),
            (None, 3, 4.0),
            (None, 4, 8.0),
            (None, 5, 8.0),
        ]
        assert all(isinstance(e.cause, ConnectionRefusedError) for e in scheduled)
        assert isinstance(events[-1], trio_kcm.StreamAttached)


@deadline(100000)
async def test_a_failed_stream_is_closed_and_replaced(autojump_clock: trio.abc.Clock) -> None:
    factory = Factory()
    async with trio.open_nursery() as nursery, trio_kcm.open_mux(parser=P) as mux:
        backoff = trio_kcm.Backoff(initial=2.0, jitter=0.0, reset_after=100.0)
        await nursery.start(functools.partial(mux.supervise, factory, count=2, backoff=backoff))
        first = mux.streams[0]
        events_of(mux)
        await factory.peers[0].aclose()  # the peer drops it
        await trio.testing.wait_all_tasks_blocked()
        failed_at = trio.current_time()
        assert first.state == "failed"
        events = events_of(mux)
        assert [type(e) for e in events] == [
            trio_kcm.StreamFailed,
            trio_kcm.StreamUnattached,
            trio_kcm.ReconnectScheduled,
        ]
        assert isinstance(events[1], trio_kcm.StreamUnattached) and events[1].closed
        sched = events[2]
        assert isinstance(sched, trio_kcm.ReconnectScheduled)
        assert (sched.stream, sched.attempt, sched.delay) == (first, 1, 2.0)
        assert isinstance(sched.cause, trio_kcm.StreamError)
        assert sched.cause is await mux.errors().__anext__()
        # The old stream was closed by the mux.
        with pytest.raises(trio.ClosedResourceError):
            await factory.made[0].send_all(b"x")
        await trio.sleep(2.5)
        assert factory.calls[-1] - failed_at == pytest.approx(2.0)
        assert len(mux.streams) == 2 and first not in mux.streams
        (attached,) = events_of(mux)
        assert isinstance(attached, trio_kcm.StreamAttached)
        # Failing again soon after: the next delay doubles.
        await factory.peers[2].aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert reconnects(events_of(mux))[0].delay == 4.0
        await trio.sleep(150)
        # A stream that lived longer than reset_after starts a new run.
        await factory.peers[3].aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert reconnects(events_of(mux))[0].delay == 2.0


@deadline(100000)
async def test_with_auto_close_false_the_supervisor_closes(
    autojump_clock: trio.abc.Clock,
) -> None:
    factory = Factory()
    async with trio.open_nursery() as nursery, trio_kcm.open_mux(parser=P, auto_close=False) as mux:
        await nursery.start(mux.supervise, factory)
        first = mux.streams[0]
        await factory.peers[0].aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert first.state == "failed" and first not in mux.streams
        with pytest.raises(trio.ClosedResourceError):
            await factory.made[0].send_all(b"x")
        events = events_of(mux)
        unattached = [e for e in events if isinstance(e, trio_kcm.StreamUnattached)]
        assert [e.stream for e in unattached] == [first]
        await trio.sleep(1)
        assert len(mux.streams) == 1 and mux.streams[0] is not first


@deadline(100000)
async def test_an_unattached_stream_is_replaced_at_once(autojump_clock: trio.abc.Clock) -> None:
    factory = Factory()
    async with trio.open_nursery() as nursery, trio_kcm.open_mux(parser=P) as mux:
        await nursery.start(mux.supervise, factory)
        first = mux.streams[0]
        events_of(mux)
        before = trio.current_time()
        assert await mux.unattach(first) is factory.made[0]
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == before
        assert len(mux.streams) == 1 and mux.streams[0] is not first
        events = events_of(mux)
        sched = reconnects(events)
        assert [(e.stream, e.attempt, e.delay, e.cause) for e in sched] == [(first, 0, 0.0, None)]
        # In the order the docs give: it left, then its replacement was scheduled.
        # (The supervisor used to wake when the stream's tasks ended, before
        # unattach released it: ReconnectScheduled came first.)
        assert [type(e) for e in events] == [
            trio_kcm.StreamUnattached,
            trio_kcm.ReconnectScheduled,
            trio_kcm.StreamAttached,
        ]
    await factory.made[0].aclose()  # handed back: ours to close


@deadline(100000)
async def test_cancelling_it_stops_reconnecting(autojump_clock: trio.abc.Clock) -> None:
    factory = Factory()
    async with trio_kcm.open_mux(parser=P) as mux:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(mux.supervise, factory, count=2))
            nursery.cancel_scope.cancel()
        # Its streams stay attached.
        assert len(mux.streams) == 2
        await factory.peers[0].aclose()
        await trio.sleep(100)
        assert len(mux.streams) == 1
        assert len(factory.calls) == 2
        assert not reconnects(events_of(mux))


@deadline(100000)
async def test_cancelling_it_during_backoff(autojump_clock: trio.abc.Clock) -> None:
    factory = Factory(fail=lambda n: True)
    async with trio_kcm.open_mux(parser=P) as mux:
        with trio.move_on_after(5):
            await mux.supervise(factory, backoff=NO_JITTER)
        assert len(factory.calls) == 3  # at 0, 1, 3 s; the next would be at 7
        await trio.sleep(100)
        assert len(factory.calls) == 3


@deadline(100000)
async def test_the_mux_closing_ends_it_during_backoff_and_connect(
    autojump_clock: trio.abc.Clock,
) -> None:
    hang = trio.Event()

    async def slow_connect() -> trio.abc.Stream:
        await hang.wait()
        raise AssertionError("not reached")

    factory = Factory(fail=lambda n: True)
    async with trio.open_nursery() as nursery, trio_kcm.open_mux(parser=P) as mux:
        nursery.start_soon(functools.partial(mux.supervise, factory, backoff=NO_JITTER))
        nursery.start_soon(mux.supervise, slow_connect)
        await trio.sleep(2)
    assert len(factory.calls) == 2  # at 0 and 1 s; then the mux closed
    with pytest.raises(trio.ClosedResourceError):
        await mux.supervise(factory)


@deadline(100000)
async def test_connect_timeout_is_retried(autojump_clock: trio.abc.Clock) -> None:
    calls = []

    async def connect() -> trio.abc.Stream:
        calls.append(trio.current_time())
        if len(calls) < 3:
            await trio.sleep_forever()
        return trio.testing.memory_stream_pair()[0]

    async with trio.open_nursery() as nursery, trio_kcm.open_mux(parser=P) as mux:
        await nursery.start(
            functools.partial(mux.supervise, connect, backoff=NO_JITTER, connect_timeout=10)
        )
        sched = reconnects(events_of(mux))
        assert [type(e.cause) for e in sched] == [trio.TooSlowError] * 2
        assert calls == pytest.approx([0 + calls[0], calls[0] + 11, calls[0] + 23])


@deadline(100000)
async def test_a_bug_in_connect_propagates() -> None:
    async def connect() -> trio.abc.Stream:
        raise KeyError("bug")

    async with trio_kcm.open_mux(parser=P) as mux:
        with pytest.RaisesGroup(KeyError, flatten_subgroups=True):
            await mux.supervise(connect)


@deadline(100000)
async def test_arguments_are_checked() -> None:
    factory = Factory()
    async with trio_kcm.open_mux(parser=P) as mux:
        with pytest.raises(ValueError):
            await mux.supervise(factory, count=0)
        with pytest.raises(ValueError):
            await mux.supervise(factory, connect_timeout=0)
    assert factory.calls == []


# ---------------------------------------------------------------------------
# TLS: a failed handshake is retried, not fatal


@deadline(100000)
async def test_a_failed_tls_handshake_is_retried(autojump_clock: trio.abc.Clock) -> None:
    ca = trustme.CA()
    good = ca.issue_cert("kcm.example")
    wrong = trustme.CA().issue_cert("kcm.example")  # signed by a CA the client does not trust
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    attempts: list[str] = []
    servers: list[trio.SSLStream[trio.abc.Stream]] = []

    async with trio.open_nursery() as nursery:

        async def serve(stream: trio.abc.Stream, cert: trustme.LeafCert) -> None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(ctx)
            server = trio.SSLStream(stream, ctx, server_side=True)
            servers.append(server)
            try:
                await server.do_handshake()
            except trio.BrokenResourceError:
                await trio.aclose_forcefully(server)

        async def connect() -> trio.abc.Stream:
            ours, theirs = trio.testing.memory_stream_pair()
            cert = wrong if len(attempts) < 2 else good
            attempts.append("wrong" if cert is wrong else "good")
            nursery.start_soon(serve, theirs, cert)
            client = trio.SSLStream(ours, client_ctx, server_hostname="kcm.example")
            try:
                await client.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(client)
                raise
            return client

        async with trio_kcm.open_mux(parser=P) as mux:
            await nursery.start(mux.supervise, connect)
            assert attempts == ["wrong", "wrong", "good"]
            causes = [e.cause for e in reconnects(events_of(mux))]
            assert len(causes) == 2
            assert all(isinstance(c, trio.BrokenResourceError) for c in causes)
            assert all(isinstance(c.__cause__, ssl.SSLCertVerificationError) for c in causes)  # type: ignore[union-attr]
            await mux.socket().send(frame(b"over tls"))
            data = await servers[-1].receive_some(100)
            assert data == frame(b"over tls")


# ---------------------------------------------------------------------------
# A peer that drops every connection, again and again


@pytest.mark.parametrize("retry_in_doubt", [True, False])
@deadline(100000)
async def test_a_pool_survives_a_peer_that_keeps_dropping_connections(
    autojump_clock: trio.abc.Clock, retry_in_doubt: bool, frozen_turns: None
) -> None:
    """Every message sent is delivered, or reported in doubt; nothing else is lost.

    Lockstep streams: a write returns only once the peer has read it all, so
    a message whose write returned was read whole by the peer (TCP could not
    tell us that much).  The peer closes each connection after a random
    number of bytes (often mid-message), and every third connect() is refused.
    """
    rng = random.Random(7)
    received: list[bytes] = []
    in_doubt: list[bytes] = []
    unsent: list[bytes] = []
    sent: list[bytes] = []
    connections = 0
    accounted = trio.Event()

    def check() -> None:
        # With retry_in_doubt, in-doubt messages are resent: wait for them too.
        known = set(received) if retry_in_doubt else set(received) | set(in_doubt)
        if len(sent) == 600 and set(sent) <= known:
            accounted.set()

    async with trio.open_nursery() as nursery:

        async def peer(stream: trio.abc.Stream) -> None:
            buffer = b""
            left = rng.randint(1, 1200)
            while left:
                data = await stream.receive_some(min(left, 64))
                if not data:
                    break
                left -= len(data)
                frames, buffer = unframe_all(buffer + data)
                received.extend(frames)
                check()
            await stream.aclose()

        async def connect() -> trio.abc.Stream:
            nonlocal connections
            connections += 1
            await trio.sleep(0.01)
            if connections % 3 == 0:
                raise ConnectionRefusedError(111, "refused")
            ours, theirs = trio.testing.lockstep_stream_pair()
            nursery.start_soon(peer, theirs)
            return ours

        async with trio_kcm.open_mux(parser=P, retry_in_doubt=retry_in_doubt) as mux:

            async def monitor() -> None:
                async for error in mux.errors():
                    in_doubt.extend(error.in_doubt)
                    unsent.extend(error.unsent)
                    check()

            nursery.start_soon(monitor)
            backoff = trio_kcm.Backoff(initial=0.05, maximum=1.0)
            await nursery.start(functools.partial(mux.supervise, connect, count=3, backoff=backoff))

            async def sender(k: int) -> None:
                sock = mux.socket(send_buffer_size=100)
                for i in range(150):
                    message = frame(b"%d:%03d:" % (k, i) + b"x" * (i % 40))
                    await sock.send(message)
                    sent.append(message)

            async with trio.open_nursery() as senders:
                for k in range(4):
                    senders.start_soon(sender, k)
            check()
            await accounted.wait()
            stats = mux.statistics()
            nursery.cancel_scope.cancel()

    assert len(sent) == 600
    assert connections > 30  # it really was dropped again and again
    assert stats.stream_errors > 20
    assert unsent == []
    assert stats.tx_dropped == 0
    counts = Counter(received)
    duplicated = {m for m, n in counts.items() if n > 1}
    assert duplicated <= set(in_doubt)  # only an in-doubt message may arrive twice
    assert set(received) <= set(sent)
    if retry_in_doubt:
        assert set(received) == set(sent)  # in-doubt ones were resent
        assert in_doubt  # and there were some
    # Each socket's messages arrive whole; order holds per stream, not across.
