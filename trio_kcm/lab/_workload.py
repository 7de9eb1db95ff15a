"""The workload, as plain data, and the text grammar of its parts.

Pure: no Trio, no I/O.  Everything here is what a lab run is *asked* to do --
how many streams and workers, how long a request takes to serve, how requests
arrive, what wire each stream has -- not how it is done.

Service times: ``KIND:MEAN[,OPTION...]``::

    KIND     const | exp | pareto | lognormal | slow
    MEAN     a time: 1ms, 250us, 0.002s, 2e-3 (bare numbers are seconds)
    OPTIONS  alpha=A   pareto shape, > 1 (default 1.5: a finite mean, an infinite variance)
             sigma=S   lognormal shape, in (0, 10] (default 1.0)
             xF        one worker is F times slower (F >= 1): its service times are F x
             slow=K    ... and so are K workers, not one (workers 0 .. K-1)

``slow:MEAN`` is ``exp:MEAN,x10``.

Links: ``BANDWIDTH[,delay=TIME][,xF][,slow=K]``::

    BANDWIDTH  per stream and direction: 100MB/s, 1Gbit/s, 500kB/s (SI units;
               KiB/s, MiB/s are binary; the /s may be left out)
    delay=T    one-way propagation delay added to every write (default 0)
    xF         one stream (stream 0) is F times slower; slow=K: K streams

``xF`` and ``slow=K`` mean the same in both, and one function reads them
(:func:`_parse_options`).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ._units import (
    format_bandwidth,
    format_seconds,
    json_number,
    parse_bandwidth,
    parse_duration,
)
from ._wire import MIN_SIZE

__all__ = [
    "DEFAULT_LOAD",
    "Link",
    "ServiceTime",
    "Workload",
    "parse_link",
    "parse_service",
]

#: The service-time distributions, with a line of help each (``slow`` is an alias).
_KINDS = {
    "const": "every request takes exactly MEAN",
    "exp": "exponential with mean MEAN",
    "pareto": "Pareto with mean MEAN and shape alpha (heavy-tailed)",
    "lognormal": "lognormal with mean MEAN and shape sigma (heavy-tailed)",
    "slow": "exp:MEAN with one worker ten times slower (xF to change the factor)",
}

#: Open loop, with neither ``load`` nor ``rate`` given: this fraction of capacity.
DEFAULT_LOAD = 0.75


# -- the options grammar ----------------------------------------------------------


@dataclass(frozen=True)
class _Option:
    """A ``KEY=VALUE`` option of a spec: how its value is read, what it must be.

    ``convert`` raises :exc:`ValueError` for a value it cannot read; so does a
    value ``ok`` refuses.  The message is then ``need``, or with ``need=None``
    the converter's own.
    """

    need: str | None
    convert: Callable[[str], float] = float
    ok: Callable[[float], bool] = math.isfinite


_SHAPES = {
    "alpha": _Option("alpha must be a number > 1", ok=lambda a: math.isfinite(a) and a > 1),
    "sigma": _Option(
        "sigma must be a number in (0, 10]", ok=lambda s: math.isfinite(s) and 0 < s <= 10
    ),
}
_SHAPE_OF = {"pareto": "alpha", "lognormal": "sigma"}
_DELAY = {"delay": _Option(None, convert=lambda t: parse_duration(t, what="the link delay"))}
_FACTOR = re.compile(r"x[0-9.eE+-]+")


def _parse_options(
    text: str,
    options: str,
    *,
    slow: str,
    named: Mapping[str, _Option],
    unknown: str,
    factor: float | None = None,
) -> tuple[dict[str, float], float, int]:
    """Read the options after a spec's head: ``xF``, ``slow=K`` and the ``named`` ones.

    Args:
      text: The whole spec, for the error messages.
      options: The comma-separated options (``""``: none).
      slow: Whose factor ``xF`` is: ``"worker"`` or ``"link"``.
      named: The ``KEY=VALUE`` options allowed besides ``slow=K``.
      unknown: The end of the message for an unknown option.
      factor: The factor before any ``xF`` (``slow:MEAN`` has 10).

    Returns:
      The named values given, the slow factor and how many are slow -- ``(1.0,
      0)`` when nothing is slower; ``xF`` alone is one.

    Raises:
      ValueError: An option is unknown or its value is bad.

    """
    values: dict[str, float] = {}
    count: int | None = None
    for raw in options.split(",") if options else []:
        opt = raw.strip()
        key, eq, value = opt.partition("=")
        key = key.strip().lower()
        bad = f"{text!r}: bad option {opt!r}"
        if not eq and _FACTOR.fullmatch(key):
            factor = _float(key[1:])
            if not (math.isfinite(factor) and factor >= 1):
                raise ValueError(f"{bad}: the slow-{slow} factor must be a number >= 1, e.g. x10")
        elif eq and key == "slow":
            try:
                count = int(value)
            except ValueError:
                count = -1
            if count < 0:
                raise ValueError(f"{bad}: slow must be a whole number >= 0")
        elif eq and key in named:
            option = named[key]
            try:
                number = option.convert(value)
            except ValueError:
                if option.need is None:
                    raise
                number = math.nan
            if not option.ok(number):
                raise ValueError(f"{bad}: {option.need}")
            values[key] = number
        else:
            raise ValueError(f"{text!r}: unknown option {opt!r} {unknown}")
    if count is not None and factor is None:
        raise ValueError(f"{text!r}: slow={count} needs a factor too, e.g. x10")
    if factor is None or count == 0 or factor == 1.0:
        return values, 1.0, 0
    return values, factor, 1 if count is None else count


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _slow_parts(factor: float, count: int) -> list[str]:
    """``xF`` and ``slow=K`` as :func:`_parse_options` reads them back."""
    if not count:
        return []
    return [f"x{factor:g}"] + ([f"slow={count}"] if count != 1 else [])


def _check_slow(factor: float, count: int, what: str) -> None:
    if not (math.isfinite(factor) and factor >= 1):
        raise ValueError(f"the slow-{what} factor must be a number >= 1, not {factor!r}")
    if count < 0:
        raise ValueError(f"the number of slow {what}s must be >= 0, not {count!r}")


# -- service times ------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceTime:
    """A service-time distribution, and which workers are slower.

    Every request carries a *cost* drawn from the distribution (the same
    requests, with the same costs, for every policy compared: common random
    numbers); a worker with factor ``F`` serves it in ``cost * F`` seconds.
    :func:`parse_service` reads the text form, :meth:`describe` writes it.

    Raises:
      ValueError: A field is out of its range.

    """

    #: ``"const"``, ``"exp"``, ``"pareto"`` or ``"lognormal"``.
    kind: str
    #: The mean service time, in seconds (more than zero).
    mean: float
    #: The Pareto shape, more than 1 (the smaller, the heavier the tail).
    alpha: float = 1.5
    #: The lognormal shape, in (0, 10].
    sigma: float = 1.0
    #: How many times slower the slow workers are (1 or more).
    slow_factor: float = 1.0
    #: How many workers are slow (workers 0 to ``slow_workers - 1``).
    slow_workers: int = 0
    #: The text it was parsed from (``""`` if built directly).
    text: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS or self.kind == "slow":
            raise ValueError(
                f"unknown service-time distribution {self.kind!r}"
                " (one of: const, exp, pareto, lognormal)"
            )
        if not (math.isfinite(self.mean) and self.mean > 0):
            raise ValueError(f"the mean service time must be > 0, not {self.mean!r}")
        for name, option in _SHAPES.items():
            value = getattr(self, name)
            if not option.ok(value):
                raise ValueError(f"{option.need}, not {value!r}")
        _check_slow(self.slow_factor, self.slow_workers, "worker")

    def factor(self, worker: int) -> float:
        """How many times slower than nominal worker number ``worker`` is."""
        return self.slow_factor if worker < self.slow_workers else 1.0

    def capacity(self, workers: int) -> float:
        """Requests per second ``workers`` workers can serve together."""
        return sum(1.0 / (self.mean * self.factor(j)) for j in range(workers))

    def sample(self, rng: random.Random) -> float:
        """Draw one request's cost, in seconds (its service time on a nominal worker)."""
        kind = self.kind
        if kind == "const":
            return self.mean
        if kind == "exp":
            return rng.expovariate(1.0 / self.mean)
        if kind == "pareto":
            xm = self.mean * (self.alpha - 1.0) / self.alpha
            return xm * rng.paretovariate(self.alpha)
        mu = math.log(self.mean) - self.sigma * self.sigma / 2.0
        return rng.lognormvariate(mu, self.sigma)

    def describe(self) -> str:
        """A canonical spelling, which :func:`parse_service` reads back to an equal value."""
        parts = [f"{self.kind}:{format_seconds(self.mean, digits=6)}"]
        if self.kind == "pareto":
            parts.append(f"alpha={self.alpha:g}")
        if self.kind == "lognormal":
            parts.append(f"sigma={self.sigma:g}")
        return ",".join(parts + _slow_parts(self.slow_factor, self.slow_workers))


