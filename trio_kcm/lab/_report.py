"""Several policies under one workload, and the reports made of them.

JSON (the format of ``trio-kcm lab --json``), Markdown, a :mod:`rich` table
and a :mod:`matplotlib` plot.  ``rich`` and ``matplotlib`` are imported by the
methods that draw with them, only when called.

The JSON format, version 1; all times in seconds, ``null`` where a number is
undefined::

    {
      "format": "trio-kcm-lab/1",
      "engine": "virtual" | "real",
      "workload": {streams, workers, service, service_mean, slow_workers,
                   slow_factor, mode ("open" | "closed"), rate, load, closed,
                   burst, capacity, size, reply_size, duration, messages, seed,
                   link (null, or its spec: "10MB/s,delay=50us,x10")},
      "policies": {
        LABEL: {policy, name, options, requests, completed, unanswered,
                throughput, window, backlog, drain,
                latency: {mean, p50, p90, p99, "p99.9", max},
                worker_requests, worker_shares, worker_utilisation,
                worker_max_queued, jain, jain_capacity,
                stream_requests, stream_replies},
        ...
      },
      "errors": {LABEL: "what went wrong", ...}   (policies that crashed)
    }

``throughput`` is replies received within the issuing window per second of
it; ``backlog`` the requests still unanswered when the window closed;
``drain`` how long after it the last reply came.  ``worker_shares`` sum to 1;
``jain`` is Jain's index over them, ``jain_capacity`` over the shares divided
by each worker's share of the capacity (1.0: load in proportion to speed).
No wall-clock time is in it, so two runs with one seed give identical JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._results import Engine, RunResult
from ._units import format_bandwidth, format_seconds
from ._workload import Workload

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.table import Table

__all__ = ["JSON_FORMAT", "Comparison", "check_labels"]

#: The ``"format"`` of the JSON report: its name and version.
JSON_FORMAT = "trio-kcm-lab/1"


@dataclass(frozen=True)
class Comparison:
    """Policies run under one workload, one engine: the results side by side.

    :func:`compare` makes one; so can you, from results of :func:`simulate`
    or :func:`run_real` with the same workload and engine.

    Raises:
      ValueError: A result is of another workload or engine, or two results
        (or errors) have one label.

    """

    #: The workload every policy ran.
    workload: Workload
    #: ``"virtual"`` or ``"real"``.
    engine: Engine
    #: One result per policy, in order (kept as a tuple).
    results: Sequence[RunResult] = ()
    #: The policies that crashed, by label, each with ``"ExceptionType: message"``.
    errors: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "results", tuple(self.results))
        object.__setattr__(self, "errors", dict(self.errors))
        check_labels([r.policy for r in self.results] + list(self.errors))
        for r in self.results:
            if r.workload != self.workload or r.engine != self.engine:
                raise ValueError(f"{r.policy}: a result of another workload or engine")

    def __getitem__(self, label: str) -> RunResult:
        """The result of the policy labelled ``label``.

        Raises:
          KeyError: No result has that label.

        """
        for r in self.results:
            if r.policy == label:
                return r
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report as plain data (see :meth:`to_json`)."""
        return {
            "format": JSON_FORMAT,
            "engine": self.engine,
            "workload": self.workload.to_dict(),
            "policies": {r.policy: r.to_dict() for r in self.results},
            "errors": dict(self.errors),
        }

    def to_json(self) -> str:
        """The JSON report, the format ``trio-kcm lab --json`` prints.

        Its ``"format"`` is :data:`JSON_FORMAT`; it holds no wall-clock
        time, so the same virtual runs give the same text.
        """
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def describe(self) -> str:
        """One line saying what ran: the workload, in words."""
        w = self.workload
        svc = w.service
        parts = [
            f"{_plural(w.streams, 'stream')} -> {_plural(w.workers, 'worker')}",
            f"service {svc.describe()}" + _slower("worker", svc.slow_workers, svc.slow_factor),
        ]
        if w.open_loop:
            parts.append(
                f"open loop {w.arrival_rate or 0.0:.0f} req/s = {w.offered_load or 0.0:.0%}"
                f" of capacity {w.capacity:.0f}/s"
                + (f", bursts of {w.burst}" if w.burst > 1 else "")
            )
        else:
            parts.append(f"closed loop, {w.closed} outstanding per stream")
        if w.link is not None:
            link = w.link
            text = f"links {format_bandwidth(link.bandwidth)}"
            if link.delay:
                text += f" + {format_seconds(link.delay)}"
            parts.append(text + _slower("stream", link.slow_links, link.slow_factor))
        size = f"{w.size} B requests" + (
            f", {w.reply_size} B replies" if w.reply_size != w.size else ""
        )
        parts.append(size)
        limit = []
        if math.isfinite(w.duration):
            limit.append(format_seconds(w.duration))
        if w.messages is not None:
            limit.append(f"{w.messages} requests")
        virtual = self.engine == "virtual" and math.isfinite(w.duration)
        parts.append(" or ".join(limit) + (" of virtual time" if virtual else ""))
        parts.append(f"seed {w.seed}")
        return ", ".join(parts)

    def to_markdown(self) -> str:
        """The results as a Markdown table, what ran in a line below it."""
        head = (
            "| policy | msg/s | p50 | p99 | p99.9 | max | backlog | Jain | Jain/cap"
            " | worker shares % |"
        )
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for name, rep in self._reports().items():
            lat = rep["latency"]
            cells = [
                f"`{name}`",
                _rate(rep["throughput"]),
                *(_ms(lat[key]) for key in ("p50", "p99", "p99.9", "max")),
                str(rep["backlog"]),
                _fraction(rep["jain"]),
                _fraction(rep["jain_capacity"]),
                " ".join(f"{x * 100:.1f}" for x in rep["worker_shares"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"{self.describe()} ({self.engine} time).")
        return "\n".join(lines)

    def rich_table(self, *, width: int = 120, wall: float | None = None) -> Table:
        """The results as a :class:`rich.table.Table`, the best p99 highlighted.

        Needs :mod:`rich` (the ``cli`` extra).  The table fits in ``width``
        columns by leaving out, in turn, the max latency, the range of the
        shares, the backlog and the capacity-relative Jain index.

        Args:
          width: The columns it may take.
          wall: The seconds the runs took, for the caption (default: the sum
            of the results' :attr:`~RunResult.wall`).

        Returns:
          The table, for :meth:`rich.console.Console.print`.

        Raises:
          ImportError: :mod:`rich` is not installed.

        """
        from rich.console import Console

        if wall is None:
            wall = math.fsum(r.wall for r in self.results)
        wide = Console(width=10_000)  # measures are capped at the console's width
        reports = self._reports()
        for level in range(5):
            table = self._table(reports, wall, level)
            if wide.measure(table).minimum <= width:
                break
        return table

    def plot(self, path: str | os.PathLike[str] | None = None) -> Figure:
        """Draw the latency distributions: CDF and tail (1 - CDF), log scales.

        Needs :mod:`matplotlib` (the ``plot`` extra).  Draws on a figure of
        its own, not through :mod:`matplotlib.pyplot`: no backend is chosen,
        no global state is touched.

        Args:
          path: Where to write it (the format from the suffix: ``.png``,
            ``.svg``, ``.pdf``...), or ``None`` not to write it.

        Returns:
          The figure.

        Raises:
          ImportError: :mod:`matplotlib` is not installed.

        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(13, 5.5))
        ax_cdf, ax_tail = fig.subplots(1, 2)
        for result in self.results:
            lat = sorted(x for x in result.latencies if x > 0)
            if not lat:
                continue
            n = len(lat)
            ms = [x * 1e3 for x in lat]
            cdf = [(i + 1) / n for i in range(n)]
            ccdf = [1.0 - (i / n) for i in range(n)]
            style: dict[str, Any] = {"drawstyle": "steps-post", "linewidth": 1.2}
            ax_cdf.plot(ms, cdf, label=result.policy, **style)
            ax_tail.plot(ms, ccdf, label=result.policy, **style)
        ax_cdf.set_xscale("log")
        ax_cdf.set_xlabel("latency (ms, log)")
        ax_cdf.set_ylabel("fraction of requests <= latency")
        ax_cdf.set_title("CDF")
        ax_tail.set_xscale("log")
        ax_tail.set_yscale("log")
        ax_tail.set_xlabel("latency (ms, log)")
        ax_tail.set_ylabel("fraction of requests >= latency (log)")
        ax_tail.set_title("tail (1 - CDF)")
        for q in (0.01, 0.001):
            ax_tail.axhline(q, color="grey", linewidth=0.5, linestyle=":")
        for ax in (ax_cdf, ax_tail):
            ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
        fig.suptitle(f"trio-kcm lab ({self.engine} time)\n{self.describe()}", fontsize="small")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig

    # -- the table ------------------------------------------------------------------

    def _reports(self) -> dict[str, dict[str, Any]]:
        return {r.policy: r.to_dict() for r in self.results}

    def _caption(self, reports: Mapping[str, dict[str, Any]], wall: float) -> str:
        caption = self.describe() + f"; took {wall:.1f}s."
        if self.engine == "real":
            caption += (
                " Real time: latencies include Python's own work and the timer's"
                " resolution (about 1 ms), and vary from run to run."
            )
            rate = self.workload.arrival_rate
            best = max((r["throughput"] or 0.0 for r in reports.values()), default=0.0)
            if rate is not None and best < 0.8 * rate:
                caption += (
                    f" No policy reached 80% of the offered {rate:.0f} req/s: more than"
                    " this machine can process in real time? Try a lower --rate or --load, or"
                    " a longer --service."
                )
        return caption

    def _table(self, reports: Mapping[str, dict[str, Any]], wall: float, level: int) -> Table:
        from rich import box
        from rich.table import Table

        table = Table(
            title=f"trio-kcm lab ({self.engine} time)",
            caption=self._caption(reports, wall),
            caption_justify="left",
            box=box.SIMPLE_HEAD,
        )
        unanswered = any(r["unanswered"] for r in reports.values())
        keys = ["p50", "p99", "p99.9"] + ["max"] * (not unanswered and level < 1)
        span = level < 2
        columns = {
            "backlog": level < 3,
            "unanswered": unanswered,
            "Jain": True,
            "Jain/cap": level < 4,
        }
        longest = max((len(label) for label in reports), default=6)
        width = min(longest, 22 if level < 4 else 14)
        table.add_column("policy", style="bold", overflow="fold", min_width=width, max_width=width)
        for title in ["msg/s", *keys, *(c for c, shown in columns.items() if shown)]:
            narrow = {"msg/s": 5, "Jain": 5}.get(title, 6 if title in keys else len(title))
            table.add_column(title, justify="right", no_wrap=True, min_width=narrow)
        table.add_column("worker shares" if span else "shares", no_wrap=True)

        p99s = [r["latency"]["p99"] for r in reports.values() if r["latency"]["p99"] is not None]
        best = min(p99s) if p99s else None
        for name, rep in reports.items():
            lat = rep["latency"]
            cells = {key: _ms(lat[key]) for key in keys}
            if best is not None and lat["p99"] is not None and lat["p99"] <= best * 1.0001:
                cells["p99"] = f"[bold green]{cells['p99']}[/bold green]"
            values = {
                "backlog": str(rep["backlog"]),
                "unanswered": str(rep["unanswered"]),
                "Jain": _fraction(rep["jain"]),
                "Jain/cap": _fraction(rep["jain_capacity"]),
            }
            table.add_row(
                name,
                _rate(rep["throughput"]),
                *cells.values(),
                *(values[c] for c, shown in columns.items() if shown),
                _shares(rep["worker_shares"], span=span),
            )
        return table


def check_labels(labels: Sequence[str], hint: str = "") -> None:
    """Raise :exc:`ValueError` if a label is there twice."""
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"each policy needs a label of its own: {', '.join(twice)}{hint}")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _slower(what: str, count: int, factor: float) -> str:
    """`` (worker 0 10x slower)``, `` (streams 0-1 4x slower)``, or ``""``."""
    if not count:
        return ""
    who = f"{what} 0" if count == 1 else f"{what}s 0-{count - 1}"
    return f" ({who} {factor:g}x slower)"


def _ms(value: object) -> str:
    return format_seconds(value) if isinstance(value, (int, float)) else "-"


def _rate(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, (int, float)) else "-"


def _fraction(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


_BARS = " ▁▂▃▄▅▆▇█"


def _shares(shares: Sequence[float], *, span: bool = True) -> str:
    """Worker shares at a glance: a bar per worker (up to 16), then the range in %."""
    if not shares:
        return "-"
    top = max(shares)
    if top <= 0:
        return "-"
    lo, hi = min(shares) * 100, top * 100
    text = f"{lo:.1f}-{hi:.1f}%"
    if len(shares) > 16:
        return text
    bars = "".join(_BARS[max(1 if x > 0 else 0, round(x / top * 8))] for x in shares)
    return f"{bars} {text}" if span else bars
