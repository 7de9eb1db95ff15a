"""``trio-kcm lab``: the engines that run a workload through a real mux.

Both engines use the real :func:`trio_kcm.open_mux` with the real policy; they
differ in what stands around it.

**Virtual** (:func:`simulate`, the default): ``M`` in-memory streams
(:class:`_Pipe`, a minimal :class:`trio.abc.Stream`) attached to the mux and
``N`` KCM sockets on it, in ``trio.run(clock=MockClock())``.  Reproducible for
a seed, in any process, because exactly one task drives everything: a
discrete-event loop over a heap of ``(time, seq, kind, arg)``, ties broken by
``seq`` (the order the events were scheduled in, itself deterministic).  For
each event the driver moves the mock clock to the event's time (no task
sleeps, so moving the clock is all the waiting there is), does exactly *one*
thing that wakes at most one mux task -- a peer's bytes reach stream ``i``
(its reader wakes), or worker ``j`` sends its reply with ``send_nowait`` (one
stream's writer wakes), or a link finishes a write (that writer goes on) --
and then waits with ``wait_all_tasks_blocked()`` until that task has done all
it can.  So at any moment at most one task is runnable, and Trio's randomised
scheduling order (and its tie-breaks by object id) has nothing to choose from.
(One way round it: a transmit policy that holds groups back, returning
``None``, and then releases them to several streams at once wakes several
writers together.  No installed policy does.)
Workers have no tasks: after each event an idle worker takes its socket's
next message with ``receive_nowait`` and schedules its own "done" event
``cost * slowdown`` later.  What the mux writes is handed straight to the
driver, which parses the replies (its own deframer, not the mux's).  The
workers' queues are their sockets' receive queues, unbounded here, so that
the policy's choice, not backpressure, decides where a request waits (a
paused reader woken together with another would also bring back the
scheduler's randomness).

With no ``--link`` there is no wire: a write arrives at once.  With one, each
stream has a link per direction that carries ``bandwidth`` bytes per second
plus a propagation delay: a peer's write reaches the mux when the link has
sent it (a "deliver" event), and the mux's writer waits in ``send_all`` until
its link has sent the write (a "sent" event; the peer reads it ``delay``
later, a "wire" event) -- so writes queue on a slow stream and the transmit
policy sees it.

**Real** (:func:`run_real`, ``--real``): ``M`` loopback TCP connections to an
in-process peer, real time, workers as tasks that ``receive``, sleep for the
service time and ``send``.  Not reproducible; a smoke test of the same
workload against the real world.

Latency, in both: from the moment the peer writes a request to the moment it
has read the whole reply -- queueing at the worker plus service time, plus the
links' time with ``--link`` (plus, for real runs, everything in between).
Replies may come back on any stream (the transmit policy picks one), so the
peer matches them by request id.
"""

from __future__ import annotations

import heapq
import math
import struct
import time
from collections import deque
from collections.abc import Callable

import trio
import trio.testing

from .._errors import PolicyLoadError
from .._parsers import LengthPrefixed
from .._policy import Policy, load_policy
from .._socket import KCMSocket
from ._lab_stats import RunResult
from ._lab_workload import PolicySpec, Workload

__all__ = ["MIN_SIZE", "make_policy", "run_real", "simulate"]

#: Request payload: 4-byte length, request id, cost (seconds, nominal).
_REQUEST = struct.Struct(">IQd")
#: Reply payload: 4-byte length, request id, worker index.
_REPLY = struct.Struct(">IQH")
_HEADER = struct.Struct(">I")
#: The smallest --size / --reply-size (a request's header and fields).
MIN_SIZE = _REQUEST.size
#: Per-socket buffers: large enough never to fill (see the module docstring).
_UNBOUNDED = 1 << 60

#: Called now and then with the fraction of the issuing window done.
Progress = Callable[[float], None]

