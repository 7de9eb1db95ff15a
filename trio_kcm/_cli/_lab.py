"""``trio-kcm lab``: compare load-balancing policies under a workload.

The command is :mod:`trio_kcm.lab` from the shell: this module declares the
arguments, turns them into a :class:`~trio_kcm.lab.Workload` and a list of
:class:`~trio_kcm.lab.PolicySpec`, runs :func:`~trio_kcm.lab.compare` under a
progress bar, and prints the :class:`~trio_kcm.lab.Comparison` (a table,
JSON, Markdown, a plot).  Every number is the library's.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from .. import lab
from .._errors import PolicyLoadError
from .._policy import available_policies
from ._common import fail

__all__ = ["add_parser", "run"]

PROG = "trio-kcm lab"

#: Defaults: the library's default workload, and a shorter run in real time.
_DEFAULT = lab.Workload()
STREAMS = _DEFAULT.streams
WORKERS = _DEFAULT.workers
SERVICE = _DEFAULT.service.text
LOAD = lab.DEFAULT_LOAD
SIZE = _DEFAULT.size
DURATION_VIRTUAL = _DEFAULT.duration
DURATION_REAL = 1.0
SEED = _DEFAULT.seed
MAX_STREAMS = 4096
MAX_WORKERS = 4096

DESCRIPTION = """\
Compare load-balancing policies under a workload: M streams (client
connections) carry framed requests into a mux with N worker sockets.  The
policy picks a worker for each request and a stream for each reply; each
worker serves its queue in order for a service time drawn from --service.
For each policy: throughput, latency p50/p99/p99.9 (request written by the
peer -> whole reply read back: queueing plus service, plus the wire with
--link), each worker's share of the requests, and Jain's fairness index over
the shares (Jain/cap: over the shares relative to each worker's speed; 1.0 =
load in proportion to it).

Runs in virtual time (trio's MockClock, one driver task, the real mux and
policies): fast, and the same seed gives the same numbers in any process.
--real runs it over loopback TCP in real time instead (short; not
reproducible)."""

EPILOG = f"""\
service times (--service KIND:MEAN[,OPTION...]):
  const:1ms               every request takes 1 ms
  exp:1ms                 exponential, mean 1 ms
  pareto:1ms,alpha=1.5    Pareto, mean 1 ms, shape alpha > 1 (heavy tail)
  lognormal:1ms,sigma=1   lognormal, mean 1 ms, shape sigma (heavy tail)
  slow:1ms                exp:1ms with worker 0 ten times slower
  ...,x10                 one worker (worker 0) ten times slower, any KIND
  ...,x4,slow=2           workers 0 and 1 four times slower
  times: 1ms, 250us, 0.5s, 2e-3 (bare numbers are seconds)

links (--link BANDWIDTH[,OPTION...]; virtual time only):
  100MB/s                 each stream carries 100 MB/s each way; a write takes
                          size/bandwidth, and writes on a stream queue
  1Gbit/s,delay=50us      ... plus 50 us one-way propagation delay
  10MB/s,x10              stream 0 ten times slower (slow=K: K streams)
  Without --link, writes arrive at once, so only the receive policy matters.

load (one of):
  --load 0.75             open loop (Poisson arrivals) at 75% of the workers'
                          capacity (the default)
  --rate 5000             open loop at 5000 requests/s over all streams
  --closed 4              closed loop: each stream keeps 4 requests outstanding

examples:
  trio-kcm lab                                   # {SERVICE}, load {LOAD}, all policies
  trio-kcm lab --service pareto:1ms,alpha=1.3 --load 0.6
  trio-kcm lab --policies round-robin,least-queued --closed 8 --json
  trio-kcm lab --policies 'round-robin,weighted-round-robin(socket_weights={{0: 0.1}})'
  trio-kcm lab --plot latency.png
  trio-kcm lab --real --policies least-queued --duration 1s

