"""``trio-kcm demo``: the main job, live.

An echo peer on loopback TCP (in this process), a mux with M connections
attached to it and N worker sockets.  Sender tasks send numbered requests
through the sockets; the peer echoes every byte; the replies come back whole,
spread over the workers by the receive policy, and each worker checks that
every reply is the exact request it answers.  A live table shows the
per-stream and per-socket counters while it runs; a summary says what
happened at the end.

The moving parts, in the order the run goes through them:

1. the peer (``trio.serve_tcp`` on port 0) and the mux, its streams, sockets
   and worker tasks;
2. traffic for ``--duration`` seconds (or until Ctrl-C): at most ``--window``
   requests are in flight at once, so that stopping is quick;
3. the drain: no new requests, the replies still in flight are awaited (a
   second Ctrl-C, or ``DRAIN_TIMEOUT``, cuts it short: those are missing);
4. the final table and the summary; the mux closes.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import textwrap
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
import trio_util
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from .._errors import PolicyLoadError, StreamError
from .._mux import Mux, open_mux
from .._parsers import LengthPrefixed
from .._policy import Policy, load_policy
from .._socket import KCMSocket
from .._stats import StreamState
from .._stream import AttachedStream
from ._common import fail, format_bytes, make_console, number, policy_name

__all__ = ["DemoConfig", "Requests", "Tally", "add_parser", "echo_peer", "run", "run_demo"]

#: Thrift framed: a 4-byte big-endian payload length, then the payload.
PARSER = LengthPrefixed(">I", adjust=4)
_HEADER = struct.Struct(">I")
#: A request's payload starts with its 8-byte sequence number.
_SEQ = struct.Struct(">Q")
#: The rest of the payload: a slice of this pattern that depends on the number.
_PATTERN = bytes(range(256))
#: The largest payload --size takes (the mux's default max_message_size is 8 MiB).
MAX_SIZE = 1024 * 1024
#: Seconds the drain waits for replies still in flight.
DRAIN_TIMEOUT = 5.0
#: Rows of each table shown live (all of them in the final table).
LIVE_ROWS = 16

EPILOG = """\
exit status:
  0    every request got its reply, whole and exactly once
  1    a reply was corrupted, missing, duplicated or unexpected, or none was sent
  2    bad options, or the policy failed to load
  130  interrupted: twice, cutting the drain short, or while starting or closing