def parse_service(text: str) -> ServiceTime:
    """Parse a service-time spec, ``KIND:MEAN[,OPTION...]``.

    ``KIND`` is ``const``, ``exp``, ``pareto``, ``lognormal``, or ``slow``
    (``exp`` with worker 0 ten times slower).  The options are ``alpha=A``
    (pareto), ``sigma=S`` (lognormal), ``xF`` (worker 0 is ``F`` times slower)
    and ``slow=K`` (so are workers 0 to ``K - 1``).  For example
    ``exp:1ms,x10``, ``pareto:1ms,alpha=1.3``, ``const:2ms,x4,slow=2``.

    Args:
      text: The spec.

    Returns:
      The distribution; its :attr:`~ServiceTime.text` is ``text``.

    Raises:
      ValueError: ``text`` is not a service-time spec (the message says why).

    """
    head, _, rest = text.strip().partition(",")
    kind, colon, mean_text = head.partition(":")
    kind = kind.strip().lower()
    if kind not in _KINDS:
        raise ValueError(
            f"unknown service-time distribution {kind!r} in {text!r} (one of: {', '.join(_KINDS)})"
        )
    if not colon or not mean_text.strip():
        raise ValueError(f"{text!r}: give the mean after the kind, e.g. {kind}:1ms")
    mean = parse_duration(mean_text, what="the mean service time")
    if not mean > 0:
        raise ValueError(f"{text!r}: the mean service time must be > 0")
    factor = None
    if kind == "slow":
        kind, factor = "exp", 10.0
    shape = _SHAPE_OF.get(kind)
    named = {shape: _SHAPES[shape]} if shape else {}
    allowed = ", ".join(["xF", "slow=K"] + [f"{k}={k[0].upper()}" for k in named])
    shapes, factor, count = _parse_options(
        text,
        rest,
        slow="worker",
        named=named,
        unknown=f"for {kind} (allowed: {allowed})",
        factor=factor,
    )
    return ServiceTime(
        kind,
        mean,
        alpha=shapes.get("alpha", 1.5),
        sigma=shapes.get("sigma", 1.0),
        slow_factor=factor,
        slow_workers=count,
        text=text,
    )


