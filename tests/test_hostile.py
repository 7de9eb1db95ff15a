"""Hostile peers: each attack fails its own stream alone, in bounded memory.

Every test here attaches a hostile stream and a good one to one mux, attacks
through the hostile one, and checks that:

* the hostile stream fails with the right errno and a message that says what
  happened (or, where nothing is wrong yet, that it just waits and allocates
  nothing);
* the good stream keeps working, in both directions;
* the memory traced by :mod:`tracemalloc` during the attack stays below a bound
  far under what the attack asks for (4 GiB headers, ``max_message_size``).

Anything about time runs on the autojump clock over memory streams; over real
loopback TCP there are no timing assertions.  Framing errors that
``test_errors.py`` already covers are not repeated: here they are checked for
the exact ``__cause__``, the message text, memory and the other stream.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import PeerReader, frame
from .test_tcp import loopback

P = trio_kcm.LengthPrefixed(">I", adjust=4)
#: Large on purpose: an attack that allocated even one buffer of this size
#: would blow every memory bound below.
BIG_MAX = 16 * 1024 * 1024
#: What a stream may hold besides the attack itself: one read (64 KiB), the
#: reader's bookkeeping, Trio's and tracemalloc's own allocations.
SLACK = 512 * 1024


@contextlib.contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """Trace allocations; yields a function giving the peak growth so far, in bytes."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        yield lambda: tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


async def next_error(mux: trio_kcm.Mux) -> trio_kcm.StreamError:
    async for err in mux.errors():
        return err
    raise AssertionError("the mux closed without an error")


async def check_both_ways(
    sock: trio_kcm.KCMSocket, peer: trio.abc.Stream, reader: PeerReader, tag: bytes
) -> None:
    """The good stream carries a message each way (the hostile one must be out)."""
    await peer.send_all(frame(b"from the good peer " + tag))
    assert await sock.receive() == frame(b"from the good peer " + tag)
    await sock.send(frame(b"to the good peer " + tag))
    assert await reader.read_frames(1) == [frame(b"to the good peer " + tag)]


@contextlib.asynccontextmanager
async def memory_pair(
    mux: trio_kcm.Mux, **attach: object
) -> AsyncIterator[tuple[trio_kcm.AttachedStream, trio.abc.Stream]]:
    ours, peer = trio.testing.memory_stream_pair()
    handle = mux.attach(ours, **attach)  # type: ignore[arg-type]
    try:
        yield handle, peer
    finally:
        await peer.aclose()


# ---------------------------------------------------------------------------
# Huge length headers


@pytest.mark.parametrize(
    ("parser", "header", "announced"),
    [
        # 4 GiB - 1 of payload announced in a 4-byte field: 4 GiB + 3 in all.
        (trio_kcm.LengthPrefixed(">I", adjust=4), b"\xff\xff\xff\xff", 2**32 + 3),
        # A 64-bit field announcing 4 EiB.
        (trio_kcm.LengthPrefixed(">Q"), struct.pack(">Q", 2**62), 2**62),
    ],
)
async def test_huge_length_header_over_tcp(
    parser: trio_kcm.LengthPrefixed, header: bytes, announced: int
) -> None:
    async with loopback() as lb, trio_kcm.open_mux(parser=P, max_message_size=BIG_MAX) as mux:
        bad_client, bad_peer = await lb.pair()
        good_client, good_peer = await lb.pair()
        good = mux.attach(good_client)
        sock = mux.socket()
        with traced() as peak:
            bad = mux.attach(bad_client, parser=parser)
            # A whole message first, then the hostile header and a little body.
            first = parser.frame(b"fine")
            await bad_peer.send_all(first + header + b"x" * 100)
            assert await sock.receive() == first
            err = await next_error(mux)
            grown = peak()
        assert err.stream is bad
        assert err.errno == errno.EMSGSIZE
        assert f"message of {announced} bytes announced" in str(err)
        assert f"max_message_size={BIG_MAX}" in str(err)
        assert err.partial_bytes == header + b"x" * 100
        assert bad.state == "failed"
        assert bad.statistics().rx_msg_too_big == 1
        # Refused before anything was allocated for it: not even max_message_size.
        assert grown < SLACK, grown
        assert good.state == "active"
        await check_both_ways(sock, good_peer, PeerReader(good_peer), b"after")
        assert mux.statistics().stream_errors == 1


