"""Error isolation: each errno, the monitor feed, retries, auto_close."""

from __future__ import annotations

import errno
import struct

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import PeerReader, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


async def next_error(mux: trio_kcm.Mux) -> trio_kcm.StreamError:
    async for err in mux.errors():
        return err
    raise AssertionError("no error")


async def test_eof_mid_message_is_epipe_and_alone() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        bad_ours, bad_peer = trio.testing.memory_stream_pair()
        good_ours, good_peer = trio.testing.memory_stream_pair()
        bad = mux.attach(bad_ours)
        good = mux.attach(good_ours)
        sock = mux.socket()
        half = frame(b"half a message")[:7]
        await bad_peer.send_all(frame(b"whole") + half)
        await bad_peer.send_stream.aclose()
        err = await next_error(mux)
        assert isinstance(err, OSError)
        assert err.errno == errno.EPIPE
        assert err.stream is bad
        assert err.partial_bytes == half
        assert err.in_doubt == ()
        assert bad.state == "failed" == trio_kcm.StreamState.FAILED
        # The whole message still arrives; the other stream goes on in both directions.
        assert await sock.receive() == frame(b"whole")
        await good_peer.send_all(frame(b"still here"))
        assert await sock.receive() == frame(b"still here")
        await sock.send(frame(b"reply"))
        assert await PeerReader(good_peer).read_frames(1) == [frame(b"reply")]
        assert good.state == "active"
        stats = mux.statistics()
        assert stats.stream_errors == 1
        assert stats.streams == 1  # auto_close unattached the failed one
        with pytest.raises(trio.ClosedResourceError):  # auto_close closed it
            await bad_ours.send_all(b"x")


def rejecting(view: memoryview) -> int:
    """A parser that rejects the header b"EVIL"."""
    if len(view) < 4:
        return 0
    if bytes(view[:4]) == b"EVIL":
        raise trio_kcm.BadMessage("evil header")
    return int(struct.unpack(">I", view[:4])[0]) + 4


@pytest.mark.parametrize(
    ("parser", "data", "code", "counter"),
    [
        # BadMessage from the parser: EBADMSG
        (rejecting, b"EVIL", errno.EBADMSG, None),
        # negative length: EPROTO
        (lambda v: -1 if len(v) else 0, b"xx", errno.EPROTO, "rx_bad_hdr_len"),
        # not an int: EPROTO
        (lambda v: 2.0 if len(v) else 0, b"xx", errno.EPROTO, "rx_bad_hdr_len"),
        # shorter than its own header: EPROTO
        (
            trio_kcm.LengthPrefixed(">I", adjust=-10),
            struct.pack(">I", 2),
            errno.EPROTO,
            "rx_bad_hdr_len",
        ),
        # 4 GiB announced: EMSGSIZE
        (trio_kcm.LengthPrefixed(">I"), b"\xff\xff\xff\xff", errno.EMSGSIZE, "rx_msg_too_big"),
        # a parser that raises something else: EPROTO
        (lambda v: {}["x"], b"x", errno.EPROTO, None),
    ],
)
async def test_framing_errors(parser: object, data: bytes, code: int, counter: str | None) -> None:
    async with trio_kcm.open_mux(parser=P, max_message_size=1 << 20) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        other_ours, other_peer = trio.testing.memory_stream_pair()
        handle = mux.attach(ours, parser=parser)  # type: ignore[arg-type]
        mux.attach(other_ours)
        sock = mux.socket()
        await peer.send_all(data)
        err = await next_error(mux)
        assert err.errno == code
        assert err.stream is handle
        assert err.partial_bytes == data
        if code == errno.EBADMSG:
            assert isinstance(err.__cause__, trio_kcm.BadMessage)
        if counter is not None:
            assert getattr(handle.statistics(), counter) == 1
        await other_peer.send_all(frame(b"unaffected"))
        assert await sock.receive() == frame(b"unaffected")


async def test_assembly_timeout(autojump_clock: object) -> None:
    async with trio_kcm.open_mux(parser=P, assembly_timeout=10) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        sock = mux.socket()
        # Slow but within the limit, message by message: fine.
        for _ in range(3):
            message = frame(b"slow")
            await peer.send_all(message[:3])
            await trio.sleep(6)
            await peer.send_all(message[3:])
            assert await sock.receive() == message
        # Idle between messages does not count.
        await trio.sleep(100)
        # One byte per second (slowloris): fails 10 s after the message started.
        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def trickle() -> None:
                for byte in frame(b"x" * 100):
                    await peer.send_all(bytes([byte]))
                    await trio.sleep(1)

            nursery.start_soon(trickle)
            err = await next_error(mux)
            nursery.cancel_scope.cancel()
        assert err.errno == errno.ETIMEDOUT
        assert 10 <= trio.current_time() - start < 11.5
        assert handle.statistics().rx_msg_timeouts == 1
        assert 0 < len(err.partial_bytes) <= 11


