"""Times, sizes, counts and bandwidths, as the lab writes them.

Pure: no Trio, no I/O.  Each ``parse_*`` raises :exc:`ValueError` with a
message fit to show as it is.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "format_bandwidth",
    "format_seconds",
    "json_number",
    "parse_bandwidth",
    "parse_count",
    "parse_duration",
    "parse_size",
]

_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "m": 60.0}
_TIME = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|ns|m)?\s*")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1 << 20, "mib": 1 << 20}
_SIZE = re.compile(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*")
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


def parse_duration(text: str, *, what: str = "a time") -> float:
    """Parse a time: ``"1ms"`` -> ``0.001``.

    Units are ``s``, ``ms``, ``us`` (or ``µs``), ``ns`` and ``m`` (minutes);
    a bare number is seconds.

    Args:
      text: The time, e.g. ``"250us"``, ``"0.5s"``, ``"2e-3"``.
      what: What it is, for the error message (``"the link delay"``).

    Returns:
      The time in seconds (zero or more).

    Raises:
      ValueError: ``text`` is not a time, or is not finite.

    """
    m = _TIME.fullmatch(text)
    if m is None:
        raise ValueError(f"{what} should look like 1ms, 250us, 2s or 0.5, not {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, not {text!r}")
    return value


def parse_size(text: str, *, what: str = "a size") -> int:
    """Parse a size in bytes: ``"64"``, ``"4k"``, ``"1MiB"``.

    ``k`` and ``M`` (and ``KiB``, ``MiB``) are powers of 1024; ``kB`` is 1000.

    Args:
      text: The size.
      what: What it is, for the error message.

    Returns:
      The number of bytes.

    Raises:
      ValueError: ``text`` is not a size.

    """
    m = _SIZE.fullmatch(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{what} should be a number of bytes like 64, 4k or 1MiB, not {text!r}")
    return int(m.group(1)) * _SIZE_UNITS[unit]


def parse_count(text: str, *, what: str = "a count") -> int:
    """Parse a whole number: ``"20000"``, ``"20k"``, ``"1M"``, ``"1e5"``, ``"1_000"``.

    ``k`` is 1000 and ``M`` a million here (counts, not bytes).

    Args:
      text: The count.
      what: What it is, for the error message.

    Returns:
      The number.

    Raises:
      ValueError: ``text`` is not a whole number.

    """
    t = text.strip().lower().replace("_", "")
    scale = 1
    if t.endswith("k"):
        t, scale = t[:-1], 1000
    elif t.endswith("m"):
        t, scale = t[:-1], 1_000_000
    try:
        value = float(t) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{what} should be a whole number like 5000 or 20k, not {text!r}")
    return int(value)


def parse_bandwidth(text: str) -> float:
    """Parse a bandwidth: ``"100MB/s"`` -> ``100e6`` bytes per second.

    Units: ``B``, ``kB``, ``MB``, ``GB`` (powers of 1000), ``KiB``, ``MiB``,
    ``GiB`` (powers of 1024), ``bit``, ``kbit``, ``Mbit``, ``Gbit``; the
    ``/s`` may be left out.

    Args:
      text: The bandwidth, e.g. ``"1Gbit/s"`` (125e6 bytes per second).

    Returns:
      Bytes per second (more than zero).

    Raises:
      ValueError: ``text`` is not a bandwidth, or is not more than zero.

    """
    m = _RATE.fullmatch(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _RATE_UNITS:
        raise ValueError(f"a bandwidth should look like 100MB/s, 1Gbit/s or 512KiB/s, not {text!r}")
    value = float(m.group(1)) * _RATE_UNITS[unit]
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"a bandwidth must be > 0, not {text!r}")
    return value


def format_seconds(seconds: float, *, digits: int = 3) -> str:
    """A time for people: ``0.0012`` -> ``"1.2ms"``.

    Args:
      seconds: The time; ``inf`` gives ``"inf"`` and NaN ``"-"``.
      digits: Significant digits.

    Returns:
      The time in the largest unit (``s``, ``ms``, ``us``, ``ns``) that keeps it
      at 1 or more; :func:`parse_duration` reads it back.

    """
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


def format_bandwidth(value: float) -> str:
    """Bytes per second for people, in powers of 1000: ``2e7`` -> ``"20MB/s"``."""
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}B/s"


def json_number(x: float) -> float | None:
    """``x``, or ``None`` for NaN and infinities (JSON has neither)."""
    return x if math.isfinite(x) else None
