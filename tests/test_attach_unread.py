"""Attaching a stream whose first bytes were already read (``attach(unread_data=...)``)."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import frame
from .test_tcp import loopback, next_error

P = trio_kcm.LengthPrefixed(">I", adjust=4)


async def _handshake(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes]:
    """A line-based greeting: read until b"\\n"; return it and what came after it."""
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


async def test_a_handshake_that_read_ahead_loses_no_message() -> None:
    # The greeting and the first two messages arrive in one TCP segment: the
    # handshake's read takes them all; unread_data gives them to the mux.
    async with loopback() as lb, trio_kcm.open_mux(parser=P) as mux:
        client, server = await lb.pair()
        await client.send_all(b"HELLO v1\n" + frame(b"first") + frame(b"second")[:7])
        line, rest = await _handshake(server)
        assert line == b"HELLO v1"
        assert rest.startswith(frame(b"first"))  # it really read ahead
        handle = mux.attach(server, unread_data=rest)
        sock = mux.socket()
        assert await sock.receive() == frame(b"first")
        await client.send_all(frame(b"second")[7:] + frame(b"third"))
        assert await sock.receive() == frame(b"second")
        assert await sock.receive() == frame(b"third")
        assert handle.statistics().rx_msgs == 3


async def test_unread_data_is_parsed_before_anything_read_after_it() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        await peer.send_all(frame(b"on the wire"))
        await trio.testing.wait_all_tasks_blocked()
        mux.attach(ours, unread_data=bytearray(frame(b"read before")))
        sock = mux.socket()
        assert await sock.receive() == frame(b"read before")
        assert await sock.receive() == frame(b"on the wire")


async def test_a_stream_handed_back_by_unattach_is_attached_again_with_its_unread_data() -> None:
    async with trio_kcm.open_mux(parser=P) as one, trio_kcm.open_mux(parser=P) as two:
        ours, peer = trio.testing.memory_stream_pair()
        handle = one.attach(ours)
        first = one.socket()
        await peer.send_all(frame(b"to one") + frame(b"to two")[:6])
        assert await first.receive() == frame(b"to one")
        await trio.testing.wait_all_tasks_blocked()
        stream = await one.unattach(handle)
        assert handle.unread_data == frame(b"to two")[:6]
        again = two.attach(stream, unread_data=handle.unread_data)
        second = two.socket()
        await peer.send_all(frame(b"to two")[6:])
        assert await second.receive() == frame(b"to two")
        assert again.statistics().rx_msgs == 1


async def test_unattach_right_after_attach_delivers_the_whole_and_hands_back_the_rest() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, _peer = trio.testing.memory_stream_pair()
        sock = mux.socket()
        handle = mux.attach(ours, unread_data=frame(b"whole") + b"\x00\x00")
        assert await mux.unattach(handle) is ours
        # Parsed as if read before the unattach: the whole message is
        # delivered, the start of the next is handed back.
        assert sock.receive_nowait() == frame(b"whole")
        assert handle.unread_data == b"\x00\x00"


async def test_a_bad_header_in_unread_data_fails_that_stream_alone() -> None:
    async with trio_kcm.open_mux(parser=P, max_message_size=1024) as mux:
        bad_ours, _bad_peer = trio.testing.memory_stream_pair()
        good_ours, good_peer = trio.testing.memory_stream_pair()
        good = mux.attach(good_ours)
        bad = mux.attach(bad_ours, unread_data=frame(b"fine") + b"\xff\xff\xff\xff")
        sock = mux.socket()
        err = await next_error(mux)
        assert err.stream is bad
        assert err.errno == errno.EMSGSIZE
        assert await sock.receive() == frame(b"fine")  # whole messages before it count
        await good_peer.send_all(frame(b"unaffected"))
        assert await sock.receive() == frame(b"unaffected")
        assert good.state == "active"


async def test_unread_data_must_be_bytes() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, _ = trio.testing.memory_stream_pair()
        with pytest.raises(TypeError, match="not str"):
            mux.attach(ours, unread_data="text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            mux.attach(ours, unread_data=12)  # type: ignore[arg-type]
        assert mux.streams == ()