async def test_announced_length_is_not_allocated_up_front_over_tcp() -> None:
    # Within the limit, but the body never comes: nothing is set aside for it.
    announced = BIG_MAX - 4
    async with loopback() as lb, trio_kcm.open_mux(parser=P, max_message_size=BIG_MAX) as mux:
        bad_client, bad_peer = await lb.pair()
        good_client, good_peer = await lb.pair()
        mux.attach(good_client)
        sock = mux.socket()
        with traced() as peak:
            bad = mux.attach(bad_client)
            await bad_peer.send_all(struct.pack(">I", announced) + b"y" * 1000)
            await trio.testing.wait_all_tasks_blocked()
            grown = peak()
        assert grown < SLACK, grown
        assert bad.state == "active"
        assert mux.statistics().stream_errors == 0
        await check_both_ways(sock, good_peer, PeerReader(good_peer), b"meanwhile")


# ---------------------------------------------------------------------------
# A header that never completes


async def test_header_that_never_completes_times_out(autojump_clock: object) -> None:
    timeout = 30.0
    async with (
        trio_kcm.open_mux(parser=P, max_message_size=BIG_MAX, assembly_timeout=timeout) as mux,
        memory_pair(mux) as (good, good_peer),
        memory_pair(mux) as (bad, bad_peer),
    ):
        sock = mux.socket()
        with traced() as peak:
            start = trio.current_time()
            await bad_peer.send_all(b"\x00\x00\x01")  # 3 of the 4 header bytes
            # The good stream works meanwhile, and its own idle time is no
            # message taking long to arrive.
            await trio.sleep(timeout / 2)
            await good_peer.send_all(frame(b"meanwhile"))
            assert await sock.receive() == frame(b"meanwhile")
            err = await next_error(mux)
            failed_at = trio.current_time()
            grown = peak()
        assert err.stream is bad
        assert err.errno == errno.ETIMEDOUT
        assert f"assembly_timeout={timeout}" in str(err)
        assert failed_at - start == pytest.approx(timeout, abs=1e-6)
        assert err.partial_bytes == b"\x00\x00\x01"
        assert bad.statistics().rx_msg_timeouts == 1
        assert grown < SLACK, grown
        assert good.state == "active"
        assert good.statistics().rx_msg_timeouts == 0
        await check_both_ways(sock, good_peer, PeerReader(good_peer), b"after")
        assert mux.statistics().stream_errors == 1


async def test_header_that_never_completes_without_timeout_just_waits(
    autojump_clock: object,
) -> None:
    async with (
        trio_kcm.open_mux(parser=P, max_message_size=BIG_MAX) as mux,
        memory_pair(mux) as (good, good_peer),
        memory_pair(mux) as (bad, bad_peer),
    ):
        sock = mux.socket()
        body = b"z" * 252
        message = frame(body)
        with traced() as peak:
            await bad_peer.send_all(message[:3])
            await trio.testing.wait_all_tasks_blocked()
            held, _ = tracemalloc.get_traced_memory()
            await trio.sleep(24 * 3600)  # a day, and nothing happens
            grown = peak()
            still_held, _ = tracemalloc.get_traced_memory()
        assert grown < SLACK, grown
        # A day of waiting allocated nothing that stayed.
        assert still_held - held < 16 * 1024
        assert bad.state == "active"
        assert mux.statistics().stream_errors == 0
        assert bad.statistics().rx_need_more_hdr >= 1
        await check_both_ways(sock, good_peer, PeerReader(good_peer), b"a day later")
        # It was only waiting: the rest of the message completes it.
        await bad_peer.send_all(message[3:])
        assert await sock.receive() == message
        assert good.state == bad.state == "active"


# ---------------------------------------------------------------------------
# One byte per second (slowloris)


