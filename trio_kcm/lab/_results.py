"""What one run measured, and the statistics made of it.

Pure: no Trio, no I/O.  All times are in seconds (virtual seconds for a
virtual run).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._units import json_number
from ._workload import Workload

__all__ = ["PERCENTILES", "Engine", "RunResult", "jain", "percentile"]

#: Where a run ran, ``"virtual"`` (:func:`simulate`) or ``"real"`` (:func:`run_real`).
Engine = Literal["virtual", "real"]

#: The latency percentiles in the report, with their JSON keys.
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of ``sorted_values``.

    The smallest value with at least ``q`` % of the values at or below it: an
    observed value, never an interpolation, so p99.9 of 1,000 values is the
    largest.

    Args:
      sorted_values: The values, in ascending order.
      q: The percentile, from 0 to 100.

    Returns:
      One of the values; NaN if there are none.

    Raises:
      ValueError: ``q`` is not in [0, 100].

    """
    n = len(sorted_values)
    if not n:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is in [0, 100], not {q!r}")
    # Rounded before ceil: 99.9 / 100 * 1000 is 999.0000000000001 in floats.
    rank = max(1, math.ceil(round(q / 100.0 * n, 9)))
    return sorted_values[min(rank, n) - 1]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index, ``(sum x)^2 / (n * sum x^2)``.

    Args:
      values: Non-negative amounts, one per party (requests per worker, ...).

    Returns:
      1.0 when all values are equal, ``1/n`` when one has everything; NaN for
      no values or all zeros.

    """
    n = len(values)
    top = max(values, default=0.0)
    if not n or top <= 0:
        return math.nan
    scaled = [x / top for x in values]  # no underflow in x * x
    total = math.fsum(scaled)
    return total * total / (n * math.fsum(x * x for x in scaled))


def _shares(counts: Sequence[float]) -> tuple[float, ...]:
    total = math.fsum(counts)
    return tuple(c / total if total else 0.0 for c in counts)


def _jsonable(value: object) -> object:
    """An option as JSON: a literal as it is, anything else by its repr."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


@dataclass(frozen=True)
class RunResult:
    """What one run of one policy measured, and its statistics.

    The fields are the raw measurements; the properties are the statistics
    made of them (a statistic that is undefined, such as a percentile of no
    latencies, is NaN).  :meth:`to_dict` is the policy's entry in the JSON
    report.
    """

    #: The workload that ran.
    workload: Workload
    #: ``"virtual"`` or ``"real"``.
    engine: Engine
    #: The policy's label, how the reports name it.
    policy: str
    #: The policy's registered name (``""`` if the same as :attr:`policy`).
    name: str = ""
    #: The options it was built with.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: For each answered request, in the order answered, the time from request
    #: written to reply read.
    latencies: tuple[float, ...] = ()
    #: Requests issued in all.
    issued: int = 0
    #: Requests issued within the issuing window.
    issued_in_window: int = 0
    #: Replies read within the issuing window.
    completed_in_window: int = 0
    #: How long requests were issued (the window), from the start.
    window: float = 0.0
    #: When the last reply was read, from the start.
    end: float = 0.0
    #: The requests the policy steered to each worker.
    steered: tuple[int, ...] = ()
    #: The seconds each worker spent serving.
    busy: tuple[float, ...] = ()
    #: The most requests that waited in each worker's socket at once.
    max_queued: tuple[int, ...] = ()
    #: The requests the peer wrote on each stream.
    requests_per_stream: tuple[int, ...] = ()
    #: The replies the mux wrote on each stream.
    replies_per_stream: tuple[int, ...] = ()
    #: The real seconds the run took (in no report, as it is not reproducible).
    wall: float = field(default=0.0, compare=False)

    @functools.cached_property
    def _sorted(self) -> list[float]:
        return sorted(self.latencies)

    @property
    def _window(self) -> float:
        return self.window if self.window > 0 else self.end

    @property
    def completed(self) -> int:
        """Requests answered."""
        return len(self.latencies)

    @property
    def unanswered(self) -> int:
        """Requests never answered (0 in a virtual run)."""
        return self.issued - self.completed

    @property
    def throughput(self) -> float:
        """Replies read within the issuing window, per second of it."""
        window = self._window
        return self.completed_in_window / window if window > 0 else math.nan

    @property
    def backlog(self) -> int:
        """Requests still unanswered when the issuing window closed."""
        return self.issued_in_window - self.completed_in_window

    @property
    def drain(self) -> float:
        """How long after the window the last reply came."""
        return max(0.0, self.end - self.window)

    def latency(self, q: float) -> float:
        """The nearest-rank ``q``-th percentile of the latencies (see :func:`percentile`)."""
        return percentile(self._sorted, q)

    @property
    def p50(self) -> float:
        """The median latency."""
        return self.latency(50)

    @property
    def p99(self) -> float:
        """The 99th percentile of the latencies."""
        return self.latency(99)

    @property
    def p999(self) -> float:
        """The 99.9th percentile of the latencies."""
        return self.latency(99.9)

    @property
    def mean_latency(self) -> float:
        """The mean latency."""
        lat = self._sorted
        return math.fsum(lat) / len(lat) if lat else math.nan

    @property
    def max_latency(self) -> float:
        """The longest latency."""
        return self._sorted[-1] if self.latencies else math.nan

    @property
    def worker_shares(self) -> tuple[float, ...]:
        """Each worker's share of the requests (they sum to 1)."""
        return _shares(self.steered)

    @property
    def worker_utilisation(self) -> tuple[float, ...]:
        """Each worker's busy time as a fraction of the run."""
        end = self.end
        return tuple(b / end if end > 0 else 0.0 for b in self.busy)

    @property
    def jain(self) -> float:
        """Jain's fairness index over :attr:`worker_shares` (1.0 when all are equal)."""
        return jain(self.worker_shares)

    @property
    def jain_capacity(self) -> float:
        """Jain's index over the shares relative to each worker's speed.

        1.0: each worker loaded in proportion to its capacity.
        """
        service = self.workload.service
        speeds = _shares([1.0 / service.factor(j) for j in range(len(self.steered))])
        return jain([s / c if c else 0.0 for s, c in zip(self.worker_shares, speeds, strict=True)])

    def to_dict(self) -> dict[str, Any]:
        """The policy's entry in the JSON report: plain JSON types, stable keys.

        Undefined numbers are ``None``; options that are not JSON literals
        are given by their ``repr``.
        """
        latency: dict[str, float | None] = {"mean": json_number(self.mean_latency)}
        for key, q in PERCENTILES:
            latency[key] = json_number(self.latency(q))
        latency["max"] = json_number(self.max_latency)
        return {
            "policy": self.policy,
            "name": self.name or self.policy,
            "options": {k: _jsonable(v) for k, v in self.options.items()},
            "requests": self.issued,
            "completed": self.completed,
            "unanswered": self.unanswered,
            "throughput": json_number(self.throughput),
            "window": self._window,
            "backlog": self.backlog,
            "drain": self.drain,
            "latency": latency,
            "worker_requests": list(self.steered),
            "worker_shares": list(self.worker_shares),
            "worker_utilisation": list(self.worker_utilisation),
            "worker_max_queued": list(self.max_queued),
            "jain": json_number(self.jain),
            "jain_capacity": json_number(self.jain_capacity),
            "stream_requests": list(self.requests_per_stream),
            "stream_replies": list(self.replies_per_stream),
        }
