"""Mux.stream_totals() and format_kcm_stats(): the kernel's /proc/net/kcm_stats, for one mux."""

from __future__ import annotations

import errno

import trio
import trio.testing

import trio_kcm

from .conftest import PeerReader, frame
from .test_tcp import next_error

P = trio_kcm.LengthPrefixed(">I", adjust=4)

MUX_HEAD = [
    "MUX",
    "RX-Msgs",
    "RX-Bytes",
    "TX-Msgs",
    "TX-Bytes",
    "TX-Retries",
    "Attach",
    "Unattach",
    "UnattchRsvd",
    "RX-RdyDrops",
]
PSOCK_HEAD = [
    "Psock",
    "RX-Msgs",
    "RX-Bytes",
    "TX-Msgs",
    "TX-Bytes",
    "Reserved",
    "Unreserved",
    "RX-Aborts",
    "RX-Intr",
    "RX-Unrecov",
    "RX-MemFail",
    "RX-NeedMor",
    "RX-BadLen",
    "RX-TooBig",
    "RX-Timeout",
    "TX-Aborts",
]


def parse(text: str) -> tuple[dict[str, int], dict[str, int]]:
    mux_head, mux_row, blank, psock_head, psock_row = text.rstrip("\n").split("\n")
    assert blank == ""
    assert mux_head.split() == MUX_HEAD
    assert psock_head.split() == PSOCK_HEAD
    mux = dict(zip(MUX_HEAD[1:], map(int, mux_row.split()), strict=True))
    psock = dict(zip(PSOCK_HEAD[1:], map(int, psock_row.split()), strict=True))
    return mux, psock


async def test_the_layout_and_its_values_match_the_statistics() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        await peer.send_all(frame(b"in") * 3)
        for _ in range(3):
            await sock.receive()
        for i in range(2):
            await sock.send(frame(b"out %d" % i))
        assert len(await PeerReader(peer).read_frames(2)) == 2
        m, p = parse(trio_kcm.format_kcm_stats(mux))
        stats = mux.statistics()
        totals = mux.stream_totals()
    assert (m["RX-Msgs"], m["RX-Bytes"]) == (stats.rx_msgs, stats.rx_bytes) == (3, 18)
    assert (m["TX-Msgs"], m["Attach"], m["Unattach"]) == (2, 1, 0)
    assert (p["RX-Msgs"], p["TX-Msgs"], p["TX-Bytes"]) == (3, 2, totals.tx_bytes)
    assert p["Reserved"] == totals.reserved >= 1
    assert p["RX-MemFail"] == 0


async def test_the_totals_keep_the_counts_of_streams_that_left() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        sock = mux.socket()
        await peer.send_all(frame(b"one") + frame(b"two"))
        await sock.receive_many(2)
        before = handle.statistics()
        await mux.unattach(handle)
        totals = mux.stream_totals()
        assert (totals.rx_msgs, totals.rx_bytes) == (before.rx_msgs, before.rx_bytes) == (2, 14)
        again, peer2 = trio.testing.memory_stream_pair()
        mux.attach(again)
        await peer2.send_all(frame(b"three"))
        await sock.receive()
        assert mux.stream_totals().rx_msgs == 3 == mux.statistics().rx_msgs


async def test_why_streams_failed_is_counted_by_kind() -> None:
    async with trio_kcm.open_mux(parser=P, max_message_size=100) as mux:
        mux.socket()
        clean, clean_peer = trio.testing.memory_stream_pair()
        mux.attach(clean)
        await clean_peer.send_all(frame(b"bye"))
        await clean_peer.send_stream.aclose()
        assert (await next_error(mux)).peer_closed
        t = mux.stream_totals()
        assert (t.rx_aborts, t.rx_interrupted, t.rx_unrecoverable) == (1, 0, 0)

        half, half_peer = trio.testing.memory_stream_pair()
        mux.attach(half)
        await half_peer.send_all(frame(b"cut short")[:6])
        await half_peer.send_stream.aclose()
        await next_error(mux)
        t = mux.stream_totals()
        assert (t.rx_aborts, t.rx_interrupted, t.rx_unrecoverable) == (2, 0, 1)

        big, big_peer = trio.testing.memory_stream_pair()
        mux.attach(big)
        await big_peer.send_all(b"\x00\x00\x10\x00")  # announces 4 KiB: over the limit
        await next_error(mux)
        t = mux.stream_totals()
        assert (t.rx_aborts, t.rx_interrupted, t.rx_unrecoverable) == (3, 1, 2)
        assert t.rx_msg_too_big == 1
        _m, p = parse(trio_kcm.format_kcm_stats(mux))
        assert (p["RX-Aborts"], p["RX-Intr"], p["RX-Unrecov"], p["RX-TooBig"]) == (3, 1, 2, 1)


async def test_an_unattach_while_a_socket_has_a_burst_on_the_stream_is_counted() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, peer = trio.testing.lockstep_stream_pair()  # the write waits for the peer
        handle = mux.attach(ours)
        sock = mux.socket()
        await sock.send(frame(b"in flight"))
        await trio.testing.wait_all_tasks_blocked()
        assert handle.statistics().reserved_by == (sock.index,)
        nursery.start_soon(mux.unattach, handle)
        await trio.testing.wait_all_tasks_blocked()
        assert await PeerReader(peer).read_frames(1) == [frame(b"in flight")]
        await trio.testing.wait_all_tasks_blocked()
        assert mux.stream_totals().unattached_reserved == 1
        m, _ = parse(trio_kcm.format_kcm_stats(mux))
        assert (m["Unattach"], m["UnattchRsvd"]) == (1, 1)


async def test_streams_failed_for_want_of_memory_are_rx_memfail() -> None:
    async with trio_kcm.open_mux(parser=P, receive_memory_limit=16 * 1024) as mux:
        late, late_peer = trio.testing.memory_stream_pair()
        mux.attach(late)
        await late_peer.send_all(b"\x00\x00\x50\x00" + b"l" * 5000)  # 20 KiB: never fits
        error = await next_error(mux)
        assert error.errno == errno.ENOBUFS
        _m, p = parse(trio_kcm.format_kcm_stats(mux))
        assert (p["RX-MemFail"], p["RX-Intr"], p["RX-Aborts"]) == (1, 1, 1)