async def test_slowloris_with_timeout_fails_at_the_deadline(autojump_clock: object) -> None:
    timeout = 10.5
    message = frame(b"s" * 100)
    async with (
        trio_kcm.open_mux(parser=P, assembly_timeout=timeout) as mux,
        memory_pair(mux) as (good, good_peer),
        memory_pair(mux) as (bad, bad_peer),
    ):
        sock = mux.socket()
        got: list[bytes] = []

        async def trickle() -> None:
            for byte in message:
                await bad_peer.send_all(bytes([byte]))
                await trio.sleep(1)

        async def good_traffic() -> None:
            # A message every 3 s on the good stream while the attack goes on.
            for i in range(5):
                await good_peer.send_all(frame(b"tick %d" % i))
                got.append(await sock.receive())
                await trio.sleep(3)

        with traced() as peak:
            async with trio.open_nursery() as nursery:
                start = trio.current_time()
                nursery.start_soon(trickle)
                nursery.start_soon(good_traffic)
                err = await next_error(mux)
                failed_at = trio.current_time()
                nursery.cancel_scope.cancel()
            grown = peak()
        assert err.stream is bad
        assert err.errno == errno.ETIMEDOUT
        assert failed_at - start == pytest.approx(timeout, abs=1e-6)
        # Bytes at t = 0, 1, ..., 10 arrived: 11 of them, discarded.
        assert err.partial_bytes == message[:11]
        assert bad.statistics().rx_msg_timeouts == 1
        assert grown < SLACK, grown
        assert got == [frame(b"tick %d" % i) for i in range(4)]
        assert good.state == "active"
        await check_both_ways(sock, good_peer, PeerReader(good_peer), b"after")


