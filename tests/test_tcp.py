"""The mux over real loopback TCP connections and Unix sockets.

Peers are driven with the reference framer of ``conftest`` (plain ``struct``).
Waits for the kernel are either ``wait_all_tasks_blocked`` or a bounded poll of
a condition that is then asserted; nothing sleeps "to settle".
"""

from __future__ import annotations

import errno
import random
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import trio_kcm
from trio_kcm._stream import life_of
from trio_kcm._turns import MAX_RUN_CALLS

from .conftest import PeerReader, frame, unframe_all

P = trio_kcm.LengthPrefixed(">I", adjust=4)
LOOPBACK = "127.0.0.1"
# SO_LINGER (on, 0 seconds): close() sends a RST instead of a FIN.
LINGER_RESET = struct.pack("ii", 1, 0)


# ---------------------------------------------------------------------------
# helpers


class Loopback:
    """A loopback TCP listener that makes connected pairs; closes them all at exit."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self.listener = listener
        self.port = listener.socket.getsockname()[1]
        self.streams: list[trio.SocketStream] = []

    async def pair(self, *, client_rcvbuf: int | None = None) -> tuple[trio.SocketStream, ...]:
        """A connected (client, server) pair; the client is what the mux gets."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if client_rcvbuf is not None:
            # Before connect, so the window is sized from it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_rcvbuf)
        try:
            await sock.connect((LOOPBACK, self.port))
        except BaseException:
            sock.close()
            raise
        client = trio.SocketStream(sock)
        self.streams.append(client)
        server = await self.listener.accept()
        assert isinstance(server, trio.SocketStream)
        self.streams.append(server)
        return client, server


@asynccontextmanager
async def loopback(*, server_rcvbuf: int | None = None) -> AsyncIterator[Loopback]:
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    try:
        assert len(listeners) == 1
        if server_rcvbuf is not None:
            # Accepted sockets inherit it (and it turns off autotuning).
            listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, server_rcvbuf)
        lb = Loopback(listeners[0])
        try:
            yield lb
        finally:
            for stream in lb.streams:
                await trio.aclose_forcefully(stream)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def next_error(mux: trio_kcm.Mux) -> trio_kcm.StreamError:
    async for err in mux.errors():
        return err
    raise AssertionError("the mux closed without an error")


async def read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return data


async def read_frames_until_eof(stream: trio.abc.ReceiveStream, out: list[bytes]) -> None:
    """A peer: all whole frames until EOF into ``out``; anything else is a failure."""
    frames, rest = await PeerReader(stream).read_until_eof()
    assert rest == b"", f"the peer saw a torn frame: {len(rest)} trailing bytes"
    out.extend(frames)


def tagged(tag: bytes, i: int, rng: random.Random) -> bytes:
    """A framed message with a unique payload of varying size."""
    return frame(b"%s-%06d:" % (tag, i) + bytes([i % 251]) * rng.randrange(0, 3000))


# ---------------------------------------------------------------------------
# 1. M x N over TCP


async def test_four_connections_eight_sockets_receive() -> None:
    rng = random.Random(1)
    per_peer = 500
    expected = {c: [tagged(b"c%d" % c, i, rng) for i in range(per_peer)] for c in range(4)}
    total = 4 * per_peer
    got: list[bytes] = []
    done = trio.Event()

    async def peer_send(server: trio.SocketStream, frames: list[bytes], seed: int) -> None:
        # The whole stream in chunks that cut frames anywhere.
        chunk_rng = random.Random(seed)
        data = b"".join(frames)
        pos = 0
        while pos < len(data):
            n = chunk_rng.randrange(1, 8000)
            await server.send_all(data[pos : pos + n])
            pos += n

    async def worker(sock: trio_kcm.KCMSocket) -> None:
        while True:
            got.extend(await sock.receive_many(16))
            if len(got) >= total:
                done.set()

    async with loopback() as lb, trio_kcm.open_mux(parser=P) as mux:
        pairs = [await lb.pair() for _ in range(4)]
        handles = [mux.attach(client) for client, _ in pairs]
        first = mux.socket()
        socks = [first] + [first.clone() for _ in range(7)]
        async with trio.open_nursery() as peers:
            for c, (_, server) in enumerate(pairs):
                peers.start_soon(peer_send, server, expected[c], c)
            async with trio.open_nursery() as workers:
                for sock in socks:
                    workers.start_soon(worker, sock)
                await done.wait()
                workers.cancel_scope.cancel()
        # Nothing more is on its way: nothing extra may be queued anywhere.
        await trio.testing.wait_all_tasks_blocked()
        assert all(s.statistics().rx_queued_msgs == 0 for s in socks)
        assert Counter(got) == Counter(m for frames in expected.values() for m in frames)
        assert len(got) == total
        stats = mux.statistics()
        assert stats.rx_msgs == total
        assert stats.stream_errors == 0
        assert sum(s.statistics().rx_msgs for s in socks) == total
        for c, handle in enumerate(handles):
            assert handle.statistics().rx_msgs == per_peer
            assert handle.statistics().rx_bytes == sum(map(len, expected[c]))
            assert handle.state == "active"


