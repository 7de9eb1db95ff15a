"""The virtual engine: a discrete-event simulation around the real mux.

``M`` in-memory streams (:class:`_Pipe`, a minimal :class:`trio.abc.Stream`)
are attached to the mux and ``N`` KCM sockets opened on it, in
``trio.run(clock=MockClock())``.  Reproducible for a seed, in any process,
because exactly one task drives everything: a discrete-event loop over a heap
of ``(time, seq, kind, arg)``, ties broken by ``seq`` (the order the events
were scheduled in, itself deterministic).  For each event the driver moves
the mock clock to the event's time (no task sleeps, so moving the clock is
all the waiting there is), does exactly *one* thing that wakes at most one
mux task -- a peer's bytes reach stream ``i`` (its reader wakes), or worker
``j`` sends its reply with ``send_nowait`` (one stream's writer wakes), or a
link finishes a write (that writer goes on) -- and then waits with
``wait_all_tasks_blocked()`` until that task has done all it can.  So at any
moment at most one task is runnable, and Trio's randomised scheduling order
(and its tie-breaks by object id) has nothing to choose from.  (One way round
it: a transmit policy that holds groups back, returning ``None``, and then
releases them to several streams at once wakes several writers together.
No installed policy does.)

Workers have no tasks: after each event an idle worker takes its socket's
next message with ``receive_nowait`` and schedules its own "done" event
``cost * slowdown`` later.  What the mux writes is handed straight to the
driver, which parses the replies (its own deframer, not the mux's).  The
sockets' queues are unbounded (:func:`._engine.open_lab_mux`): a paused
reader woken together with another would bring back the scheduler's
randomness.

With no link there is no wire: a write arrives at once.  With one, each
stream has a link per direction that carries ``bandwidth`` bytes per second
plus a propagation delay: a peer's write reaches the mux when the link has
sent it (a "deliver" event), and the mux's writer waits in ``send_all`` until
its link has sent the write (a "sent" event; the peer reads it ``delay``
later, a "wire" event) -- so writes queue on a slow stream and the transmit
policy sees it.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable

import trio
import trio.testing

from .._policy import Policy
from .._socket import KCMSocket
from ._engine import Contender, Driver, PolicyLike, Progress, open_lab_mux
from ._results import RunResult
from ._wire import frames, reply, reply_id, request_fields
from ._workload import Workload

__all__ = ["run_virtual", "simulate"]

# Event kinds; the argument is a stream index, or a worker index for _DONE.
_OPEN = 0  # open loop: a stream's peer writes a burst, and schedules its next one
_WINDOW = 1  # closed loop, at 0: a stream's peer writes its whole window at once
_NEXT = 2  # closed loop: a reply freed a slot, the origin's peer writes one request
_DONE = 3  # a worker finished its request
_DELIVER = 4  # link: a peer's write reaches the mux
_SENT = 5  # link: the link finished sending the mux's write (its writer goes on)
_WIRE = 6  # link: ... and the write reaches the peer


def simulate(
    workload: Workload,
    policy: PolicyLike,
    *,
    label: str | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run ``workload`` through a mux with ``policy``, in virtual time.

    The real :func:`trio_kcm.open_mux` and the real policy, with in-memory
    streams and simulated peers and workers around them, on
    :class:`trio.testing.MockClock`: fast, and the same workload (seed
    included) gives the same result in any process.

    It calls :func:`trio.run` itself, because the run must be its own: the
    simulation moves the clock and waits for every task to block, so any
    other task would upset it.  From inside Trio, run it in a thread:
    ``await trio.to_thread.run_sync(simulate, workload, policy)``.

    Args:
      workload: What to run.
      policy: The policy under test: a registered name, with options if you
        like (``"p2c(seed=7)"``, as :func:`parse_policies` reads them), or a
        :class:`PolicySpec` -- either built with a seed derived from the
        workload's, if it takes one -- or a policy object (used as it is: a
        new one for each run).
      label: How the result names the policy (default: its spec's
        :attr:`~PolicySpec.label`, or the object's ``name`` or class name).
      progress: Called now and then with the fraction of the issuing
        window done, from 0.0 to 1.0.

    Returns:
      What the run measured.

    Raises:
      ValueError: ``policy`` is a string that is not one policy.
      trio_kcm.PolicyLoadError: The policy's name or spec does not build.

    """
    return run_virtual(workload, Contender.make(workload, policy, label), progress)


