"""``trio-kcm lab``: the workload, as plain data, and the parsing of its options.

Pure: no Trio, no I/O.  Everything here is what a lab run is *asked* to do --
how many streams and workers, how long a request takes to serve, how requests
arrive -- and the random draws that follow from it.

Service-time syntax (``--service``)::

    KIND:MEAN[,OPTION...]

    KIND     const | exp | pareto | lognormal | slow
    MEAN     a time: 1ms, 250us, 0.002s, 2e-3 (bare numbers are seconds)
    OPTIONS  alpha=A   pareto shape, > 1 (default 1.5: a finite mean, an infinite variance)
             sigma=S   lognormal shape, > 0 (default 1.0)
             xF        one worker is F times slower (F >= 1): its service times are F x
             slow=K    ... and so are K workers, not one (workers 0 .. K-1)

``slow:MEAN`` is ``exp:MEAN,x10``: exponential service, worker 0 ten times
slower.  Every request carries a *cost* drawn from the distribution (the same
request costs for every policy: common random numbers); a worker with factor
``F`` serves it in ``cost * F`` seconds.

Link syntax (``--link``, virtual time only; default: no wire at all)::

    BANDWIDTH[,delay=TIME][,xF][,slow=K]

    BANDWIDTH  per stream and direction: 100MB/s, 1Gbit/s, 500kB/s (SI units;
               KiB/s, MiB/s are binary; the /s may be left out)
    delay=T    one-way propagation delay added to every write (default 0)
    xF         one stream (stream 0) is F times slower; slow=K: K streams

A write occupies its link for ``size / bandwidth``; writes on one link queue
behind each other, so the mux's writer for that stream waits (and the
transmit policy sees its queue grow).

Policy syntax (``--policies``): names separated by commas, each optionally
with options for its factory, as Python literals (a bare word is a string)::

    round-robin,p2c(seed=7),weighted-round-robin(socket_weights={0: 0.1})
"""

from __future__ import annotations

import ast
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KINDS",
    "LinkSpec",
    "PolicySpec",
    "ServiceSpec",
    "Workload",
    "format_bandwidth",
    "format_seconds",
    "parse_bandwidth",
    "parse_count",
    "parse_duration",
    "parse_link",
    "parse_policies",
    "parse_service",
    "parse_size",
]

#: The service-time distributions, with a line of help each.
KINDS = {
    "const": "every request takes exactly MEAN",
    "exp": "exponential with mean MEAN",
    "pareto": "Pareto with mean MEAN and shape alpha (heavy-tailed)",
    "lognormal": "lognormal with mean MEAN and shape sigma (heavy-tailed)",
    "slow": "exp:MEAN with one worker ten times slower (xF to change the factor)",
}