The run issues requests for --duration (default {DURATION_VIRTUAL:g}s virtual,
{DURATION_REAL:g}s real) or until --messages requests, whichever comes first,
then waits for every reply.  msg/s counts the replies within that window;
backlog is the requests unanswered when it closed.  worker shares: a bar per
worker (its share of the requests), then the smallest and largest share."""


class _LabError(Exception):
    """A bad combination of arguments: exit status 2."""


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` that reports our own message (exit status 2)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = lab.parse_count(text, what="the value")
        if not lo <= value <= hi:
            raise ValueError(f"must be in {lo}..{hi}, not {value}")
        return value

    return _typed(parse)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"should be a number, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a number > 0, not {text!r}")
    return value


def _load(text: str) -> float:
    value = _positive_float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if value > 10:
        raise ValueError(f"is a fraction of capacity (0.75 or 75%), {text!r} is too much")
    return value


def _size(text: str) -> int:
    value = lab.parse_size(text)
    if not lab.MIN_SIZE <= value <= 1 << 20:
        raise ValueError(f"must be {lab.MIN_SIZE} bytes .. 1MiB (header included), not {text!r}")
    return value


def _duration(text: str) -> float:
    value = lab.parse_duration(text, what="the duration")
    if not value > 0:
        raise ValueError(f"must be > 0, not {text!r}")
    return value


def _messages(text: str) -> int:
    value = lab.parse_count(text, what="the message count")
    if value < 1:
        raise ValueError(f"must be >= 1, not {text!r}")
    return value


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "lab",
        help="compare load-balancing policies under a workload (virtual time)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--policies",
        metavar="A,B,...",
        type=_typed(lab.parse_policies),
        help="the policies to compare, by name, each with options if you like:"
        " p2c(seed=7),weighted-round-robin(socket_weights={0: 0.1})"
        " (default: every installed policy; see trio-kcm policies)",
    )
    p.add_argument(
        "-m",
        "--streams",
        metavar="M",
        type=_int_in(1, MAX_STREAMS),
        default=STREAMS,
        help=f"streams (client connections) (default {STREAMS})",
    )
    p.add_argument(
        "-n",
        "--workers",
        metavar="N",
        type=_int_in(1, MAX_WORKERS),
        default=WORKERS,
        help=f"worker sockets (default {WORKERS})",
    )
    p.add_argument(
        "--service",
        metavar="SPEC",
        type=_typed(lab.parse_service),
        default=SERVICE,
        help=f"service-time distribution, see below (default {SERVICE})",
    )
    load = p.add_mutually_exclusive_group()
    load.add_argument(
        "--load",
        metavar="FRACTION",
        type=_typed(_load),
        help=f"open loop at this fraction of the workers' capacity (default {LOAD})",
    )
    load.add_argument(
        "--rate",
        metavar="REQ/S",
        type=_typed(_positive_float),
        help="open loop at this many requests per second (all streams together)",
    )
    load.add_argument(
        "--closed",
        metavar="K",
        type=_int_in(1, 1_000_000),
        help="closed loop: each stream keeps K requests outstanding",
    )
    p.add_argument(
        "--burst",
        metavar="B",
        type=_int_in(1, 100_000),
        default=1,
        help="open loop: requests arrive B at a time, in one write (default 1)",
    )
    p.add_argument(
        "--link",
        metavar="SPEC",
        type=_typed(lab.parse_link),
        help="give each stream a wire: BANDWIDTH[,delay=TIME][,xF][,slow=K], see below"
        " (default: none, writes arrive at once; virtual time only)",
    )
    p.add_argument(
        "--size",
        metavar="BYTES",
        type=_typed(_size),
        default=SIZE,
        help=f"request size, header included (default {SIZE})",
    )
    p.add_argument(
        "--reply-size",
        metavar="BYTES",
        type=_typed(_size),
        help="reply size (default: --size)",
    )
    p.add_argument(
        "--duration",
        metavar="TIME",
        type=_typed(_duration),
        help=f"how long requests are issued (default {DURATION_VIRTUAL:g}s virtual,"
        f" {DURATION_REAL:g}s with --real)",
    )
    p.add_argument(
        "--messages",
        metavar="COUNT",
        type=_typed(_messages),
        help="stop issuing after this many requests (with --duration: whichever is first)",
    )
    p.add_argument(
        "--seed",
        type=_int_in(0, 2**63),
        default=SEED,
        help=f"random seed: arrivals, service times, seeded policies (default {SEED})",
    )
    p.add_argument(
        "--real",
        action="store_true",
        help="run over loopback TCP in real time (not reproducible)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the results as JSON (stable keys)")
    out.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the latency distributions (CDF and tail) to FILE (needs matplotlib)",
    )


def build_workload(args: argparse.Namespace) -> lab.Workload:
    """The workload the arguments ask for; :class:`_LabError` if they disagree."""
    service: lab.ServiceTime = args.service
    if service.slow_workers > args.workers:
        raise _LabError(
            f"--service {service.text}: {service.slow_workers} slow workers,"
            f" but only {args.workers} workers"
        )
    if args.link is not None and args.real:
        raise _LabError("--link is for virtual time: --real runs over loopback TCP as it is")
    if args.link is not None and args.link.slow_links > args.streams:
        raise _LabError(
            f"--link {args.link.text}: {args.link.slow_links} slow links,"
            f" but only {args.streams} streams"
        )
    if args.closed is not None and args.burst != 1:
        raise _LabError("--burst is for open loop; with --closed, a stream's window is one burst")
    duration = args.duration
    if duration is None:
        if args.messages is not None:
            duration = math.inf
        else:
            duration = DURATION_REAL if args.real else DURATION_VIRTUAL
    try:
        return lab.Workload(
            streams=args.streams,
            workers=args.workers,
            service=service,
            load=args.load,
            rate=args.rate,
            closed=args.closed,
            burst=args.burst,
            size=args.size,
            reply_size=args.reply_size or args.size,
            duration=duration,
            messages=args.messages,
            seed=args.seed,
            link=args.link,
        )
    except ValueError as exc:  # (what the checks above let through)
        raise _LabError(str(exc)) from None


def _check_policies(requested: list[lab.PolicySpec] | None) -> list[lab.PolicySpec]:
    installed = available_policies()
    if requested is None:
        if not installed:
            raise _LabError("no policies are installed (is trio-kcm installed?)")
        return [lab.PolicySpec(name) for name in installed]
    unknown = list(dict.fromkeys(s.name for s in requested if s.name not in installed))
    if unknown:
        s = "y" if len(unknown) == 1 else "ies"
        raise _LabError(
            f"unknown polic{s} {', '.join(repr(n) for n in unknown)}"
            f" (installed: {', '.join(installed) or 'none'})"
        )
    return requested


def _check_plot(path: str | None) -> None:
    if path is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise _LabError("--plot needs matplotlib: python -m pip install 'trio-kcm[plot]'") from None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _LabError(f"--plot {path}: no such directory {folder!r}")


def _columns() -> int:
    try:
        return int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        return 0


def run(args: argparse.Namespace) -> int:
    try:
        workload = build_workload(args)
        specs = _check_policies(args.policies)
        _check_plot(args.plot)
    except _LabError as exc:
        return fail("lab", str(exc))
    # Piped, rich would assume 80 columns: the table needs a few more.
    console = Console() if sys.stdout.isatty() else Console(width=max(120, _columns()))
    err = Console(stderr=True)
    text = args.json or args.markdown
    start = time.perf_counter()
    try:
        bar = console if not text and sys.stdout.isatty() else None
        comparison = _compare(workload, specs, args.real, bar)
    except PolicyLoadError as exc:  # before any run: a broken plugin or option
        return fail("lab", str(exc))
    wall = time.perf_counter() - start
    for label, error in comparison.errors.items():
        err.print(f"{PROG}: policy {label} failed: {error}", markup=False)
    try:
        if args.json:
            print(comparison.to_json(), flush=True)
        elif args.markdown:
            print(comparison.to_markdown(), flush=True)
    except BrokenPipeError:  # | head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if comparison.results and not text:
        console.print(comparison.rich_table(width=console.width, wall=wall))
    if args.plot and comparison.results:
        comparison.plot(args.plot)
        (err if text else console).print(f"wrote {args.plot}")
    return 1 if comparison.errors else 0


def _compare(
    workload: lab.Workload, specs: list[lab.PolicySpec], real: bool, console: Console | None
) -> lab.Comparison:
    """:func:`trio_kcm.lab.compare`, under a progress bar on ``console`` if given."""
    if console is None:
        return lab.compare(workload, specs, real=real)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    engine = "real" if real else "virtual"
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]}/{task.total:.0f} policies"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("", total=len(specs), done=0)

    def update(i: int, fraction: float) -> None:
        bar.start()  # at the first run: not before the policies are built
        done = i + min(max(fraction, 0.0), 1.0)
        bar.update(task, description=f"{engine}: {specs[i].label}", completed=done, done=i)

    try:
        return lab.compare(workload, specs, real=real, progress=update)
    finally:
        bar.stop()