# -- links -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """The wire under each stream: its bandwidth, its delay, and which streams are slower.

    A write occupies its stream's link for ``size / bandwidth`` seconds, and
    arrives ``delay`` later; writes on one link queue behind each other, so
    the mux's writer for a slow stream waits, and the transmit policy sees
    that stream's queue grow.  :func:`parse_link` reads the text form,
    :meth:`describe` writes it.

    Raises:
      ValueError: A field is out of its range.

    """

    #: Bytes per second, per stream and direction.
    bandwidth: float
    #: One-way propagation delay of every write, in seconds.
    delay: float = 0.0
    #: How many times slower the slow links are (1 or more).
    slow_factor: float = 1.0
    #: How many streams have a slow link (streams 0 to ``slow_links - 1``).
    slow_links: int = 0
    #: The text it was parsed from (``""`` if built directly).
    text: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bandwidth) and self.bandwidth > 0):
            raise ValueError(f"a bandwidth must be > 0, not {self.bandwidth!r}")
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(f"the link delay must be >= 0, not {self.delay!r}")
        _check_slow(self.slow_factor, self.slow_links, "link")

    def bandwidth_of(self, stream: int) -> float:
        """Bytes per second of stream number ``stream``'s link, each way."""
        return self.bandwidth / (self.slow_factor if stream < self.slow_links else 1.0)

    def describe(self) -> str:
        """A canonical spelling, which :func:`parse_link` reads back to an equal value."""
        parts = [format_bandwidth(self.bandwidth)]
        if self.delay:
            parts.append(f"delay={format_seconds(self.delay, digits=6)}")
        return ",".join(parts + _slow_parts(self.slow_factor, self.slow_links))