_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "m": 60.0}
_TIME = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|ns|m)?\s*")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1 << 20, "mib": 1 << 20}
_SIZE = re.compile(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*")


def parse_duration(text: str, *, what: str = "a time") -> float:
    """``"1ms"`` -> ``0.001``; bare numbers are seconds.  ``ValueError`` if malformed."""
    m = _TIME.fullmatch(text)
    if m is None:
        raise ValueError(f"{what} should look like 1ms, 250us, 2s or 0.5, not {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, not {text!r}")
    return value


def parse_size(text: str, *, what: str = "a size") -> int:
    """``"64"``, ``"4k"``, ``"1MiB"`` -> bytes (k and M are binary; kB is 1000)."""
    m = _SIZE.fullmatch(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{what} should be a number of bytes like 64, 4k or 1MiB, not {text!r}")
    return int(m.group(1)) * _SIZE_UNITS[unit]


def parse_count(text: str, *, what: str = "a count") -> int:
    """``"20000"``, ``"20k"``, ``"1M"``, ``"1e5"`` -> an int (k = 1000 here)."""
    t = text.strip().lower().replace("_", "")
    scale = 1
    if t.endswith("k"):
        t, scale = t[:-1], 1000
    elif t.endswith("m"):
        t, scale = t[:-1], 1_000_000
    try:
        value = float(t) * scale
    except ValueError:
        raise ValueError(
            f"{what} should be a whole number like 5000 or 20k, not {text!r}"
        ) from None
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{what} should be a whole number like 5000 or 20k, not {text!r}")
    return int(value)


def format_seconds(seconds: float, *, digits: int = 3) -> str:
    """A short human form: ``0.0012`` -> ``"1.2ms"`` (``digits`` significant digits)."""
    if not math.isfinite(seconds):
        return "-" if math.isnan(seconds) else "inf"
    a = abs(seconds)
    if a == 0:
        return "0s"
    if a >= 1000:
        return f"{seconds:.0f}s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if a >= scale * (1 - 0.5 * 10.0**-digits):
            return f"{seconds / scale:.{digits}g}{unit}"
    return f"{seconds * 1e9:.{digits}g}ns"


@dataclass(frozen=True)
class ServiceSpec:
    """A service-time distribution, and which workers are slower."""

    kind: str
    mean: float
    alpha: float = 1.5
    sigma: float = 1.0
    slow_factor: float = 1.0
    slow_workers: int = 0
    text: str = field(default="", compare=False)

    def factor(self, worker: int) -> float:
        """How many times slower than nominal ``worker`` is."""
        return self.slow_factor if worker < self.slow_workers else 1.0

    def capacity(self, workers: int) -> float:
        """Requests per second ``workers`` workers can serve together."""
        return sum(1.0 / (self.mean * self.factor(j)) for j in range(workers))

    def sample(self, rng: random.Random) -> float:
        """One request's cost, in seconds (its service time on a nominal worker)."""
        kind = self.kind
        if kind == "const":
            return self.mean
        if kind == "exp":
            return rng.expovariate(1.0 / self.mean)
        if kind == "pareto":
            xm = self.mean * (self.alpha - 1.0) / self.alpha
            return xm * rng.paretovariate(self.alpha)
        if kind == "lognormal":
            mu = math.log(self.mean) - self.sigma * self.sigma / 2.0
            return rng.lognormvariate(mu, self.sigma)
        raise AssertionError(kind)  # pragma: no cover - parse_service checks

    def describe(self) -> str:
        """A canonical spelling, which parses back to the same distribution."""
        parts = [f"{self.kind}:{format_seconds(self.mean, digits=6)}"]
        if self.kind == "pareto":
            parts.append(f"alpha={self.alpha:g}")
        if self.kind == "lognormal":
            parts.append(f"sigma={self.sigma:g}")
        if self.slow_workers:
            parts.append(f"x{self.slow_factor:g}")
            if self.slow_workers != 1:
                parts.append(f"slow={self.slow_workers}")
        return ",".join(parts)


def parse_service(text: str) -> ServiceSpec:
    """Parse a ``--service`` spec (see the module docstring); ``ValueError`` if bad."""
    head, _, rest = text.strip().partition(",")
    kind, colon, mean_text = head.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(
            f"unknown service-time distribution {kind!r} in {text!r} (one of: {', '.join(KINDS)})"
        )
    if not colon or not mean_text.strip():
        raise ValueError(f"{text!r}: give the mean after the kind, e.g. {kind}:1ms")
    mean = parse_duration(mean_text, what="the mean service time")
    if not mean > 0:
        raise ValueError(f"{text!r}: the mean service time must be > 0")
    alpha, sigma = 1.5, 1.0
    factor: float | None = None
    count: int | None = None
    if kind == "slow":
        kind, factor = "exp", 10.0
    for raw in rest.split(",") if rest else []:
        opt = raw.strip()
        key, eq, value = opt.partition("=")
        key = key.strip().lower()
        try:
            if not eq and re.fullmatch(r"x[0-9.eE+-]+", key):
                factor = float(key[1:])
                if not (math.isfinite(factor) and factor >= 1):
                    raise ValueError
            elif eq and key == "alpha" and kind == "pareto":
                alpha = float(value)
                if not (math.isfinite(alpha) and alpha > 1):
                    raise ValueError
            elif eq and key == "sigma" and kind == "lognormal":
                sigma = float(value)
                if not (math.isfinite(sigma) and 0 < sigma <= 10):
                    raise ValueError
            elif eq and key == "slow":
                count = int(value)
                if count < 0:
                    raise ValueError
            else:
                raise KeyError(opt)
        except KeyError:
            extra = {"pareto": ["alpha=A"], "lognormal": ["sigma=S"]}.get(kind, [])
            allowed = ["xF", "slow=K", *extra]
            raise ValueError(
                f"{text!r}: unknown option {opt!r} for {kind} (allowed: {', '.join(allowed)})"
            ) from None
        except ValueError:
            need = {
                "alpha": "alpha must be a number > 1",
                "sigma": "sigma must be a number in (0, 10]",
                "slow": "slow must be a whole number >= 0",
            }.get(key, "the slow-worker factor must be a number >= 1, e.g. x10")
            raise ValueError(f"{text!r}: bad option {opt!r}: {need}") from None
    if count is not None and factor is None:
        raise ValueError(f"{text!r}: slow={count} needs a factor too, e.g. x10")
    if factor is None or count == 0:
        factor, count = 1.0, 0
    elif count is None:
        count = 1
    if factor == 1.0:
        count = 0
    return ServiceSpec(
        kind=kind,
        mean=mean,
        alpha=alpha,
        sigma=sigma,
        slow_factor=factor,
        slow_workers=count,
        text=text,
    )


_RATE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*(?:/\s*s)?\s*")
_RATE_UNITS = {
    "": 1.0,
    "b": 1.0,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "kib": 1024.0,
    "mib": 1024.0**2,
    "gib": 1024.0**3,
    "bit": 1 / 8,
    "kbit": 1e3 / 8,
    "mbit": 1e6 / 8,
    "gbit": 1e9 / 8,
}


def parse_bandwidth(text: str) -> float:
    """``"100MB/s"`` -> bytes per second (``"1Gbit/s"``: 125e6)."""
    m = _RATE.fullmatch(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _RATE_UNITS:
        raise ValueError(f"a bandwidth should look like 100MB/s, 1Gbit/s or 512KiB/s, not {text!r}")
    value = float(m.group(1)) * _RATE_UNITS[unit]
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"a bandwidth must be > 0, not {text!r}")
    return value


def format_bandwidth(value: float) -> str:
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}B/s"


@dataclass(frozen=True)
class LinkSpec:
    """The wire under each stream: bandwidth, delay, and which streams are slower."""

    bandwidth: float
    delay: float = 0.0
    slow_factor: float = 1.0
    slow_links: int = 0
    text: str = field(default="", compare=False)

    def bandwidth_of(self, stream: int) -> float:
        """Bytes per second of ``stream``'s link, each way."""
        return self.bandwidth / (self.slow_factor if stream < self.slow_links else 1.0)

    def describe(self) -> str:
        parts = [format_bandwidth(self.bandwidth)]
        if self.delay:
            parts.append(f"delay={format_seconds(self.delay, digits=6)}")
        if self.slow_links:
            parts.append(f"x{self.slow_factor:g}")
            if self.slow_links != 1:
                parts.append(f"slow={self.slow_links}")
        return ",".join(parts)


def parse_link(text: str) -> LinkSpec:
    """Parse a ``--link`` spec (see the module docstring); ``ValueError`` if bad."""
    head, _, rest = text.strip().partition(",")
    bandwidth = parse_bandwidth(head)
    delay = 0.0
    factor: float | None = None
    count: int | None = None
    for raw in rest.split(",") if rest else []:
        opt = raw.strip()
        key, eq, value = opt.partition("=")
        key = key.strip().lower()
        if not eq and re.fullmatch(r"x[0-9.eE+-]+", key):
            try:
                factor = float(key[1:])
            except ValueError:
                factor = math.nan
            if not (math.isfinite(factor) and factor >= 1):
                raise ValueError(
                    f"{text!r}: bad option {opt!r}: the slow-link factor must be a number"
                    " >= 1, e.g. x10"
                )
        elif eq and key == "delay":
            delay = parse_duration(value, what="the link delay")
        elif eq and key == "slow":
            try:
                count = int(value)
            except ValueError:
                count = -1
            if count < 0:
                raise ValueError(f"{text!r}: bad option {opt!r}: slow must be a whole number >= 0")
        else:
            raise ValueError(
                f"{text!r}: unknown option {opt!r} for a link (allowed: delay=TIME, xF, slow=K)"
            )
    if count is not None and factor is None:
        raise ValueError(f"{text!r}: slow={count} needs a factor too, e.g. x10")
    if factor is None or count == 0 or factor == 1.0:
        factor, count = 1.0, 0
    elif count is None:
        count = 1
    return LinkSpec(bandwidth, delay, factor, count, text=text)


@dataclass(frozen=True)
class Workload:
    """Everything one lab run does, apart from the policy.

    ``rate`` (open loop) is in requests per second over all streams; with
    ``closed`` set, each stream instead keeps that many requests outstanding
    and ``rate`` is 0.  The run issues requests until ``duration`` (virtual)
    seconds or ``messages`` requests, whichever comes first, then waits for
    every reply.
    """

    streams: int
    workers: int
    service: ServiceSpec
    rate: float
    closed: int
    burst: int
    size: int
    reply_size: int
    duration: float
    messages: int | None
    seed: int
    #: The wire under each stream; ``None``: none (writes arrive at once).
    link: LinkSpec | None = None

    @property
    def open_loop(self) -> bool:
        return not self.closed

    @property
    def capacity(self) -> float:
        """Requests per second the workers can serve together."""
        return self.service.capacity(self.workers)

    @property
    def load(self) -> float | None:
        """Offered load as a fraction of capacity (open loop only)."""
        return self.rate / self.capacity if self.open_loop else None

    def rng(self, purpose: str) -> random.Random:
        """A generator seeded from ``seed`` and ``purpose`` (stable across processes)."""
        return random.Random(f"trio-kcm-lab:{self.seed}:{purpose}")

    def to_json(self) -> dict[str, object]:
        return {
            "streams": self.streams,
            "workers": self.workers,
            "service": self.service.describe(),
            "service_mean": self.service.mean,
            "slow_workers": self.service.slow_workers,
            "slow_factor": self.service.slow_factor,
            "mode": "open" if self.open_loop else "closed",
            "rate": self.rate if self.open_loop else None,
            "load": self.load,
            "closed": self.closed or None,
            "burst": self.burst,
            "capacity": self.capacity,
            "size": self.size,
            "reply_size": self.reply_size,
            "duration": self.duration,
            "messages": self.messages,
            "seed": self.seed,
            "link": self.link.describe() if self.link else None,
        }


@dataclass(frozen=True)
class PolicySpec:
    """A policy to compare: its registered name and the options to build it with."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """How the report names it: ``name`` or ``name(key=value, ...)``."""
        if not self.options:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.options)})"


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {ch!r} in {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in {text!r}")
    parts.append(text[start:])
    return parts


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_policies(text: str) -> list[PolicySpec]:
    """Parse ``--policies``: ``a,b(key=value, ...),...``; ``ValueError`` if malformed."""
    specs: list[PolicySpec] = []
    for raw in _split_top(text):
        item = raw.strip()
        if not item:
            continue
        name, paren, rest = item.partition("(")
        name = name.strip()
        if not _NAME.fullmatch(name):
            raise ValueError(f"{item!r} is not a policy name (or name(key=value, ...))")
        options: dict[str, Any] = {}
        if paren:
            if not rest.rstrip().endswith(")"):
                raise ValueError(f"{item!r}: the options need a closing ')'")
            for opt in _split_top(rest.rstrip()[:-1]):
                if not opt.strip():
                    continue
                key, eq, value = opt.partition("=")
                key = key.strip()
                if not eq or not key.isidentifier():
                    raise ValueError(f"{item!r}: options are key=value, not {opt.strip()!r}")
                value = value.strip()
                try:
                    options[key] = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    if not _NAME.fullmatch(value):
                        raise ValueError(
                            f"{item!r}: {key}={value} is neither a Python literal nor a word"
                        ) from None
                    options[key] = value
        spec = PolicySpec(name, tuple(options.items()))
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise ValueError("name at least one policy, e.g. round-robin,least-queued")
    return specs