def run_virtual(workload: Workload, contender: Contender, progress: Progress | None) -> RunResult:
    """:func:`simulate` with the policy built."""
    clock = trio.testing.MockClock()
    sim = _Simulation(workload, contender.policy, clock, progress)
    start = time.perf_counter()
    trio.run(sim.run, clock=clock)
    return sim.result(contender, "virtual", time.perf_counter() - start)


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


class _Simulation(Driver):
    """One policy, one workload: the discrete-event driver (see the module doc)."""

    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        clock: trio.testing.MockClock,
        progress: Progress | None,
    ) -> None:
        super().__init__(workload, progress)
        w = workload
        self.clock = clock
        self.policy = policy
        self.heap: list[tuple[float, int, int, int]] = []  # (time, seq, kind, arg)
        self.seq = 0
        self.now = 0.0
        self.t0 = 0.0
        self.factors = [w.service.factor(j) for j in range(w.workers)]
        self.current = [0] * w.workers  # the request each busy worker serves
        self.idle = list(range(w.workers))  # idle workers, in index order
        self.dirty: list[int] = []  # streams with new bytes for the peer
        self.buffers = [bytearray() for _ in range(w.streams)]  # the peer's, per stream
        # Links: when each is free again, each way, and the writes on it.
        link = w.link
        self.bandwidth = [link.bandwidth_of(i) if link else 0.0 for i in range(w.streams)]
        self.delay = link.delay if link else 0.0
        self.up_free = [0.0] * w.streams
        self.down_free = [0.0] * w.streams
        self.uplink: list[deque[bytes]] = [deque() for _ in range(w.streams)]
        self.downlink: list[deque[bytes]] = [deque() for _ in range(w.streams)]
        self.pipes: list[_Pipe] = []
        self.socks: list[KCMSocket] = []

    def schedule(self, t: float, kind: int, arg: int) -> None:
        heapq.heappush(self.heap, (t, self.seq, kind, arg))
        self.seq += 1

    # -- the run ----------------------------------------------------------------

    async def run(self) -> None:
        w = self.w
        async with open_lab_mux(w, self.policy) as mux:
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
            self.stop_issuing(self.now)

    async def _loop(self) -> None:
        heap = self.heap
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
            if not steps & 1023:
                self.report_progress(self.now)

    async def _arrive(self, kind: int, stream: int) -> None:
        w = self.w
        if not self.can_issue(self.now):
            return
        if kind == _OPEN:
            count = w.burst
            nxt = self.now + self.arrivals.expovariate(self.burst_rate)
            if nxt < w.duration:
                self.schedule(nxt, _OPEN, stream)
        else:
            count = self.outstanding if kind == _WINDOW else 1
        payload = self.issue(stream, count, self.now)
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
        self.socks[worker].send_nowait(reply(self.w.reply_size, rid, worker))
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
        if not queued:
            if not from_idle:
                self.idle.append(worker)
                self.idle.sort()
            return False
        rid, cost = request_fields(sock.receive_nowait())
        service = cost * self.factors[worker]
        self.current[worker] = rid
        self.served(worker, service, queued)
        self.schedule(self.now + service, _DONE, worker)
        return True

    # -- the peer's side -------------------------------------------------------

    def _collect(self) -> None:
        """The peer reads whole replies from every stream the mux wrote to."""
        for stream in self.dirty:
            for frame in frames(self.buffers[stream]):
                origin = self.answered(reply_id(frame), stream, self.now)
                if not self.w.open_loop:
                    # The origin's peer has a free slot: its next request, now.
                    self.schedule(self.now, _NEXT, origin)
        self.dirty.clear()