# Event kinds; the argument is a stream index, or a worker index for _DONE.
_OPEN = 0  # open loop: a stream's peer writes a burst, and schedules its next one
_WINDOW = 1  # closed loop, at 0: a stream's peer writes its whole window at once
_NEXT = 2  # closed loop: a reply freed a slot, the origin's peer writes one request
_DONE = 3  # a worker finished its request
_DELIVER = 4  # --link: a peer's write reaches the mux
_SENT = 5  # --link: the link finished sending the mux's write (its writer goes on)
_WIRE = 6  # --link: ... and the write reaches the peer


def make_policy(spec: PolicySpec, seed: int) -> Policy:
    """Build the policy ``spec`` names, passing it ``seed=`` if it takes one.

    A policy given ``seed=`` or ``rng=`` in its options keeps those.  Whether
    it takes a seed is found by trying: a factory that refuses the keyword
    raises ``TypeError``, and is then built without it.
    """
    options = dict(spec.options)
    if "seed" not in options and "rng" not in options:
        try:
            return load_policy(spec.name, seed=seed, **options)
        except PolicyLoadError as exc:
            if not isinstance(exc.__cause__, TypeError):
                raise
    return load_policy(spec.name, **options)


def policy_seed(workload: Workload, spec: PolicySpec) -> int:
    """The seed a policy that draws random numbers gets (derived from --seed)."""
    return workload.rng(f"policy:{spec.name}").getrandbits(32)


def _request(size: int, rid: int, cost: float) -> bytes:
    return _REQUEST.pack(size - 4, rid, cost) + bytes(size - _REQUEST.size)


def _reply(size: int, rid: int, worker: int) -> bytes:
    return _REPLY.pack(size - 4, rid, worker) + bytes(size - _REPLY.size)


class _Pipe(trio.abc.Stream):
    """The mux's end of one simulated connection.

    The driver puts the peer's bytes in with :meth:`put` (waking the mux's
    reader); what the mux writes goes to ``on_write(index, data)``, which
    returns whether the write occupies a link: then ``send_all`` waits until
    the driver calls :meth:`release`.  Like
    :class:`trio.testing.MemoryReceiveStream` / ``MemorySendStream``, minus
    their extra checkpoints, which cost a scheduler round each: with no link,
    ``send_all`` is no checkpoint at all (the mux's writer parks right after
    it anyway).
    """

    def __init__(self, index: int, on_write: Callable[[int, bytes], bool]) -> None:
        self._index = index
        self._on_write = on_write
        self._incoming = bytearray()
        self._lot = trio.lowlevel.ParkingLot()
        self._sending = trio.lowlevel.ParkingLot()
        self._closed = False

    # the driver's side

    def put(self, data: bytes) -> None:
        self._incoming += data
        self._lot.unpark_all()

    def release(self) -> None:
        """The link finished sending the last write: ``send_all`` returns."""
        self._sending.unpark_all()

    # the mux's side

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError
        if self._incoming:
            await trio.lowlevel.checkpoint()
        while not self._incoming:
            await self._lot.park()
            if self._closed:
                raise trio.ClosedResourceError
        n = len(self._incoming) if max_bytes is None else max_bytes
        data = bytes(self._incoming[:n])
        del self._incoming[:n]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError
        if self._on_write(self._index, bytes(data)):
            await self._sending.park()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._closed = True
        self._lot.unpark_all()
        await trio.lowlevel.checkpoint()


def _done_fraction(w: Workload, now: float, issued: int) -> float:
    """How far issuing has got: by time or by count, whichever is further."""
    by_time = now / w.duration if math.isfinite(w.duration) else 0.0
    by_count = issued / w.messages if w.messages else 0.0
    return min(1.0, max(by_time, by_count))


def _frames(buffer: bytearray) -> list[bytes]:
    """Take the whole frames off the front of ``buffer`` (the peer's own deframer)."""
    out: list[bytes] = []
    pos = 0
    n = len(buffer)
    while n - pos >= 4:
        (length,) = _HEADER.unpack_from(buffer, pos)
        end = pos + 4 + length
        if end > n:
            break
        out.append(bytes(buffer[pos:end]))
        pos = end
    del buffer[:pos]
    return out


