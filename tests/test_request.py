"""Mux.open_requester: calls over a mux's streams, replies matched to them."""

from __future__ import annotations

import errno
from collections.abc import Callable, Hashable

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import HeldStream, PeerReader, deadline, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


def request_id(message: bytes) -> Hashable:
    """The tests' protocol: ``<id>:<body>`` in a frame; replies keep the id."""
    return message[4:].split(b":", 1)[0]


def answer(request: bytes) -> bytes:
    ident, body = request[4:].split(b":", 1)
    return frame(ident + b":re " + body)


async def server(
    stream: trio.abc.Stream,
    *,
    batch: int = 1,
    reverse: bool = False,
    seen: list[bytes] | None = None,
    reply: Callable[[bytes], bytes] = answer,
) -> None:
    """The far end: read ``batch`` requests, answer them (backwards if ``reverse``)."""
    reader = PeerReader(stream)
    while True:
        try:
            requests = await reader.read_frames(batch)
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if seen is not None:
            seen.extend(requests)
        replies = [reply(r) for r in requests]
        if reverse:
            replies.reverse()
        try:
            await stream.send_all(b"".join(replies))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


class Outcomes(dict[int, object]):
    """What calls returned or raised, by call number; ``complete`` once all are in."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.complete = trio.Event()

    async def call(self, requester: trio_kcm.Requester, i: int, message: bytes) -> None:
        try:
            self[i] = await requester.request(message)
        except trio.BrokenResourceError as exc:
            self[i] = exc
        if len(self) == self.count:
            self.complete.set()


def attach_server(
    mux: trio_kcm.Mux, nursery: trio.Nursery, **kwargs: object
) -> trio_kcm.AttachedStream:
    ours, theirs = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: server(theirs, **kwargs))  # type: ignore[arg-type]
    return mux.attach(ours)


@deadline(10)
async def test_concurrent_calls_get_their_own_replies_by_key() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        # Each server answers 4 requests at a time, in reverse order.
        handles = [attach_server(mux, nursery, batch=4, reverse=True) for _ in range(2)]
        got: dict[int, bytes] = {}
        async with mux.open_requester(key=request_id) as requester:
            async with trio.open_nursery() as callers:
                for i in range(64):

                    async def call(i: int = i) -> None:
                        got[i] = await requester.request(frame(b"%d:hello %d" % (i, i)))

                    callers.start_soon(call)
            stats = requester.statistics()
        assert got == {i: frame(b"%d:re hello %d" % (i, i)) for i in range(64)}
        assert (stats.calls, stats.replies, stats.calls_waiting) == (64, 64, 0)
        assert (stats.replies_dropped, stats.calls_failed, stats.retries) == (0, 0, 0)
        # Fewest outstanding first: the calls spread evenly over both streams.
        assert [h.statistics().tx_msgs for h in handles] == [32, 32]
        nursery.cancel_scope.cancel()


@deadline(10)
async def test_replies_match_by_order_per_stream_without_a_key() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        for _ in range(3):
            attach_server(mux, nursery, batch=2)
        got: dict[int, bytes] = {}
        async with mux.open_requester() as requester, trio.open_nursery() as callers:
            for i in range(30):

                async def call(i: int = i) -> None:
                    # The same bytes object twice: order alone decides.
                    got[i] = await requester.request(frame(b"x:%d" % (i // 2)))

                callers.start_soon(call)
        assert got == {i: frame(b"x:re %d" % (i // 2)) for i in range(30)}
        nursery.cancel_scope.cancel()


@deadline(10)
async def test_order_matching_with_a_peer_that_reorders_goes_wrong_so_use_a_key() -> None:
    # The documented contract: without a key the peer must answer in order.
    # A reordering peer gives calls each other's replies -- this shows the
    # test above would catch a requester that ignored order.
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        attach_server(mux, nursery, batch=2, reverse=True)
        got: dict[int, bytes] = {}
        async with mux.open_requester() as requester, trio.open_nursery() as callers:
            for i in range(2):

                async def call(i: int = i) -> None:
                    got[i] = await requester.request(frame(b"%d:q" % i))

                callers.start_soon(call)
        assert got == {0: frame(b"1:re q"), 1: frame(b"0:re q")}
        nursery.cancel_scope.cancel()


@deadline(10)
async def test_a_failed_stream_fails_the_calls_in_doubt_and_retries_the_unsent() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        breaking = HeldStream()
        broken = mux.attach(breaking)
        async with mux.open_requester(key=request_id) as requester:
            results = Outcomes(3)
            for i in range(3):  # all three go to the only stream
                nursery.start_soon(results.call, requester, i, frame(b"%d:q" % i))
                await trio.testing.wait_all_tasks_blocked()
            assert breaking.started == [frame(b"0:q")]  # 1 and 2 queued behind it
            healthy = attach_server(mux, nursery)
            breaking.break_it()  # the write in flight fails: the stream fails
            await results.complete.wait()
            stats = requester.statistics()
        failed = results[0]
        assert isinstance(failed, trio.BrokenResourceError)
        assert isinstance(failed.__cause__, trio_kcm.StreamError)
        assert failed.__cause__.errno == errno.EPIPE
        assert failed.__cause__.stream is broken
        assert failed.__cause__.in_doubt == (frame(b"0:q"),)
        # Never written: sent again, on the healthy stream, and answered.
        assert results[1] == frame(b"1:re q")
        assert results[2] == frame(b"2:re q")
        assert healthy.statistics().tx_msgs == 2
        assert (stats.calls_failed, stats.retries, stats.replies) == (1, 2, 2)
        nursery.cancel_scope.cancel()


@deadline(10)
async def test_a_request_written_whole_before_the_failure_fails_its_call() -> None:
    # Written, no reply yet, and then the stream fails: the peer may have
    # acted on it, so the call fails rather than being sent twice.
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, theirs = trio.testing.memory_stream_pair()
        mux.attach(ours)
        results = Outcomes(1)
        async with mux.open_requester(key=request_id) as requester:
            nursery.start_soon(results.call, requester, 0, frame(b"1:q"))
            assert await PeerReader(theirs).read_frames(1) == [frame(b"1:q")]
            attach_server(mux, nursery)  # somewhere it could go: it must not
            await theirs.aclose()
            await results.complete.wait()
            stats = requester.statistics()
        assert isinstance(results[0], trio.BrokenResourceError)
        assert (stats.calls_failed, stats.retries) == (1, 0)
        nursery.cancel_scope.cancel()


@deadline(10)
async def test_replies_delivered_before_the_failure_still_answer_their_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The requester's receive task is held back, so that the replies are
    # still in its socket when the watcher sees the stream's end.
    real = trio_kcm.KCMSocket.receive_many_from
    held = trio.Event()

    async def receive_later(
        sock: trio_kcm.KCMSocket, max_messages: int
    ) -> list[tuple[bytes, trio_kcm.AttachedStream]]:
        await held.wait()
        return await real(sock, max_messages)

    monkeypatch.setattr(trio_kcm.KCMSocket, "receive_many_from", receive_later)
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, theirs = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        results = Outcomes(3)
        async with mux.open_requester(key=request_id) as requester:
            for i in range(3):
                nursery.start_soon(results.call, requester, i, frame(b"%d:q" % i))
            reader = PeerReader(theirs)
            assert len(await reader.read_frames(3)) == 3
            # Two replies and then end of file, in one write: the mux reads
            # both replies and the end of the stream before the requester runs.
            await theirs.send_all(answer(frame(b"2:q")) + answer(frame(b"0:q")))
            await theirs.send_eof()  # type: ignore[attr-defined]
            await results.complete.wait()
            stats = requester.statistics()
            held.set()
        assert results[0] == frame(b"0:re q")
        assert results[2] == frame(b"2:re q")
        err = results[1]
        assert isinstance(err, trio.BrokenResourceError)
        assert isinstance(err.__cause__, trio_kcm.StreamError)
        assert err.__cause__.peer_closed and err.__cause__.stream is handle
        assert (stats.replies, stats.calls_failed, stats.retries) == (2, 1, 0)
        nursery.cancel_scope.cancel()


@deadline(10)
async def test_a_call_waits_for_a_stream_to_be_attached() -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        async with mux.open_requester(key=request_id) as requester:
            results = Outcomes(1)
            nursery.start_soon(results.call, requester, 0, frame(b"1:q"))
            await trio.testing.wait_all_tasks_blocked()
            assert not results and requester.statistics().calls_waiting == 1
            attach_server(mux, nursery)
            await results.complete.wait()
        assert results == {0: frame(b"1:re q")}
        nursery.cancel_scope.cancel()


async def test_a_timed_out_call_drops_its_late_reply(autojump_clock: object) -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, theirs = trio.testing.memory_stream_pair()
        mux.attach(ours)
        async with mux.open_requester(key=request_id) as requester:
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(1):
                    await requester.request(frame(b"7:slow"))
            assert requester.statistics().calls_waiting == 0
            reader = PeerReader(theirs)
            assert await reader.read_frames(1) == [frame(b"7:slow")]  # it was sent
            await theirs.send_all(answer(frame(b"7:slow")))
            await trio.testing.wait_all_tasks_blocked()
            assert requester.statistics().replies_dropped == 1
            # The key is free again.
            nursery.start_soon(lambda: server(theirs))
            assert await requester.request(frame(b"7:again")) == frame(b"7:re again")
        nursery.cancel_scope.cancel()


async def test_an_abandoned_call_keeps_its_place_in_order_matching(autojump_clock: object) -> None:
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, theirs = trio.testing.memory_stream_pair()
        mux.attach(ours)
        async with mux.open_requester() as requester:
            with trio.move_on_after(1):
                await requester.request(frame(b"first"))
            got: list[bytes] = []

            async def call() -> None:
                got.append(await requester.request(frame(b"second")))

            nursery.start_soon(call)
            reader = PeerReader(theirs)
            assert await reader.read_frames(2) == [frame(b"first"), frame(b"second")]
            await theirs.send_all(frame(b"reply 1") + frame(b"reply 2"))
            await trio.testing.wait_all_tasks_blocked()
            assert got == [frame(b"reply 2")]  # not the first call's reply
            assert requester.statistics().replies_dropped == 1
        nursery.cancel_scope.cancel()


async def test_a_call_cancelled_before_its_request_was_accepted_sent_nothing(
    autojump_clock: object,
) -> None:
    async with (
        trio_kcm.open_mux(parser=P) as mux,
        mux.open_requester(key=request_id) as requester,
    ):
        with trio.move_on_after(1):  # no stream: it waits for one
            await requester.request(frame(b"1:q"))
        assert requester.socket.statistics().tx_msgs == 0
        assert requester.statistics().calls_waiting == 0
        with trio.move_on_after(1):  # its key is free again
            await requester.request(frame(b"1:again"))


@deadline(10)
async def test_unmatched_replies_are_counted_and_dropped() -> None:
    def strict_key(message: bytes) -> Hashable:
        if not message[4:].startswith(b"k"):
            raise ValueError("no key")
        return request_id(message)

    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, theirs = trio.testing.memory_stream_pair()
        mux.attach(ours)
        async with mux.open_requester(key=strict_key) as requester:
            await theirs.send_all(frame(b"k9:nobody asked") + frame(b"garbage"))
            await trio.testing.wait_all_tasks_blocked()
            assert requester.statistics().replies_dropped == 2
            nursery.start_soon(lambda: server(theirs))
            assert await requester.request(frame(b"k1:q")) == frame(b"k1:re q")
        nursery.cancel_scope.cancel()


@deadline(10)
async def test_request_key_reads_requests_where_replies_differ() -> None:
    # Kafka-like: the request has its id after 4 bytes of its own header.
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        attach_server(mux, nursery, reply=lambda r: frame(r[8:12] + b"ok"), batch=2, reverse=True)
        async with mux.open_requester(
            key=lambda m: m[4:8], request_key=lambda m: m[8:12]
        ) as requester:
            got: dict[int, bytes] = {}
            async with trio.open_nursery() as callers:
                for i in range(4):

                    async def call(i: int = i) -> None:
                        got[i] = await requester.request(frame(b"HDR:" + b"%04d" % i))

                    callers.start_soon(call)
        assert got == {i: frame(b"%04dok" % i) for i in range(4)}
        nursery.cancel_scope.cancel()


@deadline(10)
async def test_two_waiting_calls_with_one_key_is_an_error() -> None:
    async with (
        trio_kcm.open_mux(parser=P) as mux,
        mux.open_requester(key=request_id) as requester,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(requester.request, frame(b"1:a"))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ValueError, match="already waiting"):
            await requester.request(frame(b"1:b"))
        nursery.cancel_scope.cancel()


@deadline(10)
async def test_closing_the_requester_fails_waiting_calls() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, _theirs = trio.testing.memory_stream_pair()
        mux.attach(ours)
        raised: list[BaseException] = []

        async def call(requester: trio_kcm.Requester, message: bytes) -> None:
            try:
                await requester.request(message)
            except trio.ClosedResourceError as exc:
                raised.append(exc)

        async with trio.open_nursery() as nursery:
            async with mux.open_requester(key=request_id) as requester:
                nursery.start_soon(call, requester, frame(b"1:sent"))
                await trio.testing.wait_all_tasks_blocked()
            assert len(raised) == 1
            with pytest.raises(trio.ClosedResourceError):
                await requester.request(frame(b"2:late"))
        assert mux.sockets == ()  # its socket was closed


async def test_request_key_without_key_is_refused() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        with pytest.raises(ValueError, match="request_key"):
            mux.open_requester(request_key=request_id)


async def test_a_call_cancelled_while_its_request_is_queued_takes_it_back(
    autojump_clock: object,
) -> None:
    # Order matching: a request taken back leaves no place in the line, so
    # the next reply goes to the right call.
    async with trio_kcm.open_mux(parser=P) as mux, trio.open_nursery() as nursery:
        ours, theirs = trio.testing.lockstep_stream_pair()  # a write waits for the reader
        mux.attach(ours)
        async with mux.open_requester() as requester:
            first = Outcomes(1)
            nursery.start_soon(first.call, requester, 0, frame(b"first"))
            await trio.testing.wait_all_tasks_blocked()  # its write is in flight
            with trio.move_on_after(1):
                await requester.request(frame(b"second"))  # queued behind it
            assert requester.statistics().withdrawn == 1
            reader = PeerReader(theirs)
            assert await reader.read_frames(1) == [frame(b"first")]
            third = Outcomes(1)
            nursery.start_soon(third.call, requester, 0, frame(b"third"))
            assert await reader.read_frames(1) == [frame(b"third")]  # "second" never came
            await theirs.send_all(frame(b"reply 1") + frame(b"reply 3"))
            await first.complete.wait()
            await third.complete.wait()
            stats = requester.statistics()
        assert first == {0: frame(b"reply 1")} and third == {0: frame(b"reply 3")}
        assert (stats.withdrawn, stats.replies, stats.replies_dropped) == (1, 2, 0)
        nursery.cancel_scope.cancel()