def parse_link(text: str) -> Link:
    """Parse a link spec, ``BANDWIDTH[,delay=TIME][,xF][,slow=K]``.

    For example ``100MB/s``, ``1Gbit/s,delay=50us``, ``10MB/s,x10`` (stream 0
    ten times slower), ``10MB/s,x4,slow=2`` (streams 0 and 1 four times slower).

    Args:
      text: The spec.

    Returns:
      The link; its :attr:`~Link.text` is ``text``.

    Raises:
      ValueError: ``text`` is not a link spec (the message says why).

    """
    head, _, rest = text.strip().partition(",")
    bandwidth = parse_bandwidth(head)
    values, factor, count = _parse_options(
        text,
        rest,
        slow="link",
        named=_DELAY,
        unknown="for a link (allowed: delay=TIME, xF, slow=K)",
    )
    return Link(bandwidth, values.get("delay", 0.0), factor, count, text=text)


# -- the workload ----------------------------------------------------------------------

_DEFAULT_SERVICE = parse_service("exp:1ms,x10")


@dataclass(frozen=True)
class Workload:
    """Everything a lab run does, apart from the policy.

    ``streams`` streams (client connections) carry requests from a peer to a
    mux with ``workers`` worker sockets; each worker serves its socket's queue
    in order, one request at a time, for a time drawn from ``service``; its
    reply goes back on the stream the transmit policy picks.  The run issues
    requests for ``duration`` seconds or until ``messages`` requests,
    whichever comes first, then waits for every reply.

    The defaults are those of ``trio-kcm lab``: 4 streams, 8 workers, service
    ``exp:1ms,x10`` (worker 0 ten times slower), open loop at 75 % of
    capacity, 64-byte messages, 2 s, seed 1.

    How requests arrive: give at most one of ``load``, ``rate`` and
    ``closed``.  ``load`` and ``rate`` are open loop: each stream's peer
    writes bursts of ``burst`` requests at random (Poisson) times, regardless
    of the replies; ``closed`` is closed loop: each stream keeps that many
    requests outstanding, writing the next when a reply comes.  With none of
    them, open loop at :data:`DEFAULT_LOAD`.

    Raises:
      ValueError: A field is out of its range, or the fields disagree.
      TypeError: ``service`` or ``link`` is not a :class:`ServiceTime` or
        :class:`Link` (parse text with :func:`parse_service`, :func:`parse_link`).

    """

    #: Streams (client connections).
    streams: int = 4
    #: Worker sockets.
    workers: int = 8
    #: How long a request takes to serve, and which workers are slower.
    service: ServiceTime = _DEFAULT_SERVICE
    #: Open loop at this fraction of the workers' capacity.
    load: float | None = None
    #: Open loop at this many requests per second, all streams together.
    rate: float | None = None
    #: Closed loop, with each stream keeping this many requests outstanding.
    closed: int | None = None
    #: In open loop, how many requests are written at a time, in one write.
    burst: int = 1
    #: Request size in bytes, the 4-byte header included (:data:`MIN_SIZE` or more).
    size: int = 64
    #: Reply size in bytes, likewise.
    reply_size: int = 64
    #: How long requests are issued, in seconds (virtual ones for :func:`simulate`);
    #: ``math.inf`` to stop at ``messages`` only.
    duration: float = 2.0
    #: Stop issuing after this many requests (``None`` for no limit).
    messages: int | None = None
    #: Seeds the arrivals, the service times and the policies that take a seed.
    seed: int = 1
    #: The wire under each stream (``None`` for none, so that writes arrive at once).
    link: Link | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.service, ServiceTime):
            raise TypeError(
                f"service must be a ServiceTime (parse_service(text) makes one),"
                f" not {self.service!r}"
            )
        if self.link is not None and not isinstance(self.link, Link):
            raise TypeError(f"link must be a Link (parse_link(text) makes one), not {self.link!r}")
        for name in ("streams", "workers", "burst"):
            _at_least(name, getattr(self, name), 1)
        for name in ("size", "reply_size"):
            _at_least(name, getattr(self, name), MIN_SIZE)
        given = [n for n in ("load", "rate", "closed") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of load, rate and closed, not {' and '.join(given)}")
        for name in ("load", "rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0, not {value!r}")
        if self.closed is not None:
            _at_least("closed", self.closed, 1)
            if self.burst != 1:
                raise ValueError("burst is for open loop; with closed, a stream's window is one")
        if not self.duration > 0:
            raise ValueError(f"duration must be > 0, not {self.duration!r}")
        if self.messages is not None:
            _at_least("messages", self.messages, 1)
        elif not math.isfinite(self.duration):
            raise ValueError("with no messages limit, the duration must be finite")
        if self.service.slow_workers > self.workers:
            raise ValueError(
                f"service {self.service.describe()}: {self.service.slow_workers} slow workers,"
                f" but only {self.workers} workers"
            )
        if self.link is not None and self.link.slow_links > self.streams:
            raise ValueError(
                f"link {self.link.describe()}: {self.link.slow_links} slow links,"
                f" but only {self.streams} streams"
            )

    @property
    def open_loop(self) -> bool:
        """Whether requests arrive regardless of the replies (``closed`` is ``None``)."""
        return self.closed is None

    @property
    def capacity(self) -> float:
        """Requests per second the workers can serve together."""
        return self.service.capacity(self.workers)

    @property
    def arrival_rate(self) -> float | None:
        """In open loop, the requests per second offered, all streams together, else ``None``."""
        if self.closed is not None:
            return None
        if self.rate is not None:
            return self.rate
        return (DEFAULT_LOAD if self.load is None else self.load) * self.capacity

    @property
    def offered_load(self) -> float | None:
        """In open loop, the arrival rate as a fraction of capacity, else ``None``."""
        rate = self.arrival_rate
        return None if rate is None else rate / self.capacity

    def to_dict(self) -> dict[str, object]:
        """The workload as in the JSON report (plain JSON types)."""
        return {
            "streams": self.streams,
            "workers": self.workers,
            "service": self.service.describe(),
            "service_mean": self.service.mean,
            "slow_workers": self.service.slow_workers,
            "slow_factor": self.service.slow_factor,
            "mode": "open" if self.open_loop else "closed",
            "rate": self.arrival_rate,
            "load": self.offered_load,
            "closed": self.closed,
            "burst": self.burst,
            "capacity": self.capacity,
            "size": self.size,
            "reply_size": self.reply_size,
            "duration": json_number(self.duration),
            "messages": self.messages,
            "seed": self.seed,
            "link": self.link.describe() if self.link else None,
        }


def _at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
