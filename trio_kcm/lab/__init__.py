"""The policy lab: compare load-balancing policies under a workload, from Python.

``M`` streams (client connections) carry requests from a peer to a mux with
``N`` worker sockets; the policy under test steers each request to a worker
(receive side) and each reply to a stream (transmit side); every worker
serves its socket's queue in order, one request at a time, for a service time
drawn from a distribution.  The mux and the policy are the real ones; what
stands around them is simulated.  For each policy the lab measures
throughput, latency percentiles, each worker's share of the requests and
Jain's fairness index over those shares.

:func:`simulate` runs in virtual time (Trio's
:class:`~trio.testing.MockClock`): fast, and the same seed gives the same
numbers in any process.  :func:`run_real` runs the same workload over
loopback TCP in real time.  :func:`compare` runs several policies and gives a
:class:`Comparison`, which writes the reports: JSON, Markdown, a ``rich``
table, a ``matplotlib`` plot.  ``trio-kcm lab`` is this module from the
shell.

::

    from trio_kcm import lab

    workload = lab.Workload(service=lab.parse_service("pareto:1ms,alpha=1.3"), load=0.6)
    result = lab.simulate(workload, MyPolicy())
    print(result.throughput, result.p99, result.jain)

    comparison = lab.compare(workload, {"mine": MyPolicy(), "lq": "least-queued"})
    Path("results.json").write_text(comparison.to_json())

Importing it imports neither ``rich`` nor ``matplotlib``: only
:meth:`Comparison.rich_table` and :meth:`Comparison.plot` need them.
"""

from ._compare import compare
from ._engine import PolicyLike
from ._policies import PolicySpec, parse_policies
from ._real import run_real
from ._report import JSON_FORMAT, Comparison
from ._results import Engine, RunResult, jain, percentile
from ._units import (
    format_seconds,
    parse_bandwidth,
    parse_count,
    parse_duration,
    parse_size,
)
from ._virtual import simulate
from ._wire import MIN_SIZE
from ._workload import DEFAULT_LOAD, Link, ServiceTime, Workload, parse_link, parse_service

__all__ = [
    "DEFAULT_LOAD",
    "JSON_FORMAT",
    "MIN_SIZE",
    "Comparison",
    "Engine",
    "Link",
    "PolicyLike",
    "PolicySpec",
    "RunResult",
    "ServiceTime",
    "Workload",
    "compare",
    "format_seconds",
    "jain",
    "parse_bandwidth",
    "parse_count",
    "parse_duration",
    "parse_link",
    "parse_policies",
    "parse_service",
    "parse_size",
    "percentile",
    "run_real",
    "simulate",
]
