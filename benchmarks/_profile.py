"""Summarise a pyinstrument profile: where a worker's time went, by function."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from pyinstrument import Profiler
from pyinstrument.frame import Frame

#: Functions listed per table.
TOP = 15


#: Frames every sample passes through: left out of the inclusive table.
_SCAFFOLD = re.compile(
    r"MainThread |_run_module_as_main |_run_code |<module> \(benchmarks/"
    r"|(main|run) \(benchmarks/worker\.py|run \(trio/_core/_run\.py"
)


def _name(frame: Frame) -> str:
    func = f"{frame.class_name}.{frame.function}" if frame.class_name else frame.function
    path = frame.file_path_short or ""
    # Keep the part from the package on: trio_kcm/_mux.py, trio/_socket.py ...
    for marker in ("trio_kcm/", "trio/", "benchmarks/", "zmq/"):
        i = path.rfind(marker)
        if i >= 0:
            path = path[i:]
            break
    return f"{func} ({path}:{frame.line_no})" if path else func


def summarise(profiler: Profiler) -> dict[str, Any]:
    """Self time and inclusive time per function, and the call tree as text."""
    session = profiler.last_session
    assert session is not None
    root = session.root_frame(trim_stem=False)
    own: dict[str, float] = defaultdict(float)
    total: dict[str, float] = defaultdict(float)

    def walk(frame: Frame, stack: frozenset[str]) -> None:
        if frame.is_synthetic:
            return
        name = _name(frame)
        own[name] += frame.total_self_time
        if name not in stack and not _SCAFFOLD.match(name):  # recursion counts once
            total[name] += frame.time
        inner = stack | {name}
        for child in frame.children:
            walk(child, inner)

    if root is not None:
        walk(root, frozenset())
    duration = session.duration

    def top(table: dict[str, float], count: int = TOP) -> list[tuple[str, float]]:
        rows = sorted(table.items(), key=lambda kv: -kv[1])[:count]
        return [(name, seconds / duration if duration else 0.0) for name, seconds in rows]

    return {
        "duration": duration,
        "cpu_time": session.cpu_time,
        "samples": session.sample_count,
        "self": top(own),
        "inclusive": top(total, 2 * TOP),
        "tree": profiler.output_text(unicode=False, color=False),
    }
