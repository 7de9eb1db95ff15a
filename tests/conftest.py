"""Shared test helpers.

Peers are driven by an independent reference framer (plain ``struct``), never
by the code under test.
"""

from __future__ import annotations

import functools
import json
import pathlib
import struct
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

# The format every mux test uses unless it says otherwise: a 4-byte big-endian
# payload length, then the payload (Thrift framed; LengthPrefixed(">I", adjust=4)).
HEADER = struct.Struct(">I")


def deadline(
    seconds: float,
) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """A test that waits for the wrong thing fails after ``seconds`` instead of hanging.

    In virtual time (``autojump_clock``) too: a task that sleeps in a loop
    would otherwise make the clock jump forever.
    """

    def decorate(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> None:
            with trio.fail_after(seconds):
                await fn(*args, **kwargs)

        return wrapper

    return decorate


def frame(payload: bytes) -> bytes:
    """Reference framer: header + payload."""
    return HEADER.pack(len(payload)) + payload


def unframe_all(data: bytes) -> tuple[list[bytes], bytes]:
    """Reference deframer: split ``data`` into whole frames and the rest."""
    frames = []
    pos = 0
    while len(data) - pos >= 4:
        (n,) = HEADER.unpack_from(data, pos)
        if len(data) - pos - 4 < n:
            break
        frames.append(bytes(data[pos : pos + 4 + n]))
        pos += 4 + n
    return frames, bytes(data[pos:])


class PeerReader:
    """Reads whole frames from the far end of a stream, with the reference deframer."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def read_frames(self, count: int) -> list[bytes]:
        """Read until ``count`` whole frames have arrived; return exactly those."""
        out: list[bytes] = []
        while len(out) < count:
            frames, self.buffer = unframe_all(self.buffer)
            out.extend(frames)
            if len(out) >= count:
                break
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(f"EOF after {len(out)} of {count} frames")
            self.buffer += data
        extra = out[count:]
        if extra:
            self.buffer = b"".join(extra) + self.buffer
        return out[:count]

    async def read_frames_within(self, count: int, seconds: float = 10) -> list[bytes]:
        """:meth:`read_frames`, failing after ``seconds`` rather than hanging."""
        with trio.fail_after(seconds):
            return await self.read_frames(count)

    async def read_until_eof(self) -> tuple[list[bytes], bytes]:
        """Read everything until EOF; return the whole frames and any trailing partial."""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                break
            self.buffer += data
        frames, rest = unframe_all(self.buffer)
        self.buffer = b""
        return frames, rest


class Gate:
    """A stream whose writes block until let through; the far ends are exposed."""

    def __init__(self) -> None:
        self.open = trio.Event()
        self.open.set()
        self.writes = 0
        self.send = trio.testing.MemorySendStream(self._hook)
        self.receive = trio.testing.MemoryReceiveStream()
        self.stream = trio.StapledStream(self.send, self.receive)

    async def _hook(self) -> None:
        self.writes += 1
        await self.open.wait()

    def close_gate(self) -> None:
        self.open = trio.Event()

    def written(self) -> list[bytes]:
        """Take the whole frames written so far (a write blocked at the gate included)."""
        frames, rest = unframe_all(self.send.get_data_nowait())
        assert rest == b""
        return frames


class HeldStream(trio.abc.Stream):
    """Writes wait until let go: :meth:`release` completes them, :meth:`break_it` fails them.

    Nothing is ever read from it.  ``started`` has every write begun, whole;
    ``writes`` those that completed.
    """

    def __init__(self) -> None:
        self.let_go = trio.Event()
        self.broken = False
        self.started: list[bytes] = []
        self.writes: list[bytes] = []

    def release(self) -> None:
        self.let_go.set()

    def break_it(self) -> None:
        self.broken = True
        self.let_go.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        self.started.append(data)
        await self.let_go.wait()
        if self.broken:
            raise trio.BrokenResourceError("the connection broke")
        self.writes.append(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def run_json_program(command: list[str], out: pathlib.Path) -> tuple[str, dict[str, Any]]:
    """Run a benchmark script with ``--json out``; return its stdout and the report.

    It must exit with 0 within two minutes.
    """
    proc = subprocess.run(
        [*command, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return proc.stdout, report


@pytest.fixture
def frozen_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop the clock the mux's sockets read to decide when a call must yield.

    Only the count then ends a run of calls that skip their schedule point
    (``trio_kcm._turns.MAX_RUN_CALLS``), whatever the machine's speed.
    """
    import trio_kcm._turns

    monkeypatch.setattr(trio_kcm._turns, "perf_counter", lambda: 0.0)
