"""Logging: the ``trio_kcm`` logger tells of attach, unattach and failure; never of messages."""

from __future__ import annotations

import errno
import logging

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import PeerReader, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int, str]]:
    return [(r.name, r.levelno, r.getMessage()) for r in caplog.records]


async def test_attach_traffic_unattach(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_kcm")
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        [(name, level, message)] = records(caplog)
        assert name == "trio_kcm"
        assert level == logging.INFO
        assert message.startswith("attached ")

        # Nothing per message, at any level, in either direction.
        sock = mux.socket()
        reader = PeerReader(peer)
        for i in range(50):
            await sock.send(frame(b"out %d" % i))
            await peer.send_all(frame(b"in %d" % i))
            assert await sock.receive() == frame(b"in %d" % i)
        assert len(await reader.read_frames(50)) == 50
        assert len(caplog.records) == 1

        assert await mux.unattach(handle) is ours
        (name, level, message) = records(caplog)[1]
        assert (name, level) == ("trio_kcm", logging.INFO)
        assert message.startswith("unattached ")
    assert len(caplog.records) == 2


async def test_failure_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_kcm")
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()  # a reader with nowhere to deliver would stop reading
        await peer.send_all(frame(b"whole") + frame(b"half")[:5])
        await peer.send_stream.aclose()
        err = await anext(mux.errors())
        assert await sock.receive() == frame(b"whole")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        [record] = warnings
        assert record.name == "trio_kcm"
        assert "failed" in record.getMessage()
        assert str(err) in record.getMessage()
    assert all(r.levelno <= logging.WARNING for r in caplog.records)


async def test_a_clean_close_by_the_peer_is_info_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_kcm")
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        handle = mux.attach(ours)
        sock = mux.socket()
        await peer.send_all(frame(b"last words"))
        await peer.send_stream.aclose()  # at a message boundary
        err = await anext(mux.errors())
        assert await sock.receive() == frame(b"last words")
    assert err.stream is handle
    assert err.peer_closed
    assert err.errno == errno.EPIPE  # as in the kernel
    assert err.__cause__ is None
    assert err.partial_bytes == b""
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    [closed] = [r for r in caplog.records if "closed by its peer" in r.getMessage()]
    assert closed.levelno == logging.INFO


@pytest.mark.parametrize("how", ["mid-message", "reset"])
async def test_anything_but_a_clean_close_is_not_peer_closed(how: str) -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        mux.socket()
        if how == "mid-message":
            await peer.send_all(frame(b"half")[:5])
            await peer.send_stream.aclose()
        else:

            async def broken(max_bytes: int | None = None) -> bytes:
                raise trio.BrokenResourceError("reset")

            ours.receive_stream.receive_some = broken  # type: ignore[method-assign]
            await peer.send_all(frame(b"wakes the reader"))
        err = await anext(mux.errors())
    assert not err.peer_closed
    assert err.errno == errno.EPIPE