async def test_sixteen_senders_four_connections() -> None:
    tasks, per_task = 16, 200
    peer_frames: list[list[bytes]] = [[] for _ in range(4)]
    sent: list[bytes] = []

    def message(task: int, seq: int) -> bytes:
        return frame(struct.pack(">HI", task, seq) + b"x" * ((task * 37 + seq * 11) % 1500))

    async def sender(sock: trio_kcm.KCMSocket, task: int) -> None:
        for seq in range(per_task):
            m = message(task, seq)
            await sock.send(m)
            sent.append(m)
            if seq % 16 == 0:
                await trio.lowlevel.checkpoint()  # let other senders in between

    async with loopback() as lb:
        pairs = [await lb.pair() for _ in range(4)]
        async with trio.open_nursery() as peers:
            for i, (_, server) in enumerate(pairs):
                peers.start_soon(read_frames_until_eof, server, peer_frames[i])
            async with trio_kcm.open_mux(parser=P) as mux:
                handles = [mux.attach(client) for client, _ in pairs]
                first = mux.socket()
                socks = [first] + [first.clone() for _ in range(7)]
                async with trio.open_nursery() as senders:
                    for task in range(tasks):
                        senders.start_soon(sender, socks[task % len(socks)], task)
            # Leaving the mux flushed everything and closed the streams: the
            # peers have read to EOF.
    assert len(sent) == tasks * per_task
    received = [m for frames in peer_frames for m in frames]
    assert Counter(received) == Counter(sent)
    assert all(n == 1 for n in Counter(received).values())
    for frames in peer_frames:
        last: dict[int, int] = {}
        for m in frames:
            task, seq = struct.unpack_from(">HI", m, 4)
            assert seq > last.get(task, -1), f"task {task}: seq {seq} after {last[task]}"
            last[task] = seq
    stats = mux.statistics()
    assert stats.tx_msgs == tasks * per_task
    assert stats.tx_bytes == sum(map(len, sent))
    assert stats.stream_errors == 0
    assert stats.tx_retries == 0
    assert sum(h.statistics().tx_msgs for h in handles) == tasks * per_task
    for h, frames in zip(handles, peer_frames, strict=True):
        assert h.statistics().tx_msgs == len(frames)


# ---------------------------------------------------------------------------
# 2. Backpressure reaches a flooding peer