async def test_write_failure_retries_on_another_stream() -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
        a_ours, _a_peer = trio.testing.memory_stream_pair()
        b_ours, b_peer = trio.testing.memory_stream_pair()

        async def broken() -> None:
            raise trio.BrokenResourceError("wire cut")

        a_ours.send_stream.send_all_hook = broken
        a = mux.attach(a_ours)
        mux.attach(b_ours)
        sock = mux.socket()
        sent = [frame(b"m%d" % i) for i in range(10)]
        for message in sent:
            await sock.send(message)
        err = await next_error(mux)
        assert err.errno == errno.EPIPE and err.stream is a
        assert isinstance(err.__cause__, trio.BrokenResourceError)
        assert len(err.in_doubt) >= 1
        got = await PeerReader(b_peer).read_frames(10)
        assert sorted(got) == sorted(sent)
        stats = mux.statistics()
        assert stats.tx_retries >= 1
        assert stats.tx_msgs == 10
        assert a.statistics().tx_aborts == 1


async def test_in_doubt_not_retried_when_asked() -> None:
    async with trio_kcm.open_mux(parser=P, retry_in_doubt=False) as mux:
        a_ours, _a_peer = trio.testing.memory_stream_pair()

        async def broken() -> None:
            raise trio.BrokenResourceError("wire cut")

        a_ours.send_stream.send_all_hook = broken
        mux.attach(a_ours)
        sock = mux.socket()
        await sock.send(frame(b"lost?"))
        err = await next_error(mux)
        assert err.in_doubt == (frame(b"lost?"),)
        b_ours, b_peer = trio.testing.memory_stream_pair()
        mux.attach(b_ours)
        await sock.send(frame(b"next"))
        assert await PeerReader(b_peer).read_frames(1) == [frame(b"next")]
        assert sock.statistics().tx_queued_msgs == 0


async def test_auto_close_false_leaves_the_stream_to_the_application() -> None:
    async with trio_kcm.open_mux(parser=P, auto_close=False) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        await peer.send_all(b"\xff\xff\xff\xff")  # 4 GiB: EMSGSIZE
        err = await next_error(mux)
        assert err.errno == errno.EMSGSIZE
        assert handle in mux.streams and handle.state == "failed"
        stream = await mux.unattach(err.stream)
        assert stream is ours
        assert handle.state == "failed"
        assert handle not in mux.streams
        # Not closed by the mux: the application can still use it.
        await ours.send_all(b"bye")
        assert await peer.receive_some(10) == b"bye"
        await ours.aclose()


async def test_errors_wait_for_a_late_monitor_and_are_taken_once() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        peers = []
        for _ in range(3):
            ours, peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            peers.append(peer)
        for peer in peers:
            await peer.send_stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        seen: list[trio_kcm.StreamError] = []

        async def monitor() -> None:
            async for err in mux.errors():
                seen.append(err)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor)
            nursery.start_soon(monitor)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert len(seen) == 3
        assert len({id(e.stream) for e in seen}) == 3


async def test_errors_iteration_ends_after_the_mux_closes() -> None:
    async with trio.open_nursery() as nursery:
        seen = []
        async with trio_kcm.open_mux(parser=P) as mux:

            async def monitor() -> None:
                async for err in mux.errors():
                    seen.append(err.errno)

            nursery.start_soon(monitor)
            ours, peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            await peer.send_stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
    assert seen == [errno.EPIPE]


async def test_a_read_that_completes_as_the_deadline_passes_is_used(
    autojump_clock: object,
) -> None:
    # A read can complete in the same instant its deadline passes (trio hands a
    # finished operation's result back): its bytes must not vanish.
    message = frame(b"just in time")

    class Late(trio.abc.Stream):
        def __init__(self) -> None:
            self.reads = [message[:6], message[6:]]

        async def receive_some(self, max_bytes: int | None = None) -> bytes:
            if not self.reads:
                await trio.sleep_forever()
            if len(self.reads) == 1:
                with trio.CancelScope(shield=True):
                    await trio.sleep(5)  # past the deadline; not cancellable
            else:
                await trio.lowlevel.checkpoint()
            return self.reads.pop(0)

        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            await trio.sleep_forever()  # pragma: no cover

        async def wait_send_all_might_not_block(self) -> None:
            await trio.sleep_forever()  # pragma: no cover

        async def aclose(self) -> None:
            await trio.lowlevel.checkpoint()

    async with trio_kcm.open_mux(parser=P, assembly_timeout=2) as mux:
        handle = mux.attach(Late())
        sock = mux.socket()
        assert await sock.receive() == message
        assert handle.state == "active"
        assert handle.statistics().rx_msg_timeouts == 0