class _Simulation:
    """One policy, one workload: the discrete-event driver (see the module doc)."""

    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        clock: trio.testing.MockClock,
        progress: Progress | None,
    ) -> None:
        w = workload
        self.clock = clock
        self.w = w
        self.policy = policy
        self.progress = progress
        self.arrivals = w.rng("arrivals")
        self.costs = w.rng("costs")
        self.heap: list[tuple[float, int, int, int]] = []  # (time, seq, kind, arg)
        self.seq = 0
        self.now = 0.0
        self.t0 = 0.0
        self.result = RunResult(
            policy=getattr(policy, "name", "") or type(policy).__name__,
            steered=[0] * w.workers,
            busy=[0.0] * w.workers,
            max_queued=[0] * w.workers,
            requests_per_stream=[0] * w.streams,
            replies_per_stream=[0] * w.streams,
        )
        self.factors = [w.service.factor(j) for j in range(w.workers)]
        self.sent: dict[int, tuple[float, int]] = {}  # rid -> (time sent, stream)
        self.replied: list[float] = []  # reply times
        self.current = [0] * w.workers  # the request each busy worker serves
        self.next_id = 0
        self.issuing = True
        self.window_end = w.duration
        self.idle = list(range(w.workers))  # idle workers, in index order
        self.dirty: list[int] = []  # streams with new bytes for the peer
        self.buffers = [bytearray() for _ in range(w.streams)]  # the peer's, per stream
        # --link: when each link is free again, each way, and the writes on it.
        link = w.link
        self.bandwidth = [link.bandwidth_of(i) if link else 0.0 for i in range(w.streams)]
        self.delay = link.delay if link else 0.0
        self.up_free = [0.0] * w.streams
        self.down_free = [0.0] * w.streams
        self.uplink: list[deque[bytes]] = [deque() for _ in range(w.streams)]
        self.downlink: list[deque[bytes]] = [deque() for _ in range(w.streams)]
        self.pipes: list[_Pipe] = []
        self.socks: list[KCMSocket] = []
        # Open loop: each stream's peer is a Poisson source of bursts.
        self.burst_rate = w.rate / w.streams / w.burst if w.open_loop else 0.0

    # -- scheduling ------------------------------------------------------------

    def schedule(self, t: float, kind: int, arg: int) -> None:
        heapq.heappush(self.heap, (t, self.seq, kind, arg))
        self.seq += 1

    def can_issue(self) -> bool:
        w = self.w
        if not self.issuing:
            return False
        if self.now >= w.duration or (w.messages is not None and self.next_id >= w.messages):
            self.stop_issuing()
            return False
        return True

    def stop_issuing(self) -> None:
        if self.issuing:
            self.issuing = False
            # Message-bounded: the window ends with the last request.
            self.window_end = min(self.window_end, self.now)

    # -- the run ----------------------------------------------------------------

    async def run(self) -> RunResult:
        from .. import open_mux

        w = self.w
        async with open_mux(
            parser=LengthPrefixed(">I", adjust=4),
            policy=self.policy,
            receive_buffer_size=_UNBOUNDED,
            send_buffer_size=_UNBOUNDED,
            max_message_size=max(w.size, w.reply_size, 1 << 16),
        ) as mux:
            for i in range(w.streams):
                pipe = _Pipe(i, self._wrote)
                mux.attach(pipe)
                self.pipes.append(pipe)
            self.socks = [mux.socket() for _ in range(w.workers)]
            await trio.testing.wait_all_tasks_blocked()
            self.t0 = trio.current_time()
            for i in range(w.streams):
                if w.open_loop:
                    self.schedule(self.arrivals.expovariate(self.burst_rate), _OPEN, i)
                else:
                    self.schedule(0.0, _WINDOW, i)
            await self._loop()
            self.stop_issuing()
        r = self.result
        r.window = window = min(self.window_end, w.duration)
        r.issued_in_window = r.issued  # nothing is issued after the window
        r.completed_in_window = sum(1 for t in self.replied if t <= window)
        return r

    async def _loop(self) -> None:
        heap = self.heap
        progress = self.progress
        clock = self.clock
        steps = 0
        while heap:
            t, _, kind, arg = heapq.heappop(heap)
            if t > self.now:
                # Only this task keeps time, so moving the clock is all the waiting.
                self.now = t
                clock.jump(max(0.0, self.t0 + t - clock.current_time()))
            if kind == _DONE:
                await self._done(arg)
            elif kind <= _NEXT:
                await self._arrive(kind, arg)
            elif kind == _DELIVER:
                await self._deliver(arg, self.uplink[arg].popleft())
            elif kind == _SENT:
                self.pipes[arg].release()
                await trio.testing.wait_all_tasks_blocked()
            else:  # _WIRE
                self.buffers[arg] += self.downlink[arg].popleft()
                self.dirty.append(arg)
                self._collect()
            steps += 1
            if progress is not None and not steps & 1023:
                progress(_done_fraction(self.w, self.now, self.next_id))

    async def _arrive(self, kind: int, stream: int) -> None:
        w = self.w
        if not self.can_issue():
            return
        if kind == _OPEN:
            count = w.burst
            nxt = self.now + self.arrivals.expovariate(self.burst_rate)
            if nxt < w.duration:
                self.schedule(nxt, _OPEN, stream)
        else:
            count = w.closed if kind == _WINDOW else 1
        if w.messages is not None:
            count = min(count, w.messages - self.next_id)
        data = []
        for _ in range(count):
            rid = self.next_id
            self.next_id += 1
            data.append(_request(w.size, rid, w.service.sample(self.costs)))
            self.sent[rid] = (self.now, stream)
        r = self.result
        r.issued += count
        r.requests_per_stream[stream] += count
        if w.messages is not None and self.next_id >= w.messages:
            self.stop_issuing()
        payload = b"".join(data)
        bandwidth = self.bandwidth[stream]
        if bandwidth:
            done = max(self.now, self.up_free[stream]) + len(payload) / bandwidth
            self.up_free[stream] = done
            self.uplink[stream].append(payload)
            self.schedule(done + self.delay, _DELIVER, stream)
        else:
            await self._deliver(stream, payload)

    async def _deliver(self, stream: int, data: bytes) -> None:
        """The peer's bytes reach the mux: its reader steers them, idle workers start."""
        self.pipes[stream].put(data)
        await trio.testing.wait_all_tasks_blocked()
        self._start_idle()

    def _wrote(self, stream: int, data: bytes) -> bool:
        """The mux wrote ``data`` on ``stream`` (called by its writer, in the settle)."""
        bandwidth = self.bandwidth[stream]
        if not bandwidth:
            self.buffers[stream] += data
            self.dirty.append(stream)
            return False
        done = max(self.now, self.down_free[stream]) + len(data) / bandwidth
        self.down_free[stream] = done
        self.downlink[stream].append(data)
        self.schedule(done, _SENT, stream)
        self.schedule(done + self.delay, _WIRE, stream)
        return True

    async def _done(self, worker: int) -> None:
        rid = self.current[worker]
        self.socks[worker].send_nowait(_reply(self.w.reply_size, rid, worker))
        await trio.testing.wait_all_tasks_blocked()
        self._collect()
        self._serve(worker)
        self._start_idle()  # (only a message moved between sockets could need it)

    # -- workers ------------------------------------------------------------------

    def _start_idle(self) -> None:
        idle = self.idle
        if not idle:
            return
        still = []
        for j in idle:
            if not self._serve(j, from_idle=True):
                still.append(j)
        self.idle = still

    def _serve(self, worker: int, *, from_idle: bool = False) -> bool:
        """Worker ``worker`` takes its next request, if it has one."""
        sock = self.socks[worker]
        queued = sock.rx_queued_bytes // self.w.size  # all requests are one size
        r = self.result
        if queued > r.max_queued[worker]:
            r.max_queued[worker] = queued
        if not queued:
            if not from_idle:
                self.idle.append(worker)
                self.idle.sort()
            return False
        message = sock.receive_nowait()
        _, rid, cost = _REQUEST.unpack_from(message)
        service = cost * self.factors[worker]
        self.current[worker] = rid
        r.steered[worker] += 1
        r.busy[worker] += service
        self.schedule(self.now + service, _DONE, worker)
        return True

    # -- the peer's side -------------------------------------------------------

    def _collect(self) -> None:
        """The peer reads whole replies from every stream the mux wrote to."""
        r = self.result
        w = self.w
        for stream in self.dirty:
            for frame in _frames(self.buffers[stream]):
                _, rid, _ = _REPLY.unpack_from(frame)
                sent, origin = self.sent.pop(rid)
                r.latencies.append(self.now - sent)
                r.replies_per_stream[stream] += 1
                r.end = self.now
                self.replied.append(self.now)
                if not w.open_loop:
                    # The origin's peer has a free slot: its next request, now.
                    self.schedule(self.now, _NEXT, origin)
        self.dirty.clear()


