"""The runner: ``python -m benchmarks``.

For every configuration and payload it starts a receiver process, waits for
its ``READY <port>``, starts a sender process against that port, and collects
both ``RESULT`` lines.  Repetitions are the outer loop, so that a change in the
machine's load spreads over all configurations instead of hitting one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from . import _machine, _report
from ._spec import Spec
from ._suite import (
    CALIBRATE,
    KCM_BATCH,
    KCM_SEND,
    KCM_SEND_16_4,
    KCM_SEND_MANY,
    PAYLOADS,
    PING,
    PING_PAYLOAD,
    QUICK_COUNT,
    QUICK_FLOOR,
    QUICK_PAYLOADS,
    QUICK_PING,
    QUICK_THROUGHPUT,
    THROUGHPUT,
    Config,
    rate_class,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "build" / "bench" / "latest.json"

#: Messages moved per configuration are sized so that a run takes about this long.
TARGET_SECONDS = 1.0
MIN_COUNT = 2_000
MAX_COUNT = 20_000_000
#: Ping-pong round trips (timed) and warm-up round trips, full mode.
PING_COUNT = 10_000
PING_WARMUP = 1_000
#: Idle streams and sockets for the memory measurement.
MEMORY_COUNT = 1_000
#: Items of the floor's calibration run (full mode).
FLOOR_CALIBRATE = 20_000
#: Seconds one run may take before both processes are killed.
RUN_TIMEOUT = 90.0


class RunError(Exception):
    """A run failed: a worker crashed, timed out or printed no result."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    return env


