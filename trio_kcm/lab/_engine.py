"""What the two engines share: the policy under test, the mux, the bookkeeping.

Both engines (:mod:`._virtual`, :mod:`._real`) run the real
:func:`trio_kcm.open_mux` with the real policy, configured here, once
(:func:`open_lab_mux`); they differ in what stands around it.  A
:class:`Driver` keeps the peer's side of the accounting -- which requests
are out, when each was written, which are answered -- and makes the
:class:`RunResult` at the end.

Latency, in both: from the moment the peer writes a request to the moment it
has read the whole reply.  Replies may come back on any stream (the transmit
policy picks one), so the peer matches them by request id.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeAlias

from .._mux import Mux, open_mux
from .._parsers import LengthPrefixed
from .._policy import Policy
from ._policies import PolicySpec, parse_policies
from ._results import Engine, RunResult
from ._wire import request
from ._workload import Workload

__all__ = ["Contender", "Driver", "PolicyLike", "Progress", "open_lab_mux"]

#: A policy to run: a name (with options if you like: ``"p2c(seed=7)"``), a
#: :class:`PolicySpec`, or a policy object.
PolicyLike: TypeAlias = str | PolicySpec | Policy

#: Called now and then with the fraction of the issuing window done (0.0 to 1.0).
Progress = Callable[[float], None]

#: Per-socket buffers: large enough never to fill.  The workers' queues are
#: their sockets' receive queues, unbounded here, so that the policy's
#: choice, not backpressure, decides where a request waits.
_UNBOUNDED = 1 << 60


def open_lab_mux(workload: Workload, policy: Policy) -> AbstractAsyncContextManager[Mux]:
    """The mux every lab run uses: length-prefixed messages, unbounded queues."""
    return open_mux(
        parser=LengthPrefixed(">I", adjust=4),
        policy=policy,
        receive_buffer_size=_UNBOUNDED,
        send_buffer_size=_UNBOUNDED,
        max_message_size=max(workload.size, workload.reply_size, 1 << 16),
    )


def _rng(workload: Workload, purpose: str) -> random.Random:
    """A generator seeded from the workload's seed and ``purpose`` (the same in any process)."""
    return random.Random(f"trio-kcm-lab:{workload.seed}:{purpose}")


@dataclass(frozen=True)
class Contender:
    """A policy ready to run: the object, and how the reports name it."""

    policy: Policy
    label: str
    name: str
    options: dict[str, Any]

    @classmethod
    def make(cls, workload: Workload, policy: PolicyLike, label: str | None) -> Contender:
        """Build ``policy`` for a run of ``workload`` (a seeded one, for a name or spec).

        Raises:
          ValueError: A string with options is not one ``name(key=value, ...)``.
          trio_kcm.PolicyLoadError: A name or spec does not build.

        """
        if isinstance(policy, str):
            specs = parse_policies(policy) if "(" in policy else [PolicySpec(policy)]
            if len(specs) != 1:
                raise ValueError(f"one policy, not {len(specs)}: {policy!r}")
            policy = specs[0]
        if isinstance(policy, PolicySpec):
            seed = _rng(workload, f"policy:{policy.name}").getrandbits(32)
            built = policy.build(seed=seed)
            return cls(built, label or policy.label, policy.name, dict(policy.options))
        name = getattr(policy, "name", "") or type(policy).__name__
        return cls(policy, label or name, name, {})


class Driver:
    """The peer's bookkeeping for one run: issuing requests, matching replies.

    Times are seconds from the start of the run, as the engine measures them.
    """

    def __init__(self, workload: Workload, progress: Progress | None) -> None:
        w = workload
        self.w = w
        self.progress = progress
        self.arrivals = _rng(w, "arrivals")
        self.costs = _rng(w, "costs")
        rate = w.arrival_rate
        #: Open loop: each stream's peer is a Poisson source of bursts at this rate.
        self.burst_rate = 0.0 if rate is None else rate / w.streams / w.burst
        #: Closed loop: the requests each stream keeps outstanding.
        self.outstanding = w.closed or 0
        self.sent: dict[int, tuple[float, int]] = {}  # rid -> (time written, stream)
        self.replied: list[float] = []  # when each reply was read
        self.latencies: list[float] = []
        self.next_id = 0
        self.issuing = True
        self.window_end = w.duration
        self.end = 0.0
        self.steered = [0] * w.workers
        self.busy = [0.0] * w.workers
        self.max_queued = [0] * w.workers
        self.requests_per_stream = [0] * w.streams
        self.replies_per_stream = [0] * w.streams

    def can_issue(self, now: float) -> bool:
        """Whether the peer still issues requests at ``now``; if not, the window closes."""
        w = self.w
        if not self.issuing:
            return False
        if now >= w.duration or (w.messages is not None and self.next_id >= w.messages):
            self.stop_issuing(now)
            return False
        return True

    def stop_issuing(self, now: float) -> None:
        """The issuing window closes at ``now`` (or when it was to close anyway)."""
        if self.issuing:
            self.issuing = False
            # Message-bounded: the window ends with the last request.
            self.window_end = min(self.window_end, now)

    def issue(self, stream: int, count: int, now: float) -> bytes:
        """``count`` requests (fewer at the message limit) written on ``stream`` at ``now``."""
        w = self.w
        if w.messages is not None:
            count = min(count, w.messages - self.next_id)
        data = []
        for _ in range(count):
            rid = self.next_id
            self.next_id += 1
            data.append(request(w.size, rid, w.service.sample(self.costs)))
            self.sent[rid] = (now, stream)
        self.requests_per_stream[stream] += count
        if w.messages is not None and self.next_id >= w.messages:
            self.stop_issuing(now)
        return b"".join(data)

    def answered(self, rid: int, stream: int, now: float) -> int:
        """The reply to ``rid`` was read from ``stream`` at ``now``; returns its origin stream."""
        sent, origin = self.sent.pop(rid)
        self.latencies.append(now - sent)
        self.replies_per_stream[stream] += 1
        self.end = now
        self.replied.append(now)
        return origin

    def served(self, worker: int, service: float, queued: int) -> None:
        """``worker`` took a request that takes ``service`` seconds, ``queued`` waiting."""
        self.steered[worker] += 1
        self.busy[worker] += service
        self.queued(worker, queued)

    def queued(self, worker: int, queued: int) -> None:
        """``queued`` requests wait in ``worker``'s socket."""
        if queued > self.max_queued[worker]:
            self.max_queued[worker] = queued

    def report_progress(self, now: float) -> None:
        """Tell the progress callback how far issuing has got: by time or by count."""
        if self.progress is None:
            return
        w = self.w
        by_time = now / w.duration if math.isfinite(w.duration) else 0.0
        by_count = self.next_id / w.messages if w.messages else 0.0
        self.progress(min(1.0, max(by_time, by_count)))

    def result(self, contender: Contender, engine: Engine, wall: float) -> RunResult:
        """What the run measured (call it when the run is over)."""
        w = self.w
        window = min(self.window_end, w.duration)
        return RunResult(
            workload=w,
            engine=engine,
            policy=contender.label,
            name=contender.name,
            options=contender.options,
            latencies=tuple(self.latencies),
            issued=self.next_id,
            issued_in_window=self.next_id,  # nothing is issued after the window
            completed_in_window=sum(1 for t in self.replied if t <= window),
            window=window,
            end=self.end,
            steered=tuple(self.steered),
            busy=tuple(self.busy),
            max_queued=tuple(self.max_queued),
            requests_per_stream=tuple(self.requests_per_stream),
            replies_per_stream=tuple(self.replies_per_stream),
            wall=wall,
        )
