"""Load: fairness between sockets, and closing while traffic and faults are under way."""

from __future__ import annotations

import collections
import logging
import random
import struct

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import frame, unframe_all

P = trio_kcm.LengthPrefixed(">I", adjust=4)


def tagged(kind: bytes, n: int, size: int = 56) -> bytes:
    """A unique message: kind, number, padding."""
    body = kind + struct.pack(">I", n)
    return frame(body + b"." * (size - len(body)))


async def paced_reader(
    stream: trio.abc.ReceiveStream,
    chunk: int,
    interval: float,
    frames: list[tuple[float, bytes]],
    expected: int,
    done: trio.Event,
) -> None:
    """A peer that reads ``chunk`` bytes every ``interval`` seconds: a bottleneck."""
    buffer = b""
    while len(frames) < expected:
        data = await stream.receive_some(chunk)
        if not data:
            return
        buffer += data
        got, buffer = unframe_all(buffer)
        now = trio.current_time()
        frames.extend((now, f) for f in got)
        await trio.sleep(interval)
    done.set()


async def test_a_flooding_socket_cannot_starve_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 10,000 sender tasks over 1,000 sockets on one mux and one slow stream
    # (4 KiB per virtual ms): 1,000 tasks flood socket 0 with 40 messages
    # each, 9,000 light senders each send one message on one of the other 999
    # sockets at a random moment.  The flood alone takes ~0.64 s to drain; a
    # light message must not wait behind it, only behind the bounded amount
    # that is already queued (the sockets' small send buffers) and one write.
    rng = random.Random(1)
    sent_at: dict[bytes, float] = {}
    frames: list[tuple[float, bytes]] = []
    done = trio.Event()
    async with (
        trio_kcm.open_mux(parser=P, send_buffer_size=1024, close_timeout=60) as mux,
        trio.open_nursery() as peers,
    ):
        ours, peer = trio.testing.lockstep_stream_pair()
        mux.attach(ours)
        peers.start_soon(paced_reader, peer, 4096, 0.001, frames, 49_000, done)
        socks = [mux.socket() for _ in range(1000)]

        async def flood(task: int) -> None:
            for i in range(40):
                await socks[0].send(tagged(b"F", task * 40 + i))

        async def light(n: int) -> None:
            await trio.sleep(rng.uniform(0, 0.6))
            message = tagged(b"L", n)
            sent_at[message] = trio.current_time()
            await socks[1 + n % 999].send(message)

        async with trio.open_nursery() as senders:
            for task in range(1000):
                senders.start_soon(flood, task)
            for n in range(9000):
                senders.start_soon(light, n)
        with trio.move_on_after(30):
            await done.wait()
        peers.cancel_scope.cancel()
    assert len(frames) == 49_000
    flood_end = max(t for t, f in frames if f[4:5] == b"F")
    waits = [t - sent_at[f] for t, f in frames if f[4:5] == b"L"]
    assert len(waits) == 9000
    # The flood really was long, and light messages went through during it...
    assert flood_end > 0.6
    assert sum(1 for t, f in frames if f[4:5] == b"L" and t < flood_end) > 8000
    # ...each after a bounded wait: 256 KiB (one coalesced write) at 4 KiB/ms is
    # 64 ms, plus what the 1,000 small buffers hold; starved, it would be ~0.6 s.
    assert max(waits) < 0.15, max(waits)


async def test_closing_under_load_is_prompt_and_accounts_for_everything(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Senders on 8 sockets, 4 streams: one fast peer, one slow, one that never
    # reads, one that dies mid-way.  Leaving open_mux while all that runs must
    # end within close_timeout, write what it can, and account for the rest:
    # every accepted message reached a peer, or is in doubt, or is counted
    # in tx_dropped; nothing arrives that was not accepted, or twice.
    accepted: list[bytes] = []
    errors: list[trio_kcm.StreamError] = []
    received: collections.Counter[bytes] = collections.Counter()
    tails: list[bytes] = []
    close_timeout = 2.0

    async def collect(stream: trio.abc.ReceiveStream, pace: float | None) -> None:
        if pace is None:
            await trio.sleep(1000)  # stalls until the mux has closed
        buffer = b""
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.ClosedResourceError:  # the peer that dies: we closed it
                break
            if not data:
                break
            buffer += data
            if pace:
                await trio.sleep(pace)
        frames, rest = unframe_all(buffer)
        received.update(frames)
        tails.append(rest)

    async with trio.open_nursery() as peers:
        pairs = [trio.testing.lockstep_stream_pair() for _ in range(4)]
        for (_, peer), pace in zip(pairs, [0.0, 0.01, None, 0.0], strict=True):
            peers.start_soon(collect, peer, pace)
        async with trio_kcm.open_mux(
            parser=P, policy="round-robin", close_timeout=close_timeout, send_buffer_size=4096
        ) as mux:
            handles = [mux.attach(ours) for ours, _ in pairs]
            socks = [mux.socket() for _ in range(8)]

            async def sender(k: int) -> None:
                n = 0
                while True:
                    message = tagged(b"%d" % k, n)
                    n += 1
                    await socks[k].send(message)
                    accepted.append(message)

            async def monitor() -> None:
                async for err in mux.errors():
                    errors.append(err)

            async with trio.open_nursery() as senders:
                peers.start_soon(monitor)
                for k in range(8):
                    senders.start_soon(sender, k)
                await trio.sleep(0.5)
                await pairs[3][1].aclose()  # a peer dies mid-traffic
                await trio.sleep(0.5)
                senders.cancel_scope.cancel()
            start = trio.current_time()
        closing_took = trio.current_time() - start
    assert closing_took <= close_timeout + 0.01
    stats = mux.statistics()
    in_doubt = collections.Counter(m for err in errors for m in err.in_doubt)
    accepted_set = set(accepted)
    assert len(accepted_set) == len(accepted) > 1000
    assert set(received) <= accepted_set  # nothing invented
    assert all(n == 1 or m in in_doubt for m, n in received.items())  # no duplicate
    unaccounted = accepted_set - set(received) - set(in_doubt)
    assert len(unaccounted) <= stats.tx_dropped
    assert stats.tx_dropped > 0  # the stalled peer held messages back
    assert {err.stream for err in errors} >= {handles[3]}
    assert handles[0].statistics().tx_msgs > 0
    assert any("could not" in r.message or "unsent" in r.message for r in caplog.records)
    assert all(r.levelno <= logging.WARNING for r in caplog.records)