def _command(role: str, spec: Spec, port: int | None, profile: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.worker", role, spec.to_json()]
    if port is not None:
        cmd += ["--port", str(port)]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    return cmd


def _start(cmd: list[str], stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=stdin,
        text=True,
        env=_env(),
        cwd=ROOT,
    )


def _readline(stream: IO[str], timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RunError(f"no READY line within {timeout:.0f} s")
    return stream.readline()


def _result(name: str, proc: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise RunError(f"the {name} did not finish within {RUN_TIMEOUT:.0f} s") from None
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    tail = "\n".join(err.strip().splitlines()[-15:])
    raise RunError(f"the {name} exited with {proc.returncode} and no result:\n{tail}")


def run_pair(
    spec: Spec, *, profile_dir: Path | None = None, timeout: float = RUN_TIMEOUT
) -> dict[str, Any]:
    """Run one measurement: receiver (or server) and sender (or client) processes."""
    deadline = time.monotonic() + timeout
    procs: list[subprocess.Popen[str]] = []
    rx_prof = tx_prof = None
    if profile_dir is not None:
        name = f"{spec.kind}-{spec.m}x{spec.n}-{spec.tx_tasks}-{spec.rx_tasks}-{spec.payload}"
        rx_prof = profile_dir / f"{name}-rx.json"
        tx_prof = profile_dir / f"{name}-tx.json"
    try:
        # Both start at once; the sender waits for the port on its stdin.
        rx = _start(_command("rx", spec, None, rx_prof))
        procs.append(rx)
        tx = _start(_command("tx", spec, None, tx_prof), stdin=subprocess.PIPE)
        procs.append(tx)
        assert rx.stdout is not None and tx.stdin is not None
        line = _readline(rx.stdout, timeout)
        if not line.startswith("READY "):
            procs.remove(rx)
            _result("receiver", rx, deadline)  # raises, with its stderr
            raise RunError(f"the receiver said {line!r}")
        tx.stdin.write(line.split()[1] + "\n")
        tx.stdin.flush()
        tx_result = _result("sender", tx, deadline)
        rx_result = _result("receiver", rx, deadline)
        out: dict[str, Any] = {"rx": rx_result, "tx": tx_result}
        if profile_dir is not None:
            assert rx_prof is not None and tx_prof is not None
            out["profile"] = {
                "rx": json.loads(rx_prof.read_text()),
                "tx": json.loads(tx_prof.read_text()),
            }
        return out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def run_memory(count: int) -> dict[str, Any]:
    spec = Spec(kind="memory", payload=0, count=count)
    proc = _start(_command("memory", spec, None, None))
    try:
        return _result("memory worker", proc, time.monotonic() + RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def run_floor(count: int) -> dict[str, Any]:
    """The floors (Trio's own per-await rate), ``count`` items each, in a process of its own."""
    spec = Spec(kind="floor", payload=64, count=count)
    proc = _start(_command("floor", spec, None, None))
    try:
        return _result("floor worker", proc, time.monotonic() + RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def calibrate_floor(seconds: float) -> int:
    """Items for the floor's pair (its slowest part) to take about ``seconds`` here."""
    return _round(run_floor(FLOOR_CALIBRATE)["floor-pair"] * seconds)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _round(count: float) -> int:
    """Two significant figures, within [MIN_COUNT, MAX_COUNT]."""
    count = min(MAX_COUNT, max(MIN_COUNT, count))
    step = 10 ** max(0, int(math.log10(count)) - 1)
    return int(round(count / step) * step)


def calibrate(config: Config, payload: int, seconds: float) -> int:
    """Messages for ``config`` at ``payload`` to take about ``seconds`` here."""
    count = 200_000 // max(1, payload // 64) if "kcm" not in config.kind else 20_000
    count = max(MIN_COUNT, count)
    rate = 0.0
    for _ in range(4):
        rx = run_pair(config.spec(payload, count))["rx"]
        rate = rx["msgs_per_s"]
        if rx["seconds"] >= 0.15 or count >= MAX_COUNT:
            break
        count = min(MAX_COUNT, int(count * min(20.0, 0.4 / max(rx["seconds"], 0.01))))
    return _round(rate * seconds)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="trio-kcm against raw Trio and pyzmq, sender and receiver in separate"
        " processes over loopback TCP.  Prints a markdown report and writes JSON.",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny counts, 1 repetition")
    p.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    p.add_argument(
        "--seconds",
        type=float,
        default=TARGET_SECONDS,
        help="aim for runs of about this long (default %(default)s)",
    )
    p.add_argument(
        "--only", action="append", metavar="KEY", help="only configurations whose key contains KEY"
    )
    p.add_argument(
        "--payload", action="append", type=int, metavar="BYTES", help="only these payload sizes"
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="default: %(default)s")
    p.add_argument("--markdown", type=Path, help="also write the markdown report here")
    p.add_argument(
        "--update-doc",
        type=Path,
        metavar="PATH",
        help="replace the results section of PATH (e.g. docs/performance.md)",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile trio-kcm's hot paths with pyinstrument (default: on unless --quick)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the floors (Trio's own per-await rate; runs even with --only,"
        " so that '--only floor' runs the floors alone)",
    )
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="print the report of an earlier run; run nothing",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        # Judged by today's targets, which may be newer than the run.
        report["targets"] = _report.targets(report)
        _emit(args, report)
        return 0

    quick: bool = args.quick
    reps: int = args.reps or (1 if quick else 3)
    have_zmq = importlib.util.find_spec("zmq") is not None
    have_pyinstrument = importlib.util.find_spec("pyinstrument") is not None
    profile = (not quick) if args.profile is None else args.profile
    notes: list[str] = []
    if not have_zmq:
        notes.append("pyzmq is not installed: its rows are skipped (pip install pyzmq).")
    if profile and not have_pyinstrument:
        notes.append("pyinstrument is not installed: no profiles (pip install pyinstrument).")
        profile = False

    throughput: tuple[Config, ...] = QUICK_THROUGHPUT if quick else THROUGHPUT
    pings: tuple[Config, ...] = PING
    payloads: tuple[int, ...] = QUICK_PAYLOADS if quick else PAYLOADS
    if args.payload:
        payloads = tuple(p for p in PAYLOADS if p in args.payload) or tuple(args.payload)
    if not have_zmq:
        throughput = tuple(c for c in throughput if not c.uses_zmq)
        pings = tuple(c for c in pings if not c.uses_zmq)
    if args.only:
        throughput = tuple(c for c in throughput if any(k in c.key for k in args.only))
        pings = tuple(c for c in pings if any(k in c.key for k in args.only))

    started = time.time()
    t_start = time.monotonic()
    machine = _machine.describe(ROOT)
    load_before = _machine.load()
    _log(
        f"benchmarks: {'quick' if quick else 'full'} mode, {reps} repetition(s), load "
        f"{load_before['loadavg']}, on {machine['cpu']} x{machine['cores']}"
    )

    # How many messages each configuration moves.
    counts: dict[tuple[str, int], int] = {}
    needed = {(rate_class(c), p) for c in throughput for p in payloads}
    if quick:
        counts = dict.fromkeys(needed, QUICK_COUNT)
    else:
        for cls, payload in sorted(needed, key=lambda k: (k[1], k[0])):
            counts[cls, payload] = calibrate(CALIBRATE[cls], payload, args.seconds)
            _log(f"  calibrated {cls:14} {payload:6} B: {counts[cls, payload]:>10,} messages")
    ping_count, ping_warmup = (QUICK_PING, 50) if quick else (PING_COUNT, PING_WARMUP)
    floor_count = 0
    floor: dict[str, Any] | None = None
    if not args.no_floor:
        try:
            floor_count = QUICK_FLOOR if quick else calibrate_floor(args.seconds)
            floor = {"count": floor_count, "runs": []}
            _log(f"  calibrated {'floor':14} {'':6}   {floor_count:>10,} items")
        except RunError as exc:
            floor = {"count": 0, "runs": [{"rep": 0, "error": str(exc)}]}

    runs: list[dict[str, Any]] = []
    todo = [(c, p) for c in throughput for p in payloads] + [(c, PING_PAYLOAD) for c in pings]
    with_floor = floor is not None and floor_count > 0
    total = (len(todo) + with_floor) * reps
    done = 0
    for rep in range(reps):
        for config, payload in todo:
            if config in pings:
                spec = config.spec(payload, ping_count, ping_warmup)
            else:
                spec = config.spec(payload, counts[rate_class(config), payload])
            done += 1
            t0 = time.monotonic()
            entry: dict[str, Any] = {
                "key": config.key,
                "payload": payload,
                "rep": rep,
                "spec": json.loads(spec.to_json()),
            }
            try:
                entry.update(run_pair(spec))
            except RunError as exc:
                entry["error"] = str(exc)
            runs.append(entry)
            took = time.monotonic() - t0
            _log(f"  [{done:3}/{total}] {_report.progress(config, entry)} ({took:.1f} s)")
        if with_floor:
            # Once per repetition, like every configuration.
            assert floor is not None
            done += 1
            t0 = time.monotonic()
            floor_run: dict[str, Any] = {"rep": rep}
            try:
                floor_run.update(run_floor(floor_count))
            except RunError as exc:
                floor_run["error"] = str(exc)
            floor["runs"].append(floor_run)
            took = time.monotonic() - t0
            _log(f"  [{done:3}/{total}] {_report.floor_progress(floor_run)} ({took:.1f} s)")

    memory = None
    if not args.no_memory:
        _log("  memory per idle stream and socket ...")
        try:
            memory = run_memory(100 if quick else MEMORY_COUNT)
        except RunError as exc:
            memory = {"error": str(exc)}

    profiles: dict[str, Any] = {}
    if profile:
        profile_dir = args.json.parent / "profiles"
        profile_dir.mkdir(parents=True, exist_ok=True)
        for config in (KCM_SEND_MANY, KCM_BATCH, KCM_SEND, KCM_SEND_16_4):
            payload = 64
            count = counts.get((rate_class(config), payload)) or (
                QUICK_COUNT if quick else calibrate(config, payload, args.seconds)
            )
            _log(f"  profiling {config.key} at {payload} B ...")
            spec = config.spec(payload, count, count_writes=True)
            try:
                result = run_pair(spec, profile_dir=profile_dir)
                profiles[config.key] = {"payload": payload, **result}
            except RunError as exc:
                profiles[config.key] = {"payload": payload, "error": str(exc)}

    report = {
        "mode": "quick" if quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "seconds": round(time.monotonic() - t_start, 1),
        "reps": reps,
        "machine": machine,
        "load_before": load_before,
        "load_after": _machine.load(),
        "notes": notes,
        "counts": [{"class": c, "payload": p, "count": n} for (c, p), n in sorted(counts.items())],
        "configs": [
            {"key": c.key, "label": c.label, "kind": c.kind, "m": c.m, "n": c.n}
            for c in (*throughput, *pings)
        ],
        "runs": runs,
        "memory": memory,
        "profiles": profiles,
        "floor": floor,
    }
    report["summary"] = _report.summarise(report)
    report["targets"] = _report.targets(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    _log(f"benchmarks: {report['seconds']} s; JSON in {args.json}")
    _emit(args, report)
    failed = [r for r in runs if "error" in r]
    failed += [r for r in (floor or {}).get("runs", []) if "error" in r]
    if failed:
        _log(f"benchmarks: {len(failed)} run(s) failed; see 'error' in the JSON")
        return 1
    return 0


def _emit(args: argparse.Namespace, report: dict[str, Any]) -> None:
    text = _report.markdown(report)
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.update_doc is not None:
        _report.update_doc(args.update_doc, text)
