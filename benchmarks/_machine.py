"""What machine a run was on, and how busy it was."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "trio_kcm"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return out.stdout.strip() + ("+dirty trio_kcm" if dirty else "")


def cpu_pressure() -> float | None:
    """Percent of the last 60 s some runnable task waited for a CPU (PSI), if known."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        fields = dict(f.split("=") for f in line.split()[1:])
        return float(fields["avg60"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def load() -> dict[str, Any]:
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "cpu_pressure": cpu_pressure()}


def describe(root: Path) -> dict[str, Any]:
    zmq: dict[str, str | None] = {"pyzmq": _version("pyzmq"), "libzmq": None}
    try:
        import zmq as _zmq

        zmq["libzmq"] = _zmq.zmq_version()
    except ImportError:
        pass
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "trio": _version("trio"),
        "trio_kcm": _version("trio-kcm"),
        "commit": _git_commit(root),
        **zmq,
    }
