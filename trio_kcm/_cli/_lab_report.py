"""``trio-kcm lab``: the report as a rich table, as JSON, and as a plot.

The JSON format (``--json``), version 1; all times in seconds, ``null`` where a
number is undefined::

    {
      "format": "trio-kcm-lab/1",
      "engine": "virtual" | "real",
      "workload": {streams, workers, service, service_mean, slow_workers,
                   slow_factor, mode ("open" | "closed"), rate, load, closed,
                   burst, capacity, size, reply_size, duration, messages, seed,
                   link (null, or its spec: "10MB/s,delay=50us,x10")},
      "policies": {
        NAME: {policy, requests, completed, unanswered, throughput, window,
               backlog, drain,
               latency: {mean, p50, p90, p99, "p99.9", max},
               worker_requests, worker_shares, worker_utilisation,
               worker_max_queued, jain, jain_capacity,
               stream_requests, stream_replies},
        ...
      },
      "errors": {NAME: "what went wrong", ...}   (policies that crashed)
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
from collections.abc import Mapping, Sequence
from typing import Any

from ._lab_stats import RunResult
from ._lab_workload import Workload, format_bandwidth, format_seconds

__all__ = ["FORMAT", "describe_workload", "plot", "render_table", "to_json"]

FORMAT = "trio-kcm-lab/1"


def to_json(
    engine: str,
    workload: Workload,
    reports: Mapping[str, dict[str, Any]],
    errors: Mapping[str, str] | None = None,
) -> str:
    """The ``--json`` document."""
    doc = {
        "format": FORMAT,
        "engine": engine,
        "workload": workload.to_json(),
        "policies": dict(reports),
        "errors": dict(errors or {}),
    }
    return json.dumps(doc, indent=2, allow_nan=False)


def describe_workload(workload: Workload, engine: str) -> str:
    """One line saying what ran."""
    w = workload
    svc = w.service
    parts = [
        f"{_plural(w.streams, 'stream')} -> {_plural(w.workers, 'worker')}",
        f"service {svc.describe()}",
    ]
    if svc.slow_workers:
        who = "worker 0" if svc.slow_workers == 1 else f"workers 0-{svc.slow_workers - 1}"
        parts[-1] += f" ({who} {svc.slow_factor:g}x slower)"
    if w.open_loop:
        load = w.load or 0.0
        parts.append(
            f"open loop {w.rate:.0f} req/s = {load:.0%} of capacity {w.capacity:.0f}/s"
            + (f", bursts of {w.burst}" if w.burst > 1 else "")
        )
    else:
        parts.append(f"closed loop, {w.closed} outstanding per stream")
    if w.link is not None:
        link = w.link
        text = f"links {format_bandwidth(link.bandwidth)}"
        if link.delay:
            text += f" + {format_seconds(link.delay)}"
        if link.slow_links:
            who = "stream 0" if link.slow_links == 1 else f"streams 0-{link.slow_links - 1}"
            text += f" ({who} {link.slow_factor:g}x slower)"
        parts.append(text)
    size = f"{w.size} B requests" + (
        f", {w.reply_size} B replies" if w.reply_size != w.size else ""
    )
    parts.append(size)
    limit = []
    if math.isfinite(w.duration):
        limit.append(format_seconds(w.duration))
    if w.messages is not None:
        limit.append(f"{w.messages} requests")
    parts.append(
        " or ".join(limit)
        + (" of virtual time" if engine == "virtual" and math.isfinite(w.duration) else "")
    )
    parts.append(f"seed {w.seed}")
    return ", ".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _ms(value: object) -> str:
    return format_seconds(value) if isinstance(value, (int, float)) else "-"


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


def _caption(
    workload: Workload, engine: str, reports: Mapping[str, dict[str, Any]], wall: float
) -> str:
    caption = describe_workload(workload, engine) + f"; took {wall:.1f}s."
    if engine == "real":
        caption += (
            " Real time: latencies include Python's own work and the timer's"
            " resolution (about 1 ms), and vary from run to run."
        )
        best_rate = max((r["throughput"] or 0.0 for r in reports.values()), default=0.0)
        if workload.open_loop and best_rate < 0.8 * workload.rate:
            caption += (
                f" No policy reached 80% of the offered {workload.rate:.0f} req/s: more than"
                " this machine can process in real time? Try a lower --rate or --load, or"
                " a longer --service."
            )
    return caption


def render_table(
    workload: Workload,
    engine: str,
    reports: Mapping[str, dict[str, Any]],
    wall: float,
    width: int = 120,
) -> Any:
    """A :class:`rich.table.Table` of the reports, the best p99 highlighted.

    It fits in ``width`` columns by leaving out, in turn, the max latency, the
    range of the shares, the backlog and the capacity-relative Jain index.
    """
    from rich.console import Console

    wide = Console(width=10_000)  # measures are capped at the console's width
    table = None
    for level in range(5):
        table = _table(workload, engine, reports, wall, level)
        if wide.measure(table).minimum <= width:
            break
    assert table is not None
    return table


def _table(
    workload: Workload,
    engine: str,
    reports: Mapping[str, dict[str, Any]],
    wall: float,
    level: int,
) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"trio-kcm lab ({engine} time)",
        caption=_caption(workload, engine, reports, wall),
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    unanswered = any(r["unanswered"] for r in reports.values())
    keys = ("p50", "p99", "p99.9") if unanswered or level >= 1 else ("p50", "p99", "p99.9", "max")
    span = level < 2
    backlog = level < 3
    jain_capacity = level < 4
    longest = max((len(label) for label in reports), default=6)
    width = min(longest, 22 if level < 4 else 14)
    table.add_column("policy", style="bold", overflow="fold", min_width=width, max_width=width)

    def number(title: str, width: int = 0) -> None:
        table.add_column(title, justify="right", no_wrap=True, min_width=width or len(title))

    number("msg/s", 5)
    for key in keys:
        number(key, 6)
    if backlog:
        number("backlog")
    if unanswered:
        number("unanswered")
    number("Jain", 5)
    if jain_capacity:
        number("Jain/cap")
    table.add_column("worker shares" if span else "shares", no_wrap=True)

    p99s = [r["latency"]["p99"] for r in reports.values() if r["latency"]["p99"] is not None]
    best = min(p99s) if p99s else None
    for name, rep in reports.items():
        lat = rep["latency"]
        cells = {key: _ms(lat[key]) for key in keys}
        if best is not None and lat["p99"] is not None and lat["p99"] <= best * 1.0001:
            cells["p99"] = f"[bold green]{cells['p99']}[/bold green]"
        row = [
            name,
            f"{rep['throughput']:.0f}" if rep["throughput"] is not None else "-",
            *cells.values(),
        ]
        if backlog:
            row.append(str(rep["backlog"]))
        if unanswered:
            row.append(str(rep["unanswered"]))
        row.append(_fraction(rep["jain"]))
        if jain_capacity:
            row.append(_fraction(rep["jain_capacity"]))
        row.append(_shares(rep["worker_shares"], span=span))
        table.add_row(*row)
    return table


def _fraction(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def markdown_table(workload: Workload, engine: str, reports: Mapping[str, dict[str, Any]]) -> str:
    """The table as Markdown (for docs), the workload in a line below it."""
    head = (
        "| policy | msg/s | p50 | p99 | p99.9 | max | backlog | Jain | Jain/cap | worker shares % |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, rep in reports.items():
        lat = rep["latency"]
        cells = [
            f"`{name}`",
            f"{rep['throughput']:.0f}" if rep["throughput"] is not None else "-",
            _ms(lat["p50"]),
            _ms(lat["p99"]),
            _ms(lat["p99.9"]),
            _ms(lat["max"]),
            str(rep["backlog"]),
            _fraction(rep["jain"]),
            _fraction(rep["jain_capacity"]),
            " ".join(f"{x * 100:.1f}" for x in rep["worker_shares"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{describe_workload(workload, engine)} ({engine} time).")
    return "\n".join(lines)


def plot(
    path: str,
    workload: Workload,
    engine: str,
    results: Mapping[str, RunResult],
) -> None:
    """Write the latency distributions to ``path``: CDF and tail (CCDF), log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cdf, ax_tail) = plt.subplots(1, 2, figsize=(13, 5.5))
    try:
        for name, result in results.items():
            lat = sorted(x for x in result.latencies if x > 0)
            if not lat:
                continue
            n = len(lat)
            ms = [x * 1e3 for x in lat]
            cdf = [(i + 1) / n for i in range(n)]
            ccdf = [1.0 - (i / n) for i in range(n)]
            ax_cdf.plot(ms, cdf, label=name, drawstyle="steps-post", linewidth=1.2)
            ax_tail.plot(ms, ccdf, label=name, drawstyle="steps-post", linewidth=1.2)
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
            ax.legend(fontsize="small")
        fig.suptitle(
            f"trio-kcm lab ({engine} time)\n{describe_workload(workload, engine)}", fontsize="small"
        )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