def simulate(
    workload: Workload, policy: PolicySpec, *, progress: Progress | None = None
) -> RunResult:
    """Run ``workload`` through a mux with ``policy``, in virtual time (reproducible)."""
    pol = make_policy(policy, policy_seed(workload, policy))
    clock = trio.testing.MockClock()
    sim = _Simulation(workload, pol, clock, progress)
    sim.result.policy = policy.label
    start = time.perf_counter()
    result = trio.run(sim.run, clock=clock)
    result.wall = time.perf_counter() - start
    return result


def run_real(
    workload: Workload, policy: PolicySpec, *, progress: Progress | None = None
) -> RunResult:
    """Run ``workload`` over loopback TCP in real time (not reproducible).

    Service times are real ``trio.sleep`` calls, so they are no shorter than
    the timer's resolution (about a millisecond with epoll).  Requests still
    unanswered ``drain`` seconds after issuing stopped (the larger of 1 s and
    the duration, at most 10 s) are counted as unanswered.
    """
    pol = make_policy(policy, policy_seed(workload, policy))
    real = _Real(workload, pol, progress)
    real.result.policy = policy.label
    start = time.perf_counter()
    result = trio.run(real.run)
    result.wall = time.perf_counter() - start
    return result


class _Real:
    """The --real engine: peers, mux and workers as tasks over loopback TCP."""

    def __init__(self, workload: Workload, policy: Policy, progress: Progress | None) -> None:
        w = workload
        self.w = w
        self.policy = policy
        self.progress = progress
        self.arrivals = w.rng("arrivals")
        self.costs = w.rng("costs")
        self.result = RunResult(
            policy=getattr(policy, "name", "") or type(policy).__name__,
            steered=[0] * w.workers,
            busy=[0.0] * w.workers,
            max_queued=[0] * w.workers,
            requests_per_stream=[0] * w.streams,
            replies_per_stream=[0] * w.streams,
        )
        self.sent: dict[int, tuple[float, int]] = {}
        self.replied: list[float] = []
        self.next_id = 0
        self.t0 = 0.0
        self.issuing = True
        self.window_end = w.duration
        self.all_answered = trio.Event()
        self.slots: list[trio.Semaphore] = []

    def _clock(self) -> float:
        return trio.current_time() - self.t0

    def _issue(self, stream: int, count: int) -> bytes:
        w = self.w
        if w.messages is not None:
            count = min(count, w.messages - self.next_id)
        now = self._clock()
        data = []
        for _ in range(count):
            rid = self.next_id
            self.next_id += 1
            data.append(_request(w.size, rid, w.service.sample(self.costs)))
            self.sent[rid] = (now, stream)
        self.result.issued += count
        self.result.requests_per_stream[stream] += count
        return b"".join(data)

    def _more(self) -> bool:
        w = self.w
        if not self.issuing:
            return False
        now = self._clock()
        if now >= w.duration or (w.messages is not None and self.next_id >= w.messages):
            self._stop_issuing(now)
            return False
        if self.progress is not None:
            self.progress(_done_fraction(w, now, self.next_id))
        return True

    def _stop_issuing(self, now: float) -> None:
        if self.issuing:
            self.issuing = False
            self.window_end = min(self.window_end, now)
            if not self.sent:
                self.all_answered.set()

    async def run(self) -> RunResult:
        from .. import open_mux

        w = self.w
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        peers: list[trio.SocketStream] = []
        try:
            async with open_mux(
                parser=LengthPrefixed(">I", adjust=4),
                policy=self.policy,
                receive_buffer_size=_UNBOUNDED,
                send_buffer_size=_UNBOUNDED,
                max_message_size=max(w.size, w.reply_size, 1 << 16),
            ) as mux:
                for _ in range(w.streams):
                    mux.attach(await trio.open_tcp_stream("127.0.0.1", port))
                    peer = await listeners[0].accept()
                    assert isinstance(peer, trio.SocketStream)
                    peers.append(peer)
                socks = [mux.socket() for _ in range(w.workers)]
                self.slots = [trio.Semaphore(0) for _ in range(w.streams)]
                self.t0 = trio.current_time()
                async with trio.open_nursery() as nursery:
                    for j, sock in enumerate(socks):
                        nursery.start_soon(self._worker, j, sock)
                    for i, peer in enumerate(peers):
                        nursery.start_soon(self._peer_reader, i, peer)
                        nursery.start_soon(self._peer_writer, i, peer)
                    drain = min(10.0, max(1.0, w.duration))
                    with trio.move_on_after(
                        w.duration + drain if math.isfinite(w.duration) else 60
                    ):
                        await self.all_answered.wait()
                    nursery.cancel_scope.cancel()
                # Steered to a worker but still in its queue: the policy's choice too.
                for j, sock in enumerate(socks):
                    self.result.steered[j] += sock.rx_queued_bytes // w.size
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            for peer in peers:
                await trio.aclose_forcefully(peer)
        self._stop_issuing(self._clock())
        r = self.result
        r.window = window = min(self.window_end, w.duration)
        r.issued_in_window = r.issued
        r.completed_in_window = sum(1 for t in self.replied if t <= window)
        return r

    async def _worker(self, j: int, sock: KCMSocket) -> None:
        w = self.w
        r = self.result
        factor = w.service.factor(j)
        while True:
            message = await sock.receive()
            queued = sock.rx_queued_bytes // w.size + 1
            if queued > r.max_queued[j]:
                r.max_queued[j] = queued
            _, rid, cost = _REQUEST.unpack_from(message)
            service = cost * factor
            r.steered[j] += 1
            r.busy[j] += service
            await trio.sleep(service)
            await sock.send(_reply(w.reply_size, rid, j))

    async def _peer_writer(self, i: int, peer: trio.SocketStream) -> None:
        w = self.w
        if w.open_loop:
            rate = w.rate / w.streams / w.burst
            t = self.arrivals.expovariate(rate)
            while True:
                await trio.sleep_until(self.t0 + t)
                if not self._more():
                    return
                await peer.send_all(self._issue(i, w.burst))
                t += self.arrivals.expovariate(rate)
        else:
            if not self._more():
                return
            await peer.send_all(self._issue(i, w.closed))
            while True:
                await self.slots[i].acquire()
                if not self._more():
                    return
                await peer.send_all(self._issue(i, 1))

    async def _peer_reader(self, i: int, peer: trio.SocketStream) -> None:
        r = self.result
        buffer = bytearray()
        while True:
            data = await peer.receive_some(65536)
            if not data:
                return
            buffer += data
            now = self._clock()
            for frame in _frames(buffer):
                _, rid, _ = _REPLY.unpack_from(frame)
                sent, origin = self.sent.pop(rid)
                r.latencies.append(now - sent)
                r.replies_per_stream[i] += 1
                r.end = now
                self.replied.append(now)
                if not self.w.open_loop:
                    self.slots[origin].release()
            if not self.issuing and not self.sent:
                self.all_answered.set()
