"""``trio-kcm lab``: what one run measured, and the numbers made of it.

Pure: no Trio, no I/O, no rich.  An engine fills a :class:`RunResult`;
:func:`summarize` turns it into the JSON-ready report of one policy.

All times are in seconds (virtual seconds for a virtual run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PERCENTILES", "RunResult", "jain", "percentile", "summarize"]

#: The latency percentiles reported, with their JSON keys.
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of ``sorted_values`` (ascending).

    The smallest value with at least ``q`` % of the values at or below it: an
    observed value, never an interpolation, so p99.9 of 1,000 values is the
    largest.  NaN for no values.
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

    1 when all values are equal, ``1/n`` when one value has everything; NaN
    for no values or all zeros.
    """
    n = len(values)
    top = max(values, default=0.0)
    if not n or top <= 0:
        return math.nan
    scaled = [x / top for x in values]  # no underflow in x * x
    total = math.fsum(scaled)
    return total * total / (n * math.fsum(x * x for x in scaled))


@dataclass
class RunResult:
    """What an engine measured for one policy (raw, before summarizing)."""

    policy: str
    #: Per answered request, in the order answered: reply received - request sent.
    latencies: list[float] = field(default_factory=list)
    #: Requests issued in all.
    issued: int = 0
    #: Requests issued within the window / answered within it.
    issued_in_window: int = 0
    completed_in_window: int = 0
    #: The issuing period, and the time of the last reply (both from the start).
    window: float = 0.0
    end: float = 0.0
    #: Per worker: requests the policy steered to it (all of them served by
    #: the end of a virtual run), seconds spent serving.
    steered: list[int] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    #: Per worker: the most requests that waited in its socket at once.
    max_queued: list[int] = field(default_factory=list)
    #: Per stream: requests the peer wrote on it, replies the mux wrote on it.
    requests_per_stream: list[int] = field(default_factory=list)
    replies_per_stream: list[int] = field(default_factory=list)
    #: Real seconds the run took (not part of the report: it is not reproducible).
    wall: float = 0.0


def _num(x: float) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return x if math.isfinite(x) else None


def _shares(counts: Sequence[float]) -> list[float]:
    total = math.fsum(counts)
    return [c / total if total else 0.0 for c in counts]


def summarize(
    result: RunResult,
    capacity_weights: Sequence[float],
    *,
    name: str = "",
    options: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """The report of one policy: plain JSON types, stable keys.

    Args:
      result: What the engine measured.
      capacity_weights: Each worker's speed (1 / its slowdown factor), for the
        capacity-normalised fairness index.
      name: The policy's registered name (``result.policy`` is its label,
        options included).
      options: The options it was built with (JSON-ready).

    """
    lat = sorted(result.latencies)
    completed = len(lat)
    window = result.window if result.window > 0 else result.end
    latency: dict[str, float | None] = {
        "mean": _num(math.fsum(lat) / completed) if completed else None,
    }
    for key, q in PERCENTILES:
        latency[key] = _num(percentile(lat, q))
    latency["max"] = lat[-1] if lat else None
    shares = _shares(result.steered)
    cap_shares = _shares(capacity_weights)
    normalised = [s / c if c else 0.0 for s, c in zip(shares, cap_shares, strict=True)]
    end = result.end
    return {
        "policy": result.policy,
        "name": name or result.policy,
        "options": dict(options or {}),
        "requests": result.issued,
        "completed": completed,
        "unanswered": result.issued - completed,
        "throughput": _num(result.completed_in_window / window) if window > 0 else None,
        "window": window,
        "backlog": result.issued_in_window - result.completed_in_window,
        "drain": max(0.0, end - result.window),
        "latency": latency,
        "worker_requests": list(result.steered),
        "worker_shares": shares,
        "worker_utilisation": [b / end if end > 0 else 0.0 for b in result.busy],
        "worker_max_queued": list(result.max_queued),
        "jain": _num(jain(shares)),
        "jain_capacity": _num(jain(normalised)),
        "stream_requests": list(result.requests_per_stream),
        "stream_replies": list(result.replies_per_stream),
    }