async def test_backpressure_stops_a_flooding_peer() -> None:
    rbs = 64 * 1024
    payload_size = 1024
    count = 4096  # 4 MiB: far more than the socket, the reader and the kernel hold
    frames = [
        frame(struct.pack(">I", i) + bytes([i % 256]) * (payload_size - 4)) for i in range(count)
    ]
    msg_size = len(frames[0])
    progress = {"bytes": 0, "msgs": 0}
    peer_done = trio.Event()

    async def flood(server: trio.SocketStream) -> None:
        for f in frames:
            await server.send_all(f)
            progress["bytes"] += len(f)
            progress["msgs"] += 1
        peer_done.set()

    async with loopback() as lb:
        client, server = await lb.pair(client_rcvbuf=64 * 1024)
        # Bound the kernel's buffering on the peer's side too (no autotuning).
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
            handle = mux.attach(client)
            sock = mux.socket(receive_buffer_size=rbs)
            nursery.start_soon(flood, server)

            # Wait (bounded) until the reader is paused and the peer has made no
            # progress for a while.
            stalled_for = 0
            last = -1
            for _ in range(500):
                await trio.sleep(0.01)
                if progress["bytes"] == last and handle.statistics().rx_paused > 0:
                    stalled_for += 1
                    if stalled_for >= 10:
                        break
                else:
                    stalled_for = 0
                    last = progress["bytes"]
            else:
                raise AssertionError(f"the peer never stalled: {progress}")

            await trio.testing.wait_all_tasks_blocked()
            assert progress["bytes"] == last, "the peer's send_all is not blocked"
            assert not peer_done.is_set()
            assert progress["msgs"] < count // 2
            stalled_at = progress["msgs"]
            stats = handle.statistics()
            assert stats.rx_paused > 0
            assert stats.state == "active"
            queued = sock.statistics().rx_queued_bytes
            assert rbs <= queued <= rbs + msg_size
            # The mux stopped reading: it holds a small part of the flood.
            assert mux.statistics().rx_bytes <= 1024 * 1024
            assert mux.statistics().rx_msgs <= stalled_at

            # Now receive: the peer goes on and everything arrives, in order.
            got: list[bytes] = []
            while len(got) < count:
                got.extend(await sock.receive_many(64))
            assert got == frames
            await peer_done.wait()
        assert handle.statistics().rx_msgs == count
        assert sock.statistics().rx_msgs == count
        assert mux.statistics().stream_errors == 0


# ---------------------------------------------------------------------------
# 3. A peer that dies mid-message, or resets