async def test_slowloris_without_timeout_keeps_going_in_bounded_memory(
    autojump_clock: object,
) -> None:
    # Every byte a read of its own: the message so far must cost about its
    # size, not an object per read (~40 bytes of overhead for each byte).
    size = 5_000
    message = frame(bytes(range(256)) * (size // 256) + b"!" * (size % 256))
    async with (
        trio_kcm.open_mux(parser=P, max_message_size=BIG_MAX) as mux,
        memory_pair(mux) as (good, good_peer),
        memory_pair(mux) as (bad, bad_peer),
    ):
        sock = mux.socket()
        with traced() as peak:
            for i, byte in enumerate(message[:-1]):
                await bad_peer.send_all(bytes([byte]))
                await trio.sleep(1)
                if i % 1000 == 0:
                    # The good stream works all along.
                    await good_peer.send_all(frame(b"tick %d" % i))
                    assert await sock.receive() == frame(b"tick %d" % i)
            held, _ = tracemalloc.get_traced_memory()
            grown = peak()
        assert bad.state == "active"
        assert mux.statistics().stream_errors == 0
        # Without the buffer: ~45 bytes per byte (225 KiB here).
        assert grown < 3 * len(message) + 64 * 1024, grown
        assert held < 2 * len(message) + 64 * 1024, held
        # The last byte completes it, whole and right.
        await bad_peer.send_all(message[-1:])
        assert await sock.receive() == message
        await check_both_ways(sock, good_peer, PeerReader(good_peer), b"after")
        assert good.state == bad.state == "active"


def test_assembler_one_byte_reads_cost_linear_memory() -> None:
    # Regression: the assembler kept every read as an object of its own, ~42
    # bytes per byte for one-byte reads (8 MiB announced: 330 MiB held).
    from trio_kcm._assembler import Assembler

    size = 100_000
    message = frame(b"q" * size)
    # Fresh one-byte objects, as a socket's reads are (b"x"[:1] would be cached).
    chunks = [bytes(bytearray(message[i : i + 1])) for i in range(len(message))]
    assembler = Assembler(P, BIG_MAX)
    with traced() as peak:
        for i in range(len(chunks) - 1):
            assert assembler.feed(chunks[i]) == []
        held, _ = tracemalloc.get_traced_memory()
        grown = peak()
    assert held < 1.5 * size, held
    assert grown < 2 * size, grown
    assert assembler.feed(chunks[-1]) == [message]


async def test_slowloris_over_tcp_is_only_slow() -> None:
    message = frame(b"t" * 300)
    async with loopback() as lb, trio_kcm.open_mux(parser=P) as mux:
        bad_client, bad_peer = await lb.pair()
        good_client, good_peer = await lb.pair()
        bad_peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        good = mux.attach(good_client)
        bad = mux.attach(bad_client)
        sock = mux.socket()
        with traced() as peak:
            for byte in message[:-1]:
                await bad_peer.send_all(bytes([byte]))
                await trio.testing.wait_all_tasks_blocked()
            grown = peak()
        await good_peer.send_all(frame(b"meanwhile"))
        assert await sock.receive() == frame(b"meanwhile")
        assert bad.state == "active"
        assert mux.statistics().stream_errors == 0
        assert grown < SLACK, grown
        await bad_peer.send_all(message[-1:])
        assert await sock.receive() == message
        await sock.send(frame(b"to anyone"))
        # Both streams are candidates: read from whichever got it.
        with trio.move_on_after(5):
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []

                async def read(peer: trio.SocketStream) -> None:
                    got.extend(await PeerReader(peer).read_frames(1))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read, bad_peer)
                nursery.start_soon(read, good_peer)
        assert got == [frame(b"to anyone")]
        assert good.state == bad.state == "active"


# ---------------------------------------------------------------------------
# A delimiter that never comes


class CountingDelimited:
    """A :class:`Delimited` that counts the bytes the assembler asks it to search."""

    def __init__(self, delimiter: bytes) -> None:
        self.inner = trio_kcm.Delimited(delimiter)
        self.header_size = self.inner.header_size
        self.calls = 0
        self.searched = 0

    def message_length(self, data: memoryview, /) -> int:
        self.calls += 1
        self.searched += len(data)
        return self.inner.message_length(data)

    def resume_message_length(self, data: memoryview, seen: int, /) -> int:
        self.calls += 1
        # What the search must look at: the new bytes, and a delimiter's
        # length minus one before them (a delimiter split across reads).
        self.searched += len(data) - max(0, seen - len(self.inner.delimiter) + 1)
        return self.inner.resume_message_length(data, seen)


async def test_delimited_flood_without_delimiter_is_emsgsize_in_linear_time() -> None:
    limit = 16 * 1024
    chunk = b"a" * 16
    parser = CountingDelimited(b"\r\n")
    async with (
        trio_kcm.open_mux(parser=P, max_message_size=limit) as mux,
        memory_pair(mux) as (good, good_peer),
        memory_pair(mux, parser=parser) as (bad, bad_peer),
    ):
        sock = mux.socket()
        fed = 0
        with traced() as peak:
            while bad.state == "active":
                await bad_peer.send_all(chunk)
                fed += len(chunk)
                await trio.testing.wait_all_tasks_blocked()  # one read per chunk
                assert fed <= limit + len(chunk), "no EMSGSIZE past max_message_size"
            err = await next_error(mux)
            grown = peak()
        assert err.stream is bad
        assert err.errno == errno.EMSGSIZE
        assert f"no complete header in {fed} bytes" in str(err)
        assert f"max_message_size={limit}" in str(err)
        assert fed == limit  # the first read that reached the limit failed it
        assert err.partial_bytes == b"a" * fed
        assert bad.statistics().rx_msg_too_big == 1
        # One search per read, each over the new bytes only: linear, where
        # searching from the start each time would look at ~fed**2 / 32 bytes.
        reads = fed // len(chunk)
        assert parser.calls == reads
        assert parser.searched <= fed + reads * len(parser.inner.delimiter)
        assert grown < 3 * limit + SLACK, grown
        assert good.state == "active"
        await check_both_ways(sock, good_peer, PeerReader(good_peer), b"after")


async def test_delimited_flood_over_tcp_is_emsgsize() -> None:
    limit = 256 * 1024
    async with loopback() as lb, trio_kcm.open_mux(parser=P, max_message_size=limit) as mux:
        bad_client, bad_peer = await lb.pair()
        good_client, good_peer = await lb.pair()
        good = mux.attach(good_client)
        parser = CountingDelimited(b"\n")
        bad = mux.attach(bad_client, parser=parser)
        sock = mux.socket()
        with traced() as peak:
            async with trio.open_nursery() as nursery:

                async def flood() -> None:
                    # Until the mux closes the stream, or we stop.
                    with contextlib.suppress(trio.BrokenResourceError):
                        while True:
                            await bad_peer.send_all(b"b" * 4096)

                nursery.start_soon(flood)
                err = await next_error(mux)
                nursery.cancel_scope.cancel()
            grown = peak()
        assert err.stream is bad
        assert err.errno == errno.EMSGSIZE
        assert f"max_message_size={limit}" in str(err)
        assert limit <= len(err.partial_bytes) <= limit + 65536
        assert set(err.partial_bytes) == {ord("b")}
        assert parser.searched <= 2 * len(err.partial_bytes)
        assert grown < 3 * limit + SLACK, grown
        assert good.state == "active"
        await check_both_ways(sock, good_peer, PeerReader(good_peer), b"after")


# ---------------------------------------------------------------------------
# A parser that misbehaves


class Oops(Exception):
    """An arbitrary bug in a user's parser."""


OOPS = Oops("the parser fell over")


def raising(view: memoryview) -> int:
    raise OOPS


def answering(answer: object) -> Callable[[memoryview], int]:
    def parser(view: memoryview) -> int:
        return answer if len(view) >= 4 else 0  # type: ignore[return-value]

    return parser


class ShortHeader:
    """A parser with a 4-byte header that answers 2."""

    header_size = 4

    def message_length(self, data: memoryview, /) -> int:
        return 2 if len(data) >= 4 else 0


def contradicting(view: memoryview) -> int:
    """Says 10 bytes are not enough, then that the message is 6 bytes long."""
    return 0 if len(view) <= 10 else 6


@pytest.mark.parametrize(
    ("parser", "data", "words", "bad_hdr_len"),
    [
        (raising, b"anything", "parser raised Oops: the parser fell over", 0),
        (answering(-5), b"abcd", "impossible length -5", 1),
        (answering(3.0), b"abcd", "parser returned 3.0, not an int", 1),
        (answering(None), b"abcd", "parser returned None, not an int", 1),
        (answering(True), b"abcd", "parser returned True, not an int", 1),
        (answering("12"), b"abcd", "parser returned '12', not an int", 1),
        (ShortHeader(), b"abcd", "impossible length 2", 1),
        (contradicting, b"0123456789", "impossible length 6", 1),
    ],
    ids=["raises", "negative", "float", "None", "bool", "str", "short", "contradicts"],
)
@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_misbehaving_parser_is_eproto(
    parser: object, data: bytes, words: str, bad_hdr_len: int, transport: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        mux = await stack.enter_async_context(trio_kcm.open_mux(parser=P, max_message_size=BIG_MAX))
        bad_ours: trio.abc.Stream
        bad_peer: trio.abc.Stream
        good_ours: trio.abc.Stream
        good_peer: trio.abc.Stream
        if transport == "tcp":
            lb = await stack.enter_async_context(loopback())
            bad_ours, bad_peer = await lb.pair()
            good_ours, good_peer = await lb.pair()
        else:
            bad_ours, bad_peer = trio.testing.memory_stream_pair()
            good_ours, good_peer = trio.testing.memory_stream_pair()
            stack.push_async_callback(bad_peer.aclose)
            stack.push_async_callback(good_peer.aclose)
        good = mux.attach(good_ours)
        sock = mux.socket()
        with traced() as peak:
            bad = mux.attach(bad_ours, parser=parser)  # type: ignore[arg-type]
            if parser is contradicting:
                # 10 bytes in a read of their own, then one more.
                await bad_peer.send_all(data)
                await trio.testing.wait_all_tasks_blocked()
                data += b"!"
                await bad_peer.send_all(b"!")
            else:
                await bad_peer.send_all(data)
            err = await next_error(mux)
            grown = peak()
        assert err.stream is bad
        assert err.errno == errno.EPROTO
        assert words in str(err), err
        assert err.partial_bytes == data
        if parser is raising:
            assert err.__cause__ is OOPS
        assert bad.statistics().rx_bad_hdr_len == bad_hdr_len
        assert grown < SLACK, grown
        assert bad.state == "failed"
        assert good.state == "active"
        await check_both_ways(sock, good_peer, PeerReader(good_peer), b"after")
        assert mux.statistics().stream_errors == 1
