"""One side of one measurement, in a process of its own.

``python -m benchmarks.worker ROLE SPEC [--port PORT] [--profile PATH]``

- ``rx``: the receiver (throughput kinds) or the echo server (ping-pong kinds).
  It listens on ``127.0.0.1`` (port 0: any), prints ``READY <port>``, serves
  one run and prints ``RESULT <json>``.
- ``tx``: the sender (throughput) or the client (ping-pong); it connects to
  ``--port`` (or the port read from its standard input, so that the runner can
  start it while the receiver starts), runs, and prints ``RESULT <json>``.
- ``memory``: no peer; Python-level memory per idle stream and socket.
- ``floor``: no peer, no I/O; Trio's own per-await rate through a memory
  channel (the floor that the per-message rows are judged against).

Who times: for throughput the receiver, from the return of its first receive
call to the last message, counting the messages that arrived after that first
return (so neither process start-up nor connection set-up is timed); for
ping-pong the client, each round trip on its own.  Every receiver turns each
message into a separate object, as an application would get it.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

import trio_kcm
from trio_kcm._stream import life_of

from ._spec import (
    FLOOR_KEYS,
    HEADER,
    PING_KINDS,
    READ_SIZE,
    RECEIVE_MANY,
    THROUGHPUT_KINDS,
    Spec,
    split,
)

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)
HOST = "127.0.0.1"

Result = dict[str, Any]

#: Set by --profile: started when the timed window opens, stopped when it closes.
_profiler: Any = None


def _profile(on: bool) -> None:
    if _profiler is not None and _profiler.is_running != on:
        if on:
            _profiler.start()
        else:
            _profiler.stop()


def _ready(port: int) -> None:
    print(f"READY {port}", flush=True)


def _payload(spec: Spec) -> bytes:
    return bytes(range(256)) * (spec.payload // 256) + bytes(spec.payload % 256)


def _frame(spec: Spec) -> bytes:
    return HEADER.pack(spec.payload) + _payload(spec)


class _Clock:
    """The receiver's timed window: from the first receive's return to the last message."""

    __slots__ = ("cpu0", "cpu1", "got", "started", "t0", "t1", "total", "untimed")

    def __init__(self, total: int) -> None:
        self.total = total
        self.got = 0
        self.untimed = 0
        self.started = False
        self.t0 = self.t1 = self.cpu0 = self.cpu1 = 0.0

    def add(self, n: int) -> bool:
        """Count ``n`` messages; True when all have arrived."""
        if not self.started:
            self.started = True
            self.t0 = time.perf_counter()
            self.cpu0 = time.process_time()
            self.untimed = n
            _profile(True)
        self.got += n
        if self.got >= self.total:
            self.t1 = time.perf_counter()
            self.cpu1 = time.process_time()
            _profile(False)
            return True
        return False

    def result(self) -> Result:
        seconds = self.t1 - self.t0
        timed = self.got - self.untimed
        return {
            "messages": self.got,
            "timed": timed,
            "seconds": seconds,
            "msgs_per_s": timed / seconds if seconds > 0 else 0.0,
            "cpu": (self.cpu1 - self.cpu0) / seconds if seconds > 0 else 0.0,
        }


async def _accept(port: int, count: int) -> list[trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(port, host=HOST)
    listener = listeners[0]
    _ready(listener.socket.getsockname()[1])
    streams = [await listener.accept() for _ in range(count)]
    await listener.aclose()
    return streams


async def _connect(port: int, count: int) -> list[trio.SocketStream]:
    return [await trio.open_tcp_stream(HOST, port) for _ in range(count)]


# ----------------------------------------------------------------------------
# raw Trio


async def _raw_rx(spec: Spec, port: int) -> Result:
    (stream,) = await _accept(port, 1)
    clock = _Clock(spec.count)
    unpack_from = HEADER.unpack_from
    buf = bytearray()
    done = False
    while not done:
        data = await stream.receive_some(READ_SIZE)
        if not data:
            raise RuntimeError(f"end of stream after {clock.got} of {spec.count} messages")
        buf += data
        n = len(buf)
        off = 0
        got = 0
        while n - off >= 4:
            end = off + 4 + unpack_from(buf, off)[0]
            if end > n:
                break
            message = buf[off + 4 : end]  # what the application gets
            del message
            off = end
            got += 1
        del buf[:off]
        done = clock.add(got)
    await stream.aclose()
    return clock.result()


async def _raw_tx(spec: Spec, port: int) -> Result:
    (stream,) = await _connect(port, 1)
    frame = _frame(spec)
    send_all = stream.send_all
    _profile(True)
    t0 = time.perf_counter()
    c0 = time.process_time()
    if spec.kind == "raw-naive":
        for _ in range(spec.count):
            await send_all(frame)
    else:
        group = spec.group
        full, rest = divmod(spec.count, group)
        frames = [frame] * group
        for _ in range(full):
            await send_all(b"".join(frames))  # join as a real sender must
        if rest:
            await send_all(b"".join(frames[:rest]))
    t1 = time.perf_counter()
    c1 = time.process_time()
    _profile(False)
    await stream.aclose()
    return {"seconds": t1 - t0, "cpu": (c1 - c0) / (t1 - t0)}


async def _read_frame(stream: trio.SocketStream, buf: bytearray) -> bytes | None:
    """One whole frame from ``stream`` (``buf`` keeps what follows), or None at EOF."""
    while True:
        if len(buf) >= 4:
            end = 4 + HEADER.unpack_from(buf, 0)[0]
            if len(buf) >= end:
                frame = bytes(buf[:end])
                del buf[:end]
                return frame
        data = await stream.receive_some(READ_SIZE)
        if not data:
            return None
        buf += data


async def _ping_raw_server(spec: Spec, port: int) -> Result:
    (stream,) = await _accept(port, 1)
    buf = bytearray()
    served = 0
    while True:
        frame = await _read_frame(stream, buf)
        if frame is None or len(frame) == 4:
            break
        await stream.send_all(frame)
        served += 1
    await stream.aclose()
    return {"served": served}


async def _ping_raw_client(spec: Spec, port: int) -> Result:
    (stream,) = await _connect(port, 1)
    frame = _frame(spec)
    buf = bytearray()
    samples = []
    clock = time.perf_counter_ns
    for i in range(spec.warmup + spec.count):
        t0 = clock()
        await stream.send_all(frame)
        reply = await _read_frame(stream, buf)
        t1 = clock()
        if reply != frame:
            raise RuntimeError("bad echo")
        if i >= spec.warmup:
            samples.append(t1 - t0)
    await stream.send_all(HEADER.pack(0))
    await stream.aclose()
    return _latency(samples)


# ----------------------------------------------------------------------------
# trio-kcm


class _WriteCounter:
    """Counts the writes a mux makes to its streams (``Spec.count_writes``).

    The streams stay plain :class:`trio.SocketStream` objects, so the mux
    takes the same paths as when nothing is counted (a wrapper stream would
    turn off the sending task's own write).  Two measurement hooks, both on
    this process's objects only: on a plain SocketStream both the writer and
    the sending task write through the stream's ``eager_send`` (watch it
    right after attaching, before the writer starts); a writer that uses
    ``send_all`` goes through the trio socket's ``send``.
    """

    def __init__(self) -> None:
        self.writes = 0

    def watch(self, stream: trio.SocketStream, handle: trio_kcm.AttachedStream) -> None:
        sock_send = stream.socket.send

        async def counted_send(data: Any, *args: Any) -> int:
            self.writes += 1
            return await sock_send(data, *args)

        stream.socket.send = counted_send  # type: ignore[method-assign]
        # The stream's transmit record: a private of trio_kcm's, read here
        # to count, never to change what the mux does.
        tx = life_of(handle).tx
        eager = tx.eager_send
        if eager is not None:

            def counted_eager(data: bytes | memoryview) -> int:
                self.writes += 1
                return eager(data)

            tx.eager_send = counted_eager


async def _kcm_rx(spec: Spec, port: int) -> Result:
    streams = await _accept(port, spec.m)
    clock = _Clock(spec.count)
    per_message = spec.kind == "kcm-send"
    async with trio_kcm.open_mux(parser=PARSER) as mux:
        sockets = [mux.socket() for _ in range(spec.n)]
        for stream in streams:
            mux.attach(stream)
        async with trio.open_nursery() as nursery:

            async def drain(sock: trio_kcm.KCMSocket) -> None:
                if per_message:
                    receive = sock.receive
                    while True:
                        await receive()
                        if clock.add(1):
                            nursery.cancel_scope.cancel()
                            return
                else:
                    receive_many = sock.receive_many
                    while True:
                        messages = await receive_many(RECEIVE_MANY)
                        if clock.add(len(messages)):
                            nursery.cancel_scope.cancel()
                            return

            for sock in sockets:
                for _ in range(spec.rx_tasks):
                    nursery.start_soon(drain, sock)
    return clock.result()


async def _kcm_tx(spec: Spec, port: int) -> Result:
    connected = await _connect(port, spec.m)
    counter = _WriteCounter() if spec.count_writes else None
    frame = _frame(spec)
    group = spec.group
    frames = [frame] * group

    async def send(sock: trio_kcm.KCMSocket, count: int) -> None:
        if spec.kind == "kcm-send":
            send = sock.send
            for _ in range(count):
                await send(frame)
        elif spec.kind == "kcm-send-many":
            full, rest = divmod(count, group)
            for _ in range(full):
                await sock.send_many(frames)
            if rest:
                await sock.send_many(frames[:rest])
        else:  # kcm-batch
            send = sock.send
            while count:
                k = min(count, group)
                async with sock.batch():
                    for _ in range(k):
                        await send(frame)
                count -= k

    async with trio_kcm.open_mux(parser=PARSER) as mux:
        for stream in connected:
            handle = mux.attach(stream)
            if counter is not None:
                counter.watch(stream, handle)
        sockets = [mux.socket() for _ in range(spec.n)]
        _profile(True)
        t0 = time.perf_counter()
        c0 = time.process_time()
        async with trio.open_nursery() as nursery:
            for sock, share in zip(sockets, split(spec.count, spec.n), strict=True):
                for part in split(share, spec.tx_tasks):
                    nursery.start_soon(send, sock, part)
        t1 = time.perf_counter()
        c1 = time.process_time()
        _profile(False)
    t2 = time.perf_counter()
    result = {"seconds": t1 - t0, "cpu": (c1 - c0) / (t1 - t0), "flushed": t2 - t0}
    if counter is not None:
        result["writes"] = counter.writes
    return result


async def _ping_kcm_server(spec: Spec, port: int) -> Result:
    (stream,) = await _accept(port, 1)
    served = 0
    async with trio_kcm.open_mux(parser=PARSER) as mux:
        sock = mux.socket()
        mux.attach(stream)
        while True:
            message = await sock.receive()
            if len(message) == 4:
                break
            await sock.send(message)
            served += 1
    return {"served": served}


async def _ping_kcm_client(spec: Spec, port: int) -> Result:
    (stream,) = await _connect(port, 1)
    frame = _frame(spec)
    samples = []
    clock = time.perf_counter_ns
    async with trio_kcm.open_mux(parser=PARSER) as mux:
        sock = mux.socket()
        mux.attach(stream)
        for i in range(spec.warmup + spec.count):
            t0 = clock()
            await sock.send(frame)
            reply = await sock.receive()
            t1 = clock()
            if reply != frame:
                raise RuntimeError("bad echo")
            if i >= spec.warmup:
                samples.append(t1 - t0)
        await sock.send(HEADER.pack(0))
    return _latency(samples)


# ----------------------------------------------------------------------------
# pyzmq (blocking API: the fastest way to drive it from Python)


def _zmq_rx(spec: Spec, port: int) -> Result:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    _ready(sock.bind_to_random_port(f"tcp://{HOST}"))
    clock = _Clock(spec.count)
    recv = sock.recv
    recv()
    clock.add(1)
    for _ in range(spec.count - 2):
        recv()
    if spec.count > 1:
        recv()
        clock.add(spec.count - 1)
    sock.close(linger=0)
    ctx.term()
    return clock.result()


def _zmq_tx(spec: Spec, port: int) -> Result:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(f"tcp://{HOST}:{port}")
    payload = _payload(spec)
    send = sock.send
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(spec.count):
        send(payload)
    t1 = time.perf_counter()
    c1 = time.process_time()
    sock.close(linger=60_000)  # deliver everything before exiting
    ctx.term()
    return {"seconds": t1 - t0, "cpu": (c1 - c0) / (t1 - t0)}


def _ping_zmq_server(spec: Spec, port: int) -> Result:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    _ready(sock.bind_to_random_port(f"tcp://{HOST}"))
    served = 0
    while True:
        frames = sock.recv_multipart()
        if not frames[-1]:
            break
        sock.send_multipart(frames)
        served += 1
    sock.close(linger=0)
    ctx.term()
    return {"served": served}


def _ping_zmq_client(spec: Spec, port: int) -> Result:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"tcp://{HOST}:{port}")
    payload = _payload(spec)
    samples = []
    clock = time.perf_counter_ns
    for i in range(spec.warmup + spec.count):
        t0 = clock()
        sock.send(payload)
        reply = sock.recv()
        t1 = clock()
        if reply != payload:
            raise RuntimeError("bad echo")
        if i >= spec.warmup:
            samples.append(t1 - t0)
    sock.send(b"")
    sock.close(linger=5_000)
    ctx.term()
    return _latency(samples)


def _latency(samples_ns: list[int]) -> Result:
    samples = sorted(samples_ns)
    n = len(samples)

    def pct(q: float) -> float:
        return samples[min(n - 1, int(q * n))] / 1000.0

    mean = sum(samples) / n / 1000.0
    return {
        "round_trips": n,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "mean_us": mean,
        "msgs_per_s": 1e6 / mean,
    }


# ----------------------------------------------------------------------------
# memory per idle stream and socket (tracemalloc: Python-level allocations)


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _memory(spec: Spec, port: int) -> Result:
    count = spec.count
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    listener = listeners[0]
    lport = listener.socket.getsockname()[1]
    tracemalloc.start()
    base = _traced()
    accepted: list[trio.SocketStream] = []
    connected: list[trio.SocketStream] = []
    for _ in range(count):
        connected.append(await trio.open_tcp_stream(HOST, lport))
        accepted.append(await listener.accept())
    per_pair = (_traced() - base) / count
    out: Result = {"count": count, "socket_stream_pair": per_pair}

    # Baseline: what a hand-written Trio receiver holds per connection, a task
    # blocked in receive_some.
    async def read(stream: trio.SocketStream) -> None:
        await stream.receive_some(READ_SIZE)

    async with trio.open_nursery() as nursery:
        base = _traced()
        for stream in connected:
            nursery.start_soon(read, stream)
        await trio.testing.wait_all_tasks_blocked()
        out["raw_reader_task"] = (_traced() - base) / count
        nursery.cancel_scope.cancel()

    async with trio_kcm.open_mux(parser=PARSER) as mux:
        await trio.testing.wait_all_tasks_blocked()
        base = _traced()
        for stream in accepted:
            mux.attach(stream)
        await trio.testing.wait_all_tasks_blocked()
        out["kcm_stream"] = (_traced() - base) / count
        base = _traced()
        sockets = [mux.socket() for _ in range(count)]
        out["kcm_socket"] = (_traced() - base) / count
        async with trio.open_nursery() as nursery:
            base = _traced()
            for sock in sockets:
                nursery.start_soon(sock.receive)
            await trio.testing.wait_all_tasks_blocked()
            out["kcm_socket_receiver_task"] = (_traced() - base) / count
            nursery.cancel_scope.cancel()
    tracemalloc.stop()
    for stream in connected:
        await stream.aclose()
    await listener.aclose()
    return out


# ----------------------------------------------------------------------------
# floors: Trio's own per-await rate (one process, no I/O)


async def _floor(spec: Spec, port: int) -> Result:
    """Messages per second through a Trio memory channel, one ``await`` per message.

    The channel is unbounded (``open_memory_channel(inf)``) on purpose: a send
    never waits for room, so each ``await send()`` and each ``await receive()``
    with an item ready costs exactly one checkpoint (a trip through the
    scheduler) -- the cheapest way Trio has to move a message from task to
    task, which is what a per-message API is judged against.  A bounded
    channel would add a park and a wake-up whenever it fills (with size 0, on
    every message), measuring the buffer size as much as Trio; and trio-kcm's
    ``send`` only waits when its send buffer is full.

    - ``floor-pair``: one task ``await send(item)`` in a loop, another
      ``await receive()`` in a loop; timed from both starting to the last
      item received.
    - ``floor-send``: ``await send(item)`` alone; nothing takes the items.
    - ``floor-receive``: ``await receive()`` alone, the items already queued.
    """
    count = spec.count
    item = _payload(spec)
    out: Result = {"count": count}

    send_channel, receive_channel = trio.open_memory_channel[bytes](float("inf"))
    send, receive = send_channel.send, receive_channel.receive

    async def sender() -> None:
        for _ in range(count):
            await send(item)

    async def receiver() -> None:
        for _ in range(count):
            await receive()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        nursery.start_soon(sender)
    out["floor-pair"] = count / (time.perf_counter() - t0)

    send_channel, receive_channel = trio.open_memory_channel[bytes](float("inf"))
    send, receive = send_channel.send, receive_channel.receive
    t0 = time.perf_counter()
    await sender()
    out["floor-send"] = count / (time.perf_counter() - t0)

    # floor-send left ``count`` items queued: the "items ready" case.
    t0 = time.perf_counter()
    await receiver()
    out["floor-receive"] = count / (time.perf_counter() - t0)
    assert set(out) == {"count", *FLOOR_KEYS}
    return out


# ----------------------------------------------------------------------------

_TRIO: dict[tuple[str, str], Callable[[Spec, int], Any]] = {}
_SYNC: dict[tuple[str, str], Callable[[Spec, int], Result]] = {}
for _kind in ("raw-naive", "raw-batched"):
    _TRIO["rx", _kind] = _raw_rx
    _TRIO["tx", _kind] = _raw_tx
for _kind in ("kcm-send", "kcm-send-many", "kcm-batch"):
    _TRIO["rx", _kind] = _kcm_rx
    _TRIO["tx", _kind] = _kcm_tx
_TRIO["rx", "ping-raw"] = _ping_raw_server
_TRIO["tx", "ping-raw"] = _ping_raw_client
_TRIO["rx", "ping-kcm"] = _ping_kcm_server
_TRIO["tx", "ping-kcm"] = _ping_kcm_client
_TRIO["memory", "memory"] = _memory
_TRIO["floor", "floor"] = _floor
_SYNC["rx", "zmq"] = _zmq_rx
_SYNC["tx", "zmq"] = _zmq_tx
_SYNC["rx", "ping-zmq"] = _ping_zmq_server
_SYNC["tx", "ping-zmq"] = _ping_zmq_client
assert {k for _, k in _TRIO} | {k for _, k in _SYNC} == {
    *THROUGHPUT_KINDS,
    *PING_KINDS,
    "memory",
    "floor",
}


def run(role: str, spec: Spec, port: int) -> Result:
    """Run one side of one measurement in this process."""
    key = (role, spec.kind)
    if key in _SYNC:
        return _SYNC[key](spec, port)
    fn = _TRIO[key]
    result: Result = trio.run(fn, spec, port)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("role", choices=["rx", "tx", "memory", "floor"])
    parser.add_argument("spec", help="the Spec, as JSON")
    parser.add_argument(
        "--port", type=int, help="the receiver's port (tx); default: read from standard input"
    )
    parser.add_argument("--profile", metavar="PATH", help="profile with pyinstrument into PATH")
    args = parser.parse_args(argv)
    spec = Spec.from_json(args.spec)
    port = args.port
    if port is None:
        # Started together with the receiver (its start-up overlaps ours): the
        # runner writes the port here once the receiver listens.
        port = int(sys.stdin.readline()) if args.role == "tx" else 0
    if args.profile:
        from pyinstrument import Profiler

        from ._profile import summarise

        global _profiler
        profiler = _profiler = Profiler(interval=0.001, async_mode="disabled")
        result = run(args.role, spec, port)
        _profile(False)
        with open(args.profile, "w", encoding="utf-8") as f:
            json.dump(summarise(profiler), f)
    else:
        result = run(args.role, spec, port)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