async def test_peer_dies_mid_message() -> None:
    full = frame(b"whole message")
    second = frame(b"this one never finishes" * 10)
    half = second[: len(second) // 2]
    async with loopback() as lb, trio_kcm.open_mux(parser=P) as mux:
        dying_client, dying_peer = await lb.pair()
        good_client, good_peer = await lb.pair()
        dying = mux.attach(dying_client)
        good = mux.attach(good_client)
        sock = mux.socket()

        await dying_peer.send_all(full + half)
        await dying_peer.aclose()

        assert await sock.receive() == full
        err = await next_error(mux)
        assert isinstance(err, trio_kcm.StreamError)
        assert isinstance(err, OSError)
        assert err.errno == errno.EPIPE
        assert err.stream is dying
        assert err.partial_bytes == half
        assert err.in_doubt == ()
        assert dying.state == "failed"
        assert good.state == "active"
        assert mux.statistics().stream_errors == 1

        # The other connection works in both directions.
        reader = PeerReader(good_peer)
        out = [frame(b"after %d" % i) for i in range(20)]
        for m in out:
            await sock.send(m)
        assert await reader.read_frames(len(out)) == out
        back = [frame(b"back %d" % i) for i in range(20)]
        await good_peer.send_all(b"".join(back))
        got: list[bytes] = []
        while len(got) < len(back):
            got.extend(await sock.receive_many(64))
        assert got == back
        assert good.statistics().tx_msgs == len(out)
        assert good.statistics().rx_msgs == len(back)
        assert mux.statistics().stream_errors == 1


async def test_peer_resets_the_connection() -> None:
    async with loopback() as lb, trio_kcm.open_mux(parser=P) as mux:
        resetting_client, resetting_peer = await lb.pair()
        good_client, good_peer = await lb.pair()
        resetting = mux.attach(resetting_client)
        good = mux.attach(good_client)
        sock = mux.socket()

        await resetting_peer.send_all(frame(b"before the reset"))
        assert await sock.receive() == frame(b"before the reset")
        resetting_peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        await resetting_peer.aclose()

        err = await next_error(mux)
        assert err.errno == errno.EPIPE
        assert err.stream is resetting
        assert err.partial_bytes == b""
        assert err.__cause__ is not None
        # trio's BrokenResourceError, itself caused by the kernel's ECONNRESET.
        assert isinstance(err.__cause__, trio.BrokenResourceError)
        assert isinstance(err.__cause__.__cause__, ConnectionResetError)
        assert resetting.state == "failed"

        await sock.send(frame(b"still here"))
        assert await PeerReader(good_peer).read_frames(1) == [frame(b"still here")]
        await good_peer.send_all(frame(b"and back"))
        assert await sock.receive() == frame(b"and back")
        assert good.state == "active"
        assert mux.statistics().stream_errors == 1


# ---------------------------------------------------------------------------
# 4. Transmit retry on the other connection


async def test_queued_and_in_doubt_messages_go_out_on_the_other_connection() -> None:
    # Small kernel buffers on connection A: a 1 MiB write cannot complete
    # while its peer does not read.
    group1 = [frame(b"g1-%05d:" % i + b"a" * 1000) for i in range(1024)]  # ~1 MiB, one group
    group2 = [frame(b"g2-%05d:" % i + b"b" * 100) for i in range(64)]  # one group each
    group3 = [frame(b"g3-%05d:" % i + b"c" * 100) for i in range(64)]  # after the failure
    b_frames: list[bytes] = []
    async with loopback(server_rcvbuf=64 * 1024) as lb:
        a_client, a_peer = await lb.pair()
        b_client, b_peer = await lb.pair()
        a_client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        async with trio.open_nursery() as peers:
            peers.start_soon(read_frames_until_eof, b_peer, b_frames)
            async with trio_kcm.open_mux(parser=P) as mux:
                sock = mux.socket(send_buffer_size=4 * 1024 * 1024)
                a = mux.attach(a_client)
                await sock.send_many(group1)
                await trio.testing.wait_all_tasks_blocked()  # A's writer is stuck in it
                for m in group2:
                    await sock.send(m)
                await trio.testing.wait_all_tasks_blocked()
                assert a.statistics().tx_msgs == 0
                assert a.statistics().tx_queued_msgs == len(group1) + len(group2)
                b = mux.attach(b_client)

                # A's peer dies without reading a byte.
                a_peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                await a_peer.aclose()
                err = await next_error(mux)
                assert err.errno == errno.EPIPE
                assert err.stream is a
                assert err.__cause__ is not None
                assert list(err.in_doubt) == group1  # the write that was under way
                assert a.state == "failed"
                assert a.statistics().tx_aborts == 1

                for m in group3:
                    await sock.send(m)
            # The mux flushed and closed B: its peer has read to EOF.

    stats = mux.statistics()
    assert stats.stream_errors == 1
    assert stats.tx_retries == len(group1) + len(group2)  # in doubt + queued, each once
    everything = group1 + group2 + group3
    assert stats.tx_msgs == len(everything)
    assert b.statistics().tx_msgs == len(everything)
    assert a.statistics().tx_msgs == 0
    # A's peer got nothing, so each arrives exactly once on B (an in-doubt one
    # could have come twice had A's peer read it), and in the order sent.
    counts = Counter(b_frames)
    assert set(counts) == set(everything)
    for m, n in counts.items():
        assert n == 1 or (n == 2 and m in err.in_doubt)
    assert b_frames == everything


# ---------------------------------------------------------------------------
# 5. TCP_INFO, Unix sockets


async def test_tcp_info() -> None:
    async with loopback() as lb, trio_kcm.open_mux(parser=P) as mux:
        client, _server = await lb.pair()
        tcp = mux.attach(client)
        info = tcp.tcp_info()
        assert isinstance(info, trio_kcm.TCPInfo)
        assert info.state == 1  # TCP_ESTABLISHED
        assert info.rtt >= 0
        assert info.retransmits >= 0

        a, b = trio.socket.socketpair()
        unix_ours, unix_peer = trio.SocketStream(a), trio.SocketStream(b)
        try:
            unix = mux.attach(unix_ours)
            assert unix.tcp_info() is None
            memory_ours, memory_peer = trio.testing.memory_stream_pair()
            memory = mux.attach(memory_ours)
            assert memory.tcp_info() is None
            assert await mux.unattach(memory) is memory_ours
            await memory_ours.aclose()
            await memory_peer.aclose()
        finally:
            await unix_peer.aclose()


async def test_unix_socketpair_as_a_mux_stream() -> None:
    a, b = trio.socket.socketpair()
    ours, peer = trio.SocketStream(a), trio.SocketStream(b)
    try:
        async with trio_kcm.open_mux(parser=P) as mux:
            handle = mux.attach(ours)
            sock = mux.socket()
            out = [frame(b"to the peer %d" % i) for i in range(10)]
            await sock.send_many(out)
            assert await PeerReader(peer).read_frames(10) == out
            back = [frame(b"from the peer %d" % i * (i + 1)) for i in range(10)]
            await peer.send_all(b"".join(back))
            got: list[bytes] = []
            while len(got) < len(back):
                got.extend(await sock.receive_many(64))
            assert got == back
            assert handle.statistics().rx_msgs == 10
            assert handle.statistics().tx_msgs == 10
    finally:
        await peer.aclose()
        await ours.aclose()


# ---------------------------------------------------------------------------
# 6. Unattach


async def test_unattach_idle_tcp_stream_hands_it_back_open() -> None:
    async with loopback() as lb, trio_kcm.open_mux(parser=P) as mux:
        client, server = await lb.pair()
        handle = mux.attach(client)
        sock = mux.socket()
        await sock.send(frame(b"via the mux"))
        assert await PeerReader(server).read_frames(1) == [frame(b"via the mux")]
        await server.send_all(frame(b"to the mux"))
        assert await sock.receive() == frame(b"to the mux")

        stream = await mux.unattach(handle)
        assert stream is client
        assert handle.state == "unattached"
        assert handle.unread_data == b""
        assert handle not in mux.streams
        # It is ours now, and open: use it by hand.
        await stream.send_all(frame(b"by hand"))
        assert await PeerReader(server).read_frames(1) == [frame(b"by hand")]
        await server.send_all(frame(b"by hand, back"))
        data = await read_exactly(stream, len(frame(b"by hand, back")))
        assert unframe_all(data) == ([frame(b"by hand, back")], b"")
        await stream.aclose()
    assert mux.statistics().stream_errors == 0


async def test_unattach_tcp_stream_mid_message() -> None:
    full = frame(b"F" * 50)
    second = frame(b"S" * 60)
    half = second[:30]
    async with loopback() as lb, trio_kcm.open_mux(parser=P) as mux:
        client, server = await lb.pair()
        handle = mux.attach(client)
        sock = mux.socket()
        # One write of one and a half frames: one read for the mux.
        await server.send_all(full + half)
        assert await sock.receive() == full

        stream = await mux.unattach(handle)
        assert stream is client
        assert handle.state == "unattached"
        unread = handle.unread_data
        assert second.startswith(unread)
        assert unread == half
        # The stream yields exactly what follows the unread bytes.
        await server.send_all(second[len(half) :])
        rest = await read_exactly(stream, len(second) - len(unread))
        assert unread + rest == second
        # Still a healthy connection both ways.
        await stream.send_all(frame(b"done"))
        assert await PeerReader(server).read_frames(1) == [frame(b"done")]
        await stream.aclose()
        assert mux.statistics().rx_msgs == 1
        assert mux.statistics().stream_errors == 0


async def test_a_write_the_kernel_takes_only_in_part_is_finished_whole() -> None:
    # The sending task writes at once to an idle TCP stream; what the kernel
    # does not take (a small send buffer, a peer not reading yet) is left to
    # the stream's writer, which finishes that write before any other.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = frame(random.Random(5).randbytes(1 << 20))
    async with trio_kcm.open_mux(
        parser=P, max_message_size=2 << 20, send_buffer_size=4 << 20
    ) as mux:
        handle = mux.attach(client)
        sock = mux.socket()
        await trio.testing.wait_all_tasks_blocked()  # the stream's writer is idle
        await sock.send(big)  # accepted; the kernel took only the start of it
        await trio.testing.wait_all_tasks_blocked()
        assert handle.statistics().tx_msgs == 0  # the writer waits for the peer
        await sock.send(frame(b"after"))
        await sock.send_many([frame(b"one"), frame(b"two")])
        reader = PeerReader(server)
        assert await reader.read_frames(4) == [big, frame(b"after"), frame(b"one"), frame(b"two")]
        await trio.testing.wait_all_tasks_blocked()
        assert handle.statistics().tx_msgs == 4
        assert mux.statistics().stream_errors == 0
    await server.aclose()


async def test_pinned_replies_and_plain_sends_interleave_whole_over_tcp() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    expected = []
    async with trio_kcm.open_mux(parser=P) as mux:
        handle = mux.attach(client)
        sock = mux.socket()
        async with trio.open_nursery() as nursery:
            reader = PeerReader(server)
            got: list[bytes] = []

            async def read() -> None:
                got.extend(await reader.read_frames(300))

            nursery.start_soon(read)
            for i in range(100):
                for m in (frame(b"s%d" % i), frame(b"t%d" % i)):
                    expected.append(m)
                    if i % 2:
                        await sock.send_to(m, handle)
                    else:
                        await sock.send(m)
                expected.append(frame(b"m%d" % i))
                await sock.send_many([frame(b"m%d" % i)])
        assert got == expected  # one socket, one stream: its order, every message whole
    await server.aclose()


class _WriterSteps(trio.abc.Instrument):
    """Counts the steps of the mux's writer tasks."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Transmitter.writer"):
            self.steps += 1


class _Writes:
    """Counts a TCP stream's writes: by its writer task, and by sending tasks.

    Both write through the stream's transmit side's ``eager_send`` (call
    :meth:`watch` right after attaching, before the writer task starts); the
    task making the call tells them apart.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.by_writer = 0
        self.by_sender = 0

    def watch(self, handle: trio_kcm.AttachedStream) -> None:
        tx = life_of(handle).tx
        eager = tx.eager_send
        assert eager is not None

        def counted(data: bytes | memoryview) -> int:
            if trio.lowlevel.current_task().name.endswith("Transmitter.writer"):
                self.by_writer += 1
            else:
                self.by_sender += 1
            return eager(data)

        tx.eager_send = counted


@asynccontextmanager
async def _counted_tcp_mux() -> AsyncIterator[
    tuple[trio_kcm.KCMSocket, trio_kcm.AttachedStream, _Writes, trio.SocketStream]
]:
    """A mux with one idle loopback TCP stream whose writes are counted."""
    async with loopback() as lb:
        client, server = await lb.pair()
        writes = _Writes(client)
        async with trio_kcm.open_mux(parser=P) as mux:
            handle = mux.attach(client)
            writes.watch(handle)
            sock = mux.socket()
            await trio.testing.wait_all_tasks_blocked()
            yield sock, handle, writes, server


async def test_the_sending_task_writes_to_an_idle_tcp_stream_without_waking_its_writer() -> None:
    # Request/response, one request in flight: each request is written by
    # the sending task before send() returns, and the writer never runs.
    async with _counted_tcp_mux() as (sock, handle, writes, server), trio.open_nursery() as nursery:

        async def answer() -> None:
            peer = PeerReader(server)
            while True:
                [request] = await peer.read_frames(1)
                await server.send_all(frame(b"re:" + request[4:]))

        nursery.start_soon(answer)
        steps = _WriterSteps()
        trio.lowlevel.add_instrument(steps)
        try:
            for i in range(10):
                await sock.send(frame(b"m%d" % i))
                # Written by the time send() returns: by the sending task.
                assert handle.statistics().tx_msgs == i + 1
                assert await sock.receive() == frame(b"re:m%d" % i)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert steps.steps == 0
        assert (writes.by_sender, writes.by_writer) == (10, 0)
        nursery.cancel_scope.cancel()


async def test_a_run_of_sends_is_written_in_one_write_when_the_task_yields(
    frozen_turns: None,
) -> None:
    # Sends that skip their schedule point (see _turns.py): the first is
    # written by the sending task, the rest wait for the writer, which
    # writes them together once the task yields -- at the latest at the
    # send that may not skip its schedule point.
    async with _counted_tcp_mux() as (sock, handle, writes, server):
        steps = _WriterSteps()
        trio.lowlevel.add_instrument(steps)
        try:
            for i in range(MAX_RUN_CALLS):
                await sock.send(frame(b"m%d" % i))
            # No yield yet: the writer has not run, the first message is out.
            assert (steps.steps, handle.statistics().tx_msgs) == (0, 1)
            await sock.send(frame(b"last"))  # may not skip: it yields
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert (writes.by_sender, writes.by_writer) == (1, 1)
        # One step of the writer: woken, it wrote and completed the write in
        # that step (no schedule point between its last system call and the
        # completion, so a stream failing meanwhile cannot report these
        # messages as in doubt), then parked.
        assert steps.steps == 1
        assert handle.statistics().tx_msgs == MAX_RUN_CALLS + 1
        got = await PeerReader(server).read_frames(MAX_RUN_CALLS + 1)
        assert got == [frame(b"m%d" % i) for i in range(MAX_RUN_CALLS)] + [frame(b"last")]


async def test_sends_from_many_tasks_in_one_tick_share_one_write() -> None:
    # The first sender writes its message itself; the 15 sends that follow
    # before it reaches its schedule point are queued for the writer, which
    # writes them together (not one write each).
    async with _counted_tcp_mux() as (sock, handle, writes, server):
        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(sock.send, frame(b"task%d" % i))
        await trio.testing.wait_all_tasks_blocked()
        assert (writes.by_sender, writes.by_writer) == (1, 1)
        assert handle.statistics().tx_msgs == 16
        got = await PeerReader(server).read_frames(16)
        assert sorted(got) == sorted(frame(b"task%d" % i) for i in range(16))


async def test_the_reader_waits_before_reading_after_a_short_read() -> None:
    # A plain SocketStream's reader waits for data, then reads it with one
    # system call, after a read that did not fill its buffer; after a full
    # read it tries receive_some first, since more is likely there.
    from trio_kcm._receive import READ_SIZE

    async with loopback() as lb, trio_kcm.open_mux(parser=P) as mux:
        client, peer = await lb.pair()
        tries = 0
        recv = client.socket.recv

        async def counted_recv(*args: object) -> bytes:
            nonlocal tries
            tries += 1
            return await recv(*args)  # type: ignore[arg-type]

        client.socket.recv = counted_recv  # type: ignore[method-assign]
        mux.attach(client)
        sock = mux.socket()
        for i in range(10):
            await peer.send_all(frame(b"m%d" % i))
            assert await sock.receive() == frame(b"m%d" % i)
        assert tries == 0  # every read was short: none went through receive_some
        burst = [frame(b"%05d" % i + b"x" * 1000) for i in range(3 * READ_SIZE // 1000)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.send_all, b"".join(burst))
            got = []
            while len(got) < len(burst):
                got.extend(await sock.receive_many(1000))
        assert got == burst
        assert tries >= 1  # a full read was followed by receive_some


async def test_the_readers_wait_survives_a_spurious_wakeup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trio_kcm._receive

    real_read = trio_kcm._receive.os.read
    spurious = 0

    def read_once_blocking(fd: int, n: int) -> bytes:
        nonlocal spurious
        if spurious == 0:
            spurious += 1
            raise BlockingIOError
        return real_read(fd, n)

    monkeypatch.setattr(trio_kcm._receive.os, "read", read_once_blocking)
    with trio.fail_after(10):
        await _echo_once_after_a_spurious_wakeup()
    assert spurious == 1


async def _echo_once_after_a_spurious_wakeup() -> None:
    async with loopback() as lb, trio_kcm.open_mux(parser=P) as mux:
        client, peer = await lb.pair()
        mux.attach(client)
        sock = mux.socket()
        await peer.send_all(frame(b"after a spurious wakeup"))
        assert await sock.receive() == frame(b"after a spurious wakeup")
