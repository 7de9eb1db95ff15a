"""Turning runs into a summary, target verdicts and a markdown report."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ._suite import FLOORS, GRID, PAYLOADS, Config

BEGIN = "<!-- benchmark results: begin (python -m benchmarks --update-doc) -->"
END = "<!-- benchmark results: end -->"

Row = dict[str, Any]


def _rate(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e4:
        return f"{x / 1e3:.0f} k"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _size(payload: int) -> str:
    return f"{payload // 1024} KiB" if payload >= 1024 and payload % 1024 == 0 else f"{payload} B"


def progress(config: Config, entry: dict[str, Any]) -> str:
    head = f"{config.key:24} {_size(entry['payload']):>6}  rep {entry['rep'] + 1}: "
    if "error" in entry:
        return head + "FAILED: " + str(entry["error"]).splitlines()[0]
    if "p50_us" in entry["tx"]:
        tx = entry["tx"]
        return head + f"p50 {tx['p50_us']:.0f} us, p99 {tx['p99_us']:.0f} us"
    rx = entry["rx"]
    cpu = f"rx cpu {rx.get('cpu', 0):.0%}, tx cpu {entry['tx'].get('cpu', 0):.0%}"
    return head + f"{_rate(rx['msgs_per_s'])} msgs/s ({rx['seconds']:.2f} s, {cpu})"


def floor_progress(run: dict[str, Any]) -> str:
    head = f"{'floor':24} {'':>6}  rep {run['rep'] + 1}: "
    if "error" in run:
        return head + "FAILED: " + str(run["error"]).splitlines()[0]
    return head + ", ".join(f"{key[6:]} {_rate(run[key])}/s" for key in FLOORS)


def _floors(report: dict[str, Any]) -> list[Row]:
    """The floors: median, min and max of the repetitions, per floor."""
    floor = report.get("floor") or {}
    runs = floor.get("runs") or []
    if not runs:
        return []
    ok = [r for r in runs if "error" not in r]
    errors = [r["error"] for r in runs if "error" in r]
    out: list[Row] = []
    for key, label in FLOORS.items():
        row: Row = {
            "key": key,
            "label": label,
            "count": floor.get("count"),
            "reps": len(ok),
            "errors": errors,
        }
        rates = [r[key] for r in ok]
        if rates:
            row.update(msgs_per_s=statistics.median(rates), min=min(rates), max=max(rates))
        out.append(row)
    return out


#: Throughput rows that get ratios to the floors: one ``await`` per message.
PER_MESSAGE_KINDS = ("kcm-send",)
#: The ratio keys of a throughput row, and the floor each is to.
FLOOR_RATIOS = (
    ("vs_floor", "floor-pair"),
    ("vs_floor_send", "floor-send"),
    ("vs_floor_receive", "floor-receive"),
)


def summarise(report: dict[str, Any]) -> dict[str, list[Row]]:
    labels = {c["key"]: c["label"] for c in report["configs"]}
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in report["runs"]:
        grouped[run["key"], run["payload"]].append(run)
    throughput: list[Row] = []
    latency: list[Row] = []
    for (key, payload), runs in grouped.items():
        ok = [r for r in runs if "error" not in r]
        row: Row = {
            "key": key,
            "label": labels.get(key, key),
            "payload": payload,
            "reps": len(ok),
            "errors": [r["error"] for r in runs if "error" in r],
        }
        if key.startswith("ping-"):
            p50s = [r["tx"]["p50_us"] for r in ok]
            if p50s:
                row.update(
                    p50_us=statistics.median(p50s),
                    p50_min=min(p50s),
                    p50_max=max(p50s),
                    p99_us=statistics.median([r["tx"]["p99_us"] for r in ok]),
                    mean_us=statistics.median([r["tx"]["mean_us"] for r in ok]),
                )
            latency.append(row)
        else:
            rates = [r["rx"]["msgs_per_s"] for r in ok]
            if rates:
                median = statistics.median(rates)
                row.update(
                    msgs_per_s=median,
                    min=min(rates),
                    max=max(rates),
                    mb_per_s=median * payload / 1e6,
                    rx_cpu=statistics.median([r["rx"].get("cpu", 0.0) for r in ok]),
                    tx_cpu=statistics.median([r["tx"].get("cpu", 0.0) for r in ok]),
                )
            throughput.append(row)
    by = {(r["key"], r["payload"]): r for r in throughput}
    for row in throughput:
        for ref, name in (("raw-batched", "vs_raw_batched"), ("zmq", "vs_zmq")):
            base = by.get((ref, row["payload"]), {}).get("msgs_per_s")
            mine = row.get("msgs_per_s")
            row[name] = mine / base if mine and base else None
    floors = _floors(report)
    floor_rate = {r["key"]: r.get("msgs_per_s") for r in floors}
    kinds = {c["key"]: c.get("kind") for c in report["configs"]}
    for row in throughput:
        per_message = kinds.get(row["key"]) in PER_MESSAGE_KINDS
        for name, ref in FLOOR_RATIOS:
            base = floor_rate.get(ref)
            mine = row.get("msgs_per_s")
            row[name] = mine / base if per_message and mine and base else None
    lat = {r["key"]: r for r in latency}
    for row in latency:
        for ref, name in (("ping-raw", "vs_raw"), ("ping-zmq", "vs_zmq")):
            base = lat.get(ref, {}).get("p50_us")
            mine = row.get("p50_us")
            row[name] = mine / base if mine and base else None
    return {"throughput": throughput, "latency": latency, "floors": floors}


# ----------------------------------------------------------------------------
# targets (from the issue; never lowered here: a miss is reported as a miss)


def targets(report: dict[str, Any]) -> list[Row]:
    summary = report["summary"]
    by = {(r["key"], r["payload"]): r for r in summary["throughput"]}
    lat = {r["key"]: r for r in summary["latency"]}
    out: list[Row] = []

    def add(what: str, op: str, required: float, measured: float | None, unit: str = "x") -> None:
        if measured is None:
            out.append({"target": what, "required": f"{op} {required:g}{unit}", "measured": None})
            return
        met = measured >= required if op == ">=" else measured <= required
        # How far from the target, as a fraction of it (negative: short of it).
        margin = measured / required - 1 if op == ">=" else required / measured - 1
        out.append(
            {
                "target": what,
                "required": f"{op} {required:g}{unit}",
                "measured": measured,
                "unit": unit,
                "met": met,
                "margin": margin,
            }
        )

    def ratio(key: str, payload: int, ref: str) -> float | None:
        mine = by.get((key, payload), {}).get("msgs_per_s")
        base = by.get((ref, payload), {}).get("msgs_per_s")
        return mine / base if mine and base else None

    floors = {64: 0.5, 1024: 0.6, 16384: 0.8}
    for key, api in (("kcm-send-many", "send_many"), ("kcm-batch", "batch()")):
        for payload in PAYLOADS:
            add(
                f"{api} + receive_many 1x1 vs raw Trio batched, {_size(payload)}",
                ">=",
                floors[payload],
                ratio(key, payload, "raw-batched"),
            )
        for payload in PAYLOADS:
            add(
                f"{api} + receive_many 1x1 vs pyzmq PUSH/PULL, {_size(payload)}",
                ">=",
                1.0,
                ratio(key, payload, "zmq"),
            )
    # One message per await (issue 14): the receiver is a mux too, which asks
    # more than the parsing peer does.
    add(
        f"send / receive 1x1, one task each, vs naive raw Trio, {_size(64)}",
        ">=",
        3.0,
        ratio("kcm-send", 64, "raw-naive"),
    )
    per_task = {64: 4.0, 1024: 4.0, 16384: 2.0}
    for payload in PAYLOADS:
        add(
            f"send x16 tasks / receive x4 tasks vs naive raw Trio, {_size(payload)}",
            ">=",
            per_task[payload],
            ratio("kcm-send-16-4", payload, "raw-naive"),
        )
    floor = {r["key"]: r.get("msgs_per_s") for r in summary.get("floors", [])}.get("floor-receive")
    one = by.get(("kcm-send", 64), {}).get("msgs_per_s")
    add(
        f"send / receive 1x1 vs Trio's `await receive()` floor, {_size(64)}",
        ">=",
        0.9,
        one / floor if one and floor else None,
    )
    kcm, raw = lat.get("ping-kcm", {}).get("p50_us"), lat.get("ping-raw", {}).get("p50_us")
    add("ping-pong p50, trio-kcm vs raw Trio", "<=", 1.25, kcm / raw if kcm and raw else None)
    for payload in PAYLOADS:
        add(
            f"send_many/receive_many 64x64 vs 1x1 (same traffic), {_size(payload)}",
            ">=",
            0.8,
            ratio("kcm-send-many-64x64", payload, "kcm-send-many"),
        )
    memory = report.get("memory") or {}
    for field, what in (("kcm_stream", "idle attached stream"), ("kcm_socket", "idle socket")):
        value = memory.get(field)
        add(
            f"memory per {what} (Python-level)",
            "<=",
            32,
            value / 1024 if value is not None else None,
            " KiB",
        )
    return [t for t in out if t["measured"] is not None or _wanted(t, report)]


def _wanted(target: Row, report: dict[str, Any]) -> bool:
    """A target with no measurement is listed only in a full, unfiltered run."""
    return bool(report.get("mode") == "full")


# ----------------------------------------------------------------------------
# markdown


def _verdict(t: Row) -> str:
    if t.get("measured") is None:
        return "not measured"
    if t["met"]:
        return f"met (+{t['margin']:.0%})"
    return f"**missed by {-t['margin']:.0%}**"


def _measured(t: Row) -> str:
    if t.get("measured") is None:
        return "-"
    return f"{t['measured']:.1f}{t['unit']}" if t["unit"] != "x" else f"{t['measured']:.2f}x"


def markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    m = report["machine"]
    lines: list[str] = []
    add = lines.append
    add(f"Run of {report['started']} ({report['mode']} mode, {report['reps']} repetition(s), ")
    lines[-1] += f"{report['seconds']:.0f} s in all) on:"
    add("")
    add(f"- CPU: {m['cpu']}, {m['cores']} cores; {m['memory_gib']} GiB; {m['platform']}")
    add(
        f"- {m['python']}, trio {m['trio']}, trio-kcm {m['trio_kcm']} (commit {m['commit']}),"
        f" pyzmq {m['pyzmq']} (libzmq {m['libzmq']})"
    )
    lb, la = report["load_before"], report["load_after"]
    add(
        f"- load average before {lb['loadavg']}, after {la['loadavg']}; CPU pressure (PSI"
        f" some avg60) before {lb['cpu_pressure']}%, after {la['cpu_pressure']}%"
    )
    for note in report.get("notes", []):
        add(f"- note: {note}")
    add("")

    rows = sorted(
        summary["throughput"],
        key=lambda r: (r["payload"], _order(report, r["key"])),
    )
    if rows:
        add("### Throughput")
        add("")
        add(
            "Messages per second counted at the receiver (median of the repetitions); MB/s of"
            " payload (10^6 B); ratios of medians at the same payload; spread = min-max msgs/s."
        )
        add("")
        add("| configuration | payload | msgs/s | MB/s | x raw batched | x pyzmq | spread |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if "msgs_per_s" not in r:
                add(f"| {r['label']} | {_size(r['payload'])} | failed | | | | |")
                continue
            add(
                f"| {r['label']} | {_size(r['payload'])} | {_rate(r['msgs_per_s'])} |"
                f" {r['mb_per_s']:.1f} | {_ratio(r['vs_raw_batched'])} | {_ratio(r['vs_zmq'])} |"
                f" {_rate(r['min'])} - {_rate(r['max'])} |"
            )
        add("")
        grid = _grid(rows)
        if grid:
            lines.extend(grid)

    lines.extend(_floor_section(summary.get("floors") or [], rows))

    if summary["latency"]:
        add("### Latency: 64 B request/response, one in flight")
        add("")
        add("| implementation | p50 | p99 | x raw Trio p50 | x pyzmq p50 | spread of p50 |")
        add("|---|---:|---:|---:|---:|---:|")
        for r in sorted(summary["latency"], key=lambda r: _order(report, r["key"])):
            if "p50_us" not in r:
                add(f"| {r['label']} | failed | | | | |")
                continue
            add(
                f"| {r['label']} | {r['p50_us']:.0f} us | {r['p99_us']:.0f} us |"
                f" {_ratio(r['vs_raw'])} | {_ratio(r['vs_zmq'])} |"
                f" {r['p50_min']:.0f} - {r['p50_max']:.0f} us |"
            )
        add("")

    if report.get("targets"):
        add("### Targets")
        add("")
        add("| target | required | measured | result |")
        add("|---|---:|---:|---|")
        for t in report["targets"]:
            add(f"| {t['target']} | {t['required']} | {_measured(t)} | {_verdict(t)} |")
        add("")

    memory = report.get("memory")
    if memory:
        add("### Memory")
        add("")
        if "error" in memory:
            add(f"failed: {memory['error'].splitlines()[0]}")
        else:
            add(
                f"Python-level allocations (tracemalloc) per item, averaged over"
                f" {memory['count']} idle items in one process; the kernel's socket buffers"
                " are not included."
            )
            add("")
            add("| what | bytes each |")
            add("|---|---:|")
            for field, what in (
                ("socket_stream_pair", "a loopback connection: both trio.SocketStream ends"),
                ("raw_reader_task", "raw Trio: a task blocked in receive_some (baseline)"),
                ("kcm_stream", "trio-kcm: an idle attached stream (handle, reader, writer)"),
                ("kcm_socket", "trio-kcm: an idle KCM socket"),
                ("kcm_socket_receiver_task", "trio-kcm: a task blocked in sock.receive()"),
            ):
                if field in memory:
                    add(f"| {what} | {memory[field]:,.0f} |")
        add("")

    profiles = report.get("profiles") or {}
    if profiles:
        add("### Profiles (pyinstrument, timed window only)")
        add("")
        for key, prof in profiles.items():
            if "error" in prof:
                add(f"{key}: failed: {prof['error'].splitlines()[0]}")
                continue
            rx = prof["rx"]
            plain = next(
                (
                    r.get("msgs_per_s")
                    for r in summary["throughput"]
                    if r["key"] == key and r["payload"] == prof["payload"]
                ),
                None,
            )
            unprofiled = f" ({_rate(plain)} msgs/s unprofiled)" if plain else ""
            writes = prof["tx"].get("writes")
            per_write = (
                f"; the sender's mux wrote {rx['messages']:,} messages in {writes:,} writes"
                f" ({rx['messages'] / writes:.1f} per write)"
                if writes
                else ""
            )
            add(
                f"`{key}`, {_size(prof['payload'])}, 1x1: {_rate(rx['msgs_per_s'])} msgs/s"
                f" while profiled{unprofiled}{per_write}. Share of the profiled time, by"
                " function (self time):"
            )
            add("")
            add("| sender | self | receiver | self |")
            add("|---|---:|---|---:|")
            lines.extend(_pairs(prof["profile"]["tx"]["self"], prof["profile"]["rx"]["self"], 12))
            add("")
            add("Inclusive time (the function and what it calls):")
            add("")
            add("| sender | total | receiver | total |")
            add("|---|---:|---|---:|")
            lines.extend(
                _pairs(
                    _inner(prof["profile"]["tx"]["inclusive"]),
                    _inner(prof["profile"]["rx"]["inclusive"]),
                    10,
                )
            )
            add("")
    return "\n".join(lines).rstrip() + "\n"


def _floor_section(floors: list[Row], rows: list[Row]) -> list[str]:
    """The floors, and the per-message rows as a share of them."""
    if not floors:
        return []
    first = floors[0]
    out = [
        "### Floors: Trio's own per-await rate",
        "",
        "One process, no I/O: 64 B items through an unbounded"
        " `trio.open_memory_channel(inf)`, one `await` per item, so each await is one trip"
        f" through Trio's scheduler ({first['count']:,} items; median of {first['reps']}"
        " run(s); spread = min-max).  In a per-message row the sender process makes one"
        " `await sock.send()` per message and the receiver process one `await sock.receive()`"
        " (the mux's own tasks move many messages per await), so the send-alone and"
        " receive-alone floors bound each process; the pair is both ends in one process.",
        "",
        "| floor | items/s | spread |",
        "|---|---:|---:|",
    ]
    for f in floors:
        if "msgs_per_s" not in f:
            out.append(f"| {f['label']} | failed | |")
            continue
        out.append(
            f"| {f['label']} | {_rate(f['msgs_per_s'])} | {_rate(f['min'])} - {_rate(f['max'])} |"
        )
    out.append("")
    mine = [r for r in rows if r.get("vs_floor") is not None]
    if mine:
        out += [
            "The per-message trio-kcm rows of the throughput table, as a share of each floor"
            " (1.00x: as fast as Trio moves one item per await in one process):",
            "",
            "| configuration | payload | msgs/s | x pair floor | x send floor | x receive floor |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in mine:
            out.append(
                f"| {r['label']} | {_size(r['payload'])} | {_rate(r['msgs_per_s'])} |"
                f" {_ratio(r['vs_floor'])} | {_ratio(r['vs_floor_send'])} |"
                f" {_ratio(r['vs_floor_receive'])} |"
            )
        out.append("")
    return out


def _pairs(left: list[Any], right: list[Any], count: int) -> list[str]:
    """Two ranked lists of (name, share) side by side, as table rows."""
    left, right = left[:count], right[:count]
    out = []
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ("", None)
        b = right[i] if i < len(right) else ("", None)
        out.append(f"| {_code(a[0])} | {_pct(a[1])} | {_code(b[0])} | {_pct(b[1])} |")
    return out


def _inner(rows: list[Any]) -> list[Any]:
    """Leave out the frames every sample passes through (the run loop, the worker)."""
    return [r for r in rows if "benchmarks/" not in r[0] and "unrolled_run" not in r[0]]


def _code(name: str) -> str:
    return f"`{name}`" if name else ""


def _pct(share: float | None) -> str:
    return "" if share is None else f"{share:.0%}"


def _order(report: dict[str, Any], key: str) -> int:
    keys = [c["key"] for c in report["configs"]]
    return keys.index(key) if key in keys else len(keys)


def _grid(rows: list[Row]) -> list[str]:
    """The M x N grid of send_many/receive_many, msgs/s and ratio to 1x1."""
    cells: dict[tuple[int, int, int], Row] = {}
    for r in rows:
        key = r["key"]
        if key == "kcm-send-many":
            cells[r["payload"], 1, 1] = r
        elif key.startswith("kcm-send-many-"):
            m, n = key.rsplit("-", 1)[1].split("x")
            cells[r["payload"], int(m), int(n)] = r
    payloads = sorted({p for p, _, _ in cells})
    if not payloads or len(cells) < 2:
        return []
    out = [
        "trio-kcm `send_many` / `receive_many`, M streams x N sockets (the same total traffic"
        " in every cell): msgs/s, and the ratio to 1x1.",
        "",
    ]
    for payload in payloads:
        out.append(f"| {_size(payload)}: M \\ N | " + " | ".join(str(n) for n in GRID) + " |")
        out.append("|---:|" + "---:|" * len(GRID))
        base = cells.get((payload, 1, 1), {}).get("msgs_per_s")
        for m in GRID:
            row = []
            for n in GRID:
                cell = cells.get((payload, m, n))
                rate = cell.get("msgs_per_s") if cell else None
                if rate is None:
                    row.append("-")
                else:
                    rel = f" ({rate / base:.2f}x)" if base else ""
                    row.append(f"{_rate(rate)}{rel}")
            out.append(f"| {m} | " + " | ".join(row) + " |")
        out.append("")
    return out


def update_doc(path: Path, text: str) -> None:
    """Replace what lies between the markers in ``path`` (or append it)."""
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n\n{text}\n{END}"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + block + tail
    else:
        new = old.rstrip() + ("\n\n" if old else "") + block + "\n"
    path.write_text(new)
