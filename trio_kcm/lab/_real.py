"""The real engine: the same workload over loopback TCP, in real time.

``M`` loopback TCP connections to an in-process peer, attached to the mux;
workers are tasks that ``receive``, sleep for the service time and ``send``.
Not reproducible: a check of the same workload against the real world.
"""

from __future__ import annotations

import math
import time

import trio

from .._policy import Policy
from .._socket import KCMSocket
from ._engine import Contender, Driver, PolicyLike, Progress, open_lab_mux
from ._results import RunResult
from ._wire import frames, reply, reply_id, request_fields
from ._workload import Workload

__all__ = ["NO_LINK", "run_loopback", "run_real"]

NO_LINK = "a link is for virtual time: run_real runs over loopback TCP as it is"


async def run_real(
    workload: Workload,
    policy: PolicyLike,
    *,
    label: str | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run ``workload`` through a mux with ``policy`` over loopback TCP, in real time.

    The peer, the mux and the workers are tasks of the calling Trio run; the
    streams are TCP connections on 127.0.0.1.  Not reproducible: latencies
    include Python's own work, and service times are real :func:`trio.sleep`
    calls, so they are no shorter than the timer's resolution (about a
    millisecond with epoll).  Requests still unanswered ``drain`` seconds
    after issuing stopped (the larger of 1 s and the duration, at most 10 s)
    are counted as unanswered.

    From synchronous code: ``trio.run(run_real, workload, policy)``.

    Args:
      workload: What to run; it must have no :attr:`~Workload.link`.
      policy: The policy under test, as for :func:`simulate`.
      label: How the result names the policy, as for :func:`simulate`.
      progress: Called now and then with the fraction of the issuing
        window done, from 0.0 to 1.0.

    Returns:
      What the run measured.

    Raises:
      ValueError: The workload has a link (links are for virtual time), or
        ``policy`` is a string that is not one policy.
      trio_kcm.PolicyLoadError: The policy's name or spec does not build.
      OSError: The loopback connections could not be made.

    """
    return await run_loopback(workload, Contender.make(workload, policy, label), progress)


async def run_loopback(
    workload: Workload, contender: Contender, progress: Progress | None
) -> RunResult:
    """:func:`run_real` with the policy built."""
    if workload.link is not None:
        raise ValueError(NO_LINK)
    start = time.perf_counter()
    real = _Real(workload, contender.policy, progress)
    await real.run()
    return real.result(contender, "real", time.perf_counter() - start)


class _Real(Driver):
    """Peers, mux and workers as tasks over loopback TCP."""

    def __init__(self, workload: Workload, policy: Policy, progress: Progress | None) -> None:
        super().__init__(workload, progress)
        self.policy = policy
        self.t0 = 0.0
        self.all_answered = trio.Event()
        self.slots: list[trio.Semaphore] = []

    def _clock(self) -> float:
        return trio.current_time() - self.t0

    def _more(self) -> bool:
        now = self._clock()
        if not self.can_issue(now):
            return False
        self.report_progress(now)
        return True

    def stop_issuing(self, now: float) -> None:
        super().stop_issuing(now)
        if not self.sent:
            self.all_answered.set()

    async def run(self) -> None:
        w = self.w
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        peers: list[trio.SocketStream] = []
        try:
            async with open_lab_mux(w, self.policy) as mux:
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
                    self.steered[j] += sock.rx_queued_bytes // w.size
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            for peer in peers:
                await trio.aclose_forcefully(peer)
        self.stop_issuing(self._clock())

    async def _worker(self, j: int, sock: KCMSocket) -> None:
        w = self.w
        factor = w.service.factor(j)
        while True:
            message = await sock.receive()
            queued = sock.rx_queued_bytes // w.size + 1
            rid, cost = request_fields(message)
            service = cost * factor
            self.served(j, service, queued)
            await trio.sleep(service)
            await sock.send(reply(w.reply_size, rid, j))

    async def _peer_writer(self, i: int, peer: trio.SocketStream) -> None:
        w = self.w
        if w.open_loop:
            t = self.arrivals.expovariate(self.burst_rate)
            while True:
                await trio.sleep_until(self.t0 + t)
                if not self._more():
                    return
                await peer.send_all(self.issue(i, w.burst, self._clock()))
                t += self.arrivals.expovariate(self.burst_rate)
        else:
            if not self._more():
                return
            await peer.send_all(self.issue(i, self.outstanding, self._clock()))
            while True:
                await self.slots[i].acquire()
                if not self._more():
                    return
                await peer.send_all(self.issue(i, 1, self._clock()))

    async def _peer_reader(self, i: int, peer: trio.SocketStream) -> None:
        buffer = bytearray()
        while True:
            data = await peer.receive_some(65536)
            if not data:
                return
            buffer += data
            now = self._clock()
            for frame in frames(buffer):
                origin = self.answered(reply_id(frame), i, now)
                if not self.w.open_loop:
                    self.slots[origin].release()
            if not self.issuing and not self.sent:
                self.all_answered.set()