Without a terminal (a pipe, a file) nothing moves: the settings are printed
at the start, and the final table and the summary at the end.  Ctrl-C stops
the traffic early: the replies in flight are awaited and the summary printed
as usual; a second Ctrl-C stops waiting for them.
"""


# ---------------------------------------------------------------------------
# what the run does and what it found


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """The settings of one run (the command's options)."""

    streams: int = 4
    sockets: int = 4
    senders: int = 4
    size: int = 64
    duration: float = 5.0
    window: int = 256
    policy: str = "batch-affinity"
    rx_policy: str | None = None
    tx_policy: str | None = None
    refresh: float = 0.25
    drain_timeout: float = DRAIN_TIMEOUT


@dataclass(slots=True)
class Tally:
    """What happened: the counters the summary and the exit status come from."""

    #: Requests accepted by a socket.
    sent: int = 0
    #: Replies that were the exact request they answer (the first time).
    received: int = 0
    #: Replies whose number was in flight but whose bytes were wrong.
    corrupt: int = 0
    #: Replies for no request in flight: duplicates, or garbage numbers.
    unexpected: int = 0
    #: Whole replies each worker received, by socket.
    per_worker: list[int] = field(default_factory=list)
    #: Sequence numbers of requests still waiting for their reply.
    in_flight: set[int] = field(default_factory=set)
    #: Stream failures reported by the mux.
    errors: list[StreamError] = field(default_factory=list)
    #: Ctrl-C presses.
    interrupts: int = 0
    #: Whether the drain ran out of time or was interrupted.
    drain_cut: bool = False
    #: ``trio.current_time()`` when traffic started, and when the last reply
    #: arrived (or the drain ended).
    started: float = 0.0
    finished: float = 0.0

    @property
    def missing(self) -> int:
        """Requests that never got a reply."""
        return len(self.in_flight)

    @property
    def ok(self) -> bool:
        """Whether every request got its reply, whole and exactly once."""
        return (
            self.sent > 0
            and self.received == self.sent
            and not (self.corrupt or self.unexpected or self.in_flight)
        )


class Requests:
    """Builds the framed request number ``seq``: what its reply must equal, byte for byte.

    The payload is the 8-byte sequence number, then ``size - 8`` bytes of a
    pattern that starts where the number says, so that a reply carrying
    another request's bytes (or shifted ones) does not match.
    """

    __slots__ = ("_filler", "_header", "size")

    def __init__(self, size: int) -> None:
        if size < _SEQ.size:
            raise ValueError(f"a payload holds at least the {_SEQ.size}-byte number")
        self.size = size
        self._header = _HEADER.pack(size)
        self._filler = _PATTERN * (2 + size // len(_PATTERN))

    def __call__(self, seq: int) -> bytes:
        start = seq % len(_PATTERN)
        body = self._filler[start : start + self.size - _SEQ.size]
        return self._header + _SEQ.pack(seq) + body


def reply_number(reply: bytes) -> int | None:
    """The sequence number a reply claims to answer, or ``None`` if it has none."""
    if len(reply) < _HEADER.size + _SEQ.size:
        return None
    (seq,) = _SEQ.unpack_from(reply, _HEADER.size)
    return int(seq)


# ---------------------------------------------------------------------------
# the peer


async def echo_peer(stream: trio.SocketStream) -> None:
    """The far end of each connection: send every byte back."""
    async with stream:
        try:
            async for data in stream:
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the mux closed its end while replies were on the way


# ---------------------------------------------------------------------------
# the run


class _Run:
    """One run's state: the mux, its parts, the tally, and the tasks' bodies."""

    def __init__(
        self,
        cfg: DemoConfig,
        mux: Mux,
        handles: list[AttachedStream],
        sockets: list[KCMSocket],
    ) -> None:
        self.cfg = cfg
        self.mux = mux
        self.handles = handles
        self.sockets = sockets
        self.tally = Tally(per_worker=[0] * len(sockets))
        self.window = trio.Semaphore(cfg.window)
        self.outstanding = trio_util.AsyncValue(0)
        self.next_seq = 0
        self.request = Requests(cfg.size)
        self.traffic = trio.CancelScope()  # cancelled to stop sending
        self.drain = trio.CancelScope()  # cancelled to stop waiting for replies
        self.last_sample = (0.0, 0)  # (time, received) at the last live refresh
        self.rate = 0.0  # replies per second over the last refresh

    async def sender(self, sock: KCMSocket) -> None:
        """Send numbered requests through ``sock`` while the window has room."""
        tally = self.tally
        while True:
            await self.window.acquire()
            seq = self.next_seq
            self.next_seq += 1
            tally.in_flight.add(seq)
            try:
                await sock.send(self.request(seq))
            except BaseException:
                # send raised (cancelled, as a rule): the request was not accepted.
                tally.in_flight.discard(seq)
                self.window.release()
                raise
            tally.sent += 1
            self.outstanding.value += 1

    async def worker(self, index: int) -> None:
        """Receive the replies steered to socket ``index`` and check each one."""
        sock = self.sockets[index]
        tally = self.tally
        while True:
            try:
                replies = await sock.receive_many(256)
            except trio.ClosedResourceError:
                return
            for reply in replies:
                seq = reply_number(reply)
                if seq is None or seq not in tally.in_flight:
                    tally.unexpected += 1
                    continue
                tally.in_flight.remove(seq)
                if reply == self.request(seq):
                    tally.received += 1
                    tally.per_worker[index] += 1
                else:
                    tally.corrupt += 1
                self.window.release()
                self.outstanding.value -= 1
                tally.finished = trio.current_time()

    async def monitor(self) -> None:
        """The monitoring task: collect stream failures."""
        async for err in self.mux.errors():
            self.tally.errors.append(err)

    async def watch_interrupts(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ctrl-C stops the traffic; a second one stops the drain."""
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                self.tally.interrupts += 1
                self.traffic.cancel()
                if self.tally.interrupts > 1:
                    self.drain.cancel()

    async def refresh(self, live: Live) -> None:
        """Redraw ``live`` a few times a second."""
        async with aclosing(trio_util.periodic(self.cfg.refresh)) as ticks:
            async for _ in ticks:
                live.update(self.render(live=True), refresh=True)

    # -- what is shown ---------------------------------------------------------

    def render(self, *, live: bool) -> RenderableType:
        """The streams table, the sockets table and a line of totals."""
        now = trio.current_time()
        last_time, last_received = self.last_sample
        if now > last_time:
            self.rate = (self.tally.received - last_received) / (now - last_time)
        self.last_sample = (now, self.tally.received)
        limit = LIVE_ROWS if live else None
        return Group(self._streams_table(limit), self._sockets_table(limit), self._totals(now))

    def _streams_table(self, limit: int | None) -> Table:
        table = Table(title="streams (psocks)", title_justify="left", expand=False)
        for name in ("#", "state", "rx msgs", "rx bytes", "tx msgs", "tx bytes", "queued"):
            table.add_column(name, justify="left" if name == "state" else "right")
        shown = self.handles if limit is None else self.handles[:limit]
        for handle in shown:
            s = handle.statistics()
            state = Text(str(s.state), style="red" if s.state is StreamState.FAILED else "")
            table.add_row(
                f"psock-{handle.index}",
                state,
                str(s.rx_msgs),
                format_bytes(s.rx_bytes),
                str(s.tx_msgs),
                format_bytes(s.tx_bytes),
                format_bytes(s.tx_queued_bytes),
            )
        if len(shown) < len(self.handles):
            table.add_row(f"+{len(self.handles) - len(shown)}", "more")
        return table

    def _sockets_table(self, limit: int | None) -> Table:
        table = Table(title="sockets (workers)", title_justify="left", expand=False)
        for name in ("#", "rx msgs", "share", "tx msgs", "rx queued", "tx queued"):
            table.add_column(name, justify="right")
        received = self.tally.received
        shown = self.sockets if limit is None else self.sockets[:limit]
        for sock in shown:
            s = sock.statistics()
            share = self.tally.per_worker[sock.index] / received if received else 0.0
            table.add_row(
                f"kcm-{sock.index}",
                str(s.rx_msgs),
                f"{share:.1%}",
                str(s.tx_msgs),
                str(s.rx_queued_msgs),
                str(s.tx_queued_msgs),
            )
        if len(shown) < len(self.sockets):
            table.add_row(f"+{len(self.sockets) - len(shown)}", "more")
        return table

    def _totals(self, now: float) -> Text:
        tally = self.tally
        elapsed = max(now - tally.started, 1e-9)
        frame_len = _HEADER.size + self.cfg.size
        text = Text()
        text.append(f"{elapsed:.1f} s of {self.cfg.duration:g} s:")
        text.append(f" sent {tally.sent}, received {tally.received},")
        text.append(f" in flight {len(tally.in_flight)}\n")
        text.append(f"{self.rate:.0f} msgs/s now", style="bold")
        average = tally.received / elapsed
        text.append(
            f", {average:.0f} msgs/s average ({format_bytes(average * frame_len)}/s each way)"
        )
        errors = len(tally.errors)
        if errors:
            text.append(f"\n{errors} stream error{'s' * (errors != 1)}", style="bold red")
        if tally.corrupt or tally.unexpected:
            text.append(
                f"\n{tally.corrupt} corrupt, {tally.unexpected} unexpected", style="bold red"
            )
        return text


Peer = Callable[[trio.SocketStream], Awaitable[None]]


def _load_policies(cfg: DemoConfig) -> tuple[Policy, Policy | None, Policy | None]:
    """Build the policies before anything starts (raises PolicyLoadError)."""
    both = load_policy(cfg.policy)
    rx = load_policy(cfg.rx_policy) if cfg.rx_policy else None
    tx = load_policy(cfg.tx_policy) if cfg.tx_policy else None
    return both, rx, tx


def policy_label(cfg: DemoConfig) -> str:
    """The policies in a few words: ``batch-affinity``, or per direction."""
    rx = cfg.rx_policy or cfg.policy
    tx = cfg.tx_policy or cfg.policy
    return rx if rx == tx else f"rx {rx}, tx {tx}"


async def run_demo(
    cfg: DemoConfig,
    console: Console,
    *,
    live: bool,
    peer: Peer = echo_peer,
    handle_sigint: bool = True,
) -> Tally:
    """Run the demo; return what happened (the summary is not printed here).

    The final tables are printed (or left on screen by the live display).

    Raises:
      PolicyLoadError: A policy failed to load; nothing was started.

    """
    policy, rx_policy, tx_policy = _load_policies(cfg)
    async with trio.open_nursery() as peer_nursery:
        listeners = await peer_nursery.start(partial(trio.serve_tcp, peer, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with open_mux(
            parser=PARSER, policy=policy, rx_policy=rx_policy, tx_policy=tx_policy
        ) as mux:
            handles = [
                mux.attach(await trio.open_tcp_stream("127.0.0.1", port))
                for _ in range(cfg.streams)
            ]
            sockets = [mux.socket() for _ in range(cfg.sockets)]
            state = _Run(cfg, mux, handles, sockets)
            tally = state.tally
            async with trio.open_nursery() as nursery:
                if handle_sigint:
                    await nursery.start(state.watch_interrupts)
                nursery.start_soon(state.monitor)
                for i in range(cfg.sockets):
                    nursery.start_soon(state.worker, i)
                console.print(
                    f"trio-kcm demo: {cfg.streams} streams to an echo peer on 127.0.0.1:{port},"
                    f" {cfg.sockets} worker sockets, {cfg.senders} senders,",
                    soft_wrap=True,
                )
                console.print(
                    f"policy {policy_label(cfg)}, {cfg.size}-byte payloads,"
                    f" {cfg.duration:g} s (Ctrl-C stops early)",
                    soft_wrap=True,
                )
                tally.started = tally.finished = trio.current_time()
                state.last_sample = (tally.started, 0)
                display = (
                    Live(state.render(live=True), console=console, auto_refresh=False)
                    if live
                    else None
                )
                try:
                    if display is not None:
                        display.start(refresh=True)
                        nursery.start_soon(state.refresh, display)
                    with state.traffic:
                        state.traffic.deadline = trio.current_time() + cfg.duration
                        async with trio.open_nursery() as senders:
                            for i in range(cfg.senders):
                                senders.start_soon(state.sender, sockets[i % cfg.sockets])
                    with state.drain:
                        state.drain.deadline = trio.current_time() + cfg.drain_timeout
                        await state.outstanding.wait_value(0)
                    tally.drain_cut = state.drain.cancelled_caught and bool(tally.in_flight)
                    if tally.drain_cut:
                        tally.finished = trio.current_time()
                    nursery.cancel_scope.cancel()
                finally:
                    if display is not None:
                        display.update(state.render(live=True), refresh=True)
                        display.stop()
            if display is None:
                console.print(state.render(live=False))
        peer_nursery.cancel_scope.cancel()
    return tally


# ---------------------------------------------------------------------------
# the summary


def print_summary(console: Console, cfg: DemoConfig, tally: Tally) -> None:
    """What the run did, in lines a script can read too (``key: value``)."""
    elapsed = max(tally.finished - tally.started, 1e-9)
    frame_len = _HEADER.size + cfg.size
    out = partial(console.print, soft_wrap=True)
    out("summary:", style="bold")
    out(f"  policy: {policy_label(cfg)}")
    out(f"  streams: {cfg.streams}, stream errors: {len(tally.errors)}")
    for err in tally.errors:
        out(f"    psock-{err.stream.index}: {err}", style="red")
    out(f"  sockets: {cfg.sockets}, senders: {cfg.senders}")
    out(f"  messages sent: {tally.sent} ({cfg.size}-byte payloads, {frame_len} bytes framed)")
    out(f"  messages received: {tally.received}")
    out(f"  time: {elapsed:.2f} s")
    out(
        f"  throughput: {tally.received / elapsed:.0f} msgs/s,"
        f" {format_bytes(tally.received * frame_len / elapsed)}/s each way"
    )
    shares = " ".join(
        f"{n} ({n / tally.received:.1%})" if tally.received else str(n) for n in tally.per_worker
    )
    out(f"  replies per worker: {shares}")
    if tally.interrupts:
        out("  interrupted: traffic stopped early by Ctrl-C")
    problems = []
    if tally.missing:
        cut = " (the drain was cut short)" if tally.drain_cut else ""
        problems.append(f"{tally.missing} missing{cut}")
    if tally.corrupt:
        problems.append(f"{tally.corrupt} corrupted")
    if tally.unexpected:
        problems.append(f"{tally.unexpected} duplicated or unexpected")
    if tally.ok:
        out("result: OK, every reply arrived whole, exactly once", style="bold green")
    elif tally.sent == 0:
        out("result: FAILED, no request was sent", style="bold red")
    else:
        out(f"result: FAILED, replies {', '.join(problems)}", style="bold red")


# ---------------------------------------------------------------------------
# the command


def add_parser(subparsers: Any) -> None:
    """Declare ``trio-kcm demo`` and its options."""
    p = subparsers.add_parser(
        "demo",
        help="run the main job live: an echo peer, M connections, N worker sockets",
        description=textwrap.dedent(__doc__ or "").split("\n\n")[1],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    positive = number(int, minimum=1)
    p.add_argument(
        "-m", "--streams", type=positive, default=4, metavar="M",
        help="TCP connections attached to the mux (default: 4)",
    )  # fmt: skip
    p.add_argument(
        "-n", "--sockets", type=positive, default=4, metavar="N",
        help="KCM sockets, each served by a worker task (default: 4)",
    )  # fmt: skip
    p.add_argument(
        "--senders", type=positive, default=None, metavar="S",
        help="tasks sending requests, round the sockets (default: one per socket)",
    )  # fmt: skip
    p.add_argument(
        "--policy", type=policy_name, default="batch-affinity", metavar="NAME",
        help="the load-balancing policy, both directions (default: batch-affinity;"
        " see 'trio-kcm policies')",
    )  # fmt: skip
    p.add_argument(
        "--rx-policy", type=policy_name, default=None, metavar="NAME",
        help="the policy that picks a socket for each reply (default: --policy)",
    )  # fmt: skip
    p.add_argument(
        "--tx-policy", type=policy_name, default=None, metavar="NAME",
        help="the policy that picks a stream for each request (default: --policy)",
    )  # fmt: skip
    p.add_argument(
        "--size", type=number(int, minimum=_SEQ.size, maximum=MAX_SIZE), default=64,
        metavar="BYTES", help=f"payload bytes per message, {_SEQ.size} to {MAX_SIZE}"
        " (default: 64; the 4-byte length header comes on top)",
    )  # fmt: skip
    p.add_argument(
        "--duration", type=number(float, minimum=0, maximum=86400, exclusive=True),
        default=5.0, metavar="SECONDS", help="how long to send (default: 5)",
    )  # fmt: skip
    p.add_argument(
        "--window", type=positive, default=256, metavar="K",
        help="requests in flight at most, over all senders (default: 256)",
    )  # fmt: skip
    p.add_argument(
        "--live", action=argparse.BooleanOptionalAction, default=None,
        help="redraw the table while it runs (default: only on a terminal)",
    )  # fmt: skip


def _only_interrupts(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt, alone or grouped by nurseries."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(KeyboardInterrupt)
        return rest is None
    return isinstance(exc, KeyboardInterrupt)


def run(args: argparse.Namespace) -> int:
    """Run ``trio-kcm demo``; return its exit status."""
    cfg = DemoConfig(
        streams=args.streams,
        sockets=args.sockets,
        senders=args.senders or args.sockets,
        size=args.size,
        duration=args.duration,
        window=args.window,
        policy=args.policy,
        rx_policy=args.rx_policy,
        tx_policy=args.tx_policy,
    )
    console = make_console(force_terminal=True if args.live else None)
    live = args.live if args.live is not None else (
        console.is_terminal and not console.is_dumb_terminal
    )  # fmt: skip
    try:
        tally = trio.run(partial(run_demo, cfg, console, live=live))
    except PolicyLoadError as exc:
        return fail("demo", str(exc))
    except BaseException as exc:
        if not _only_interrupts(exc):
            raise
        # Ctrl-C while the signal handler is not installed: starting, or closing
        print("trio-kcm demo: interrupted", file=sys.stderr)
        return 130
    print_summary(console, cfg, tally)
    if tally.ok:
        return 0
    return 130 if tally.interrupts > 1 else 1
