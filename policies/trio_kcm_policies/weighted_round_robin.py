"""``weighted-round-robin``: smooth weighted turns, on an earliest-deadline heap."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar

from trio_kcm import Policy

from ._common import HasIndex, positive_number

if TYPE_CHECKING:
    from trio_kcm import AttachedStream, KCMSocket

__all__ = ["WeightedRoundRobin", "Weights"]

T = TypeVar("T", bound=HasIndex)

#: Weights: by index (others weigh 1), or a function of the socket or stream.
Weights: TypeAlias = Mapping[int, float] | Callable[[T], float] | None

_NAME = "weighted-round-robin"


class _Entry(Generic[T]):
    """A member's place in virtual time.

    Its next pick *starts* at ``base + count / weight`` and has its *deadline*
    one stride (``1 / weight``) later; ``gen`` tells its live heap entry from
    stale ones.
    """

    __slots__ = ("base", "count", "gen", "live", "obj", "weight")

    def __init__(self, obj: T) -> None:
        self.obj = obj
        self.weight = 1.0
        self.base = 0.0
        self.count = 0
        self.gen = 0
        self.live = False

    def start(self) -> float:
        return self.base + self.count / self.weight

    def deadline(self) -> float:
        return self.base + (self.count + 1) / self.weight


# (virtual time, sequence number, generation, entry)
_HeapItem = tuple[float, int, int, _Entry[T]]


class _Schedule(Generic[T]):
    """Earliest eligible virtual deadline first (EEVDF), for unit-size picks.

    Virtual time ``V`` advances by ``1 / W`` per pick, ``W`` being the total
    weight of the members present.  A member is *eligible* once ``V`` reaches
    its start; among the eligible, the earliest deadline is picked (ties: the
    one that became eligible first), and its start moves one stride on.  Every
    member thus gets ``weight / W`` of the picks, spread out: at every point
    of the sequence its count is within about one pick of its exact share.

    Members wait in one heap keyed by start until eligible, then in another
    keyed by deadline: each pick moves a member at most once between them,
    O(log n).  A newcomer starts at the current ``V`` (no burst to "catch
    up", no wait either); a member coming back starts at the later of ``V``
    and where it left off.  Leaving invalidates the member's heap entry,
    which is dropped when it surfaces (or when stale entries pile up).
    """

    __slots__ = ("_eligible", "_live", "_members", "_seq", "_ticks", "_total", "_vbase", "_waiting")

    def __init__(self) -> None:
        self._members: dict[int, _Entry[T]] = {}
        self._waiting: list[_HeapItem[T]] = []
        self._eligible: list[_HeapItem[T]] = []
        self._seq = itertools.count()
        self._vbase = 0.0
        self._ticks = 0
        self._total = 0.0
        self._live = 0

    def vtime(self) -> float:
        return self._vbase + self._ticks / self._total if self._total else self._vbase

    def _rebase(self) -> None:
        self._vbase = self.vtime()
        self._ticks = 0

    def entry(self, obj: T) -> _Entry[T] | None:
        entry = self._members.get(obj.index)
        return entry if entry is not None and entry.obj is obj else None

    def add(self, obj: T, weight: float) -> None:
        entry = self.entry(obj)
        if entry is not None and entry.live:
            return
        self._rebase()
        now = self._vbase
        if entry is None:
            old = self._members.get(obj.index)
            if old is not None and old.live:  # pragma: no cover - indices are unique
                self.remove(old.obj)
            entry = self._members[obj.index] = _Entry(obj)
            start = now
        else:
            start = max(entry.start(), now)
        entry.weight = weight
        entry.base = start
        entry.count = 0
        entry.gen += 1
        entry.live = True
        self._total += weight
        self._live += 1
        heapq.heappush(self._waiting, (start, next(self._seq), entry.gen, entry))
        self._maybe_compact()

    def remove(self, obj: T, *, forget: bool = False) -> None:
        entry = self.entry(obj)
        if entry is None:
            return
        if entry.live:
            self._rebase()
            entry.live = False
            entry.gen += 1
            self._live -= 1
            self._total = self._total - entry.weight if self._live else 0.0
        if forget:
            del self._members[obj.index]

    def pick(self) -> T | None:
        if not self._live:
            return None
        waiting = self._waiting
        eligible = self._eligible
        while True:
            v = self.vtime()
            limit = v + 1e-12 * (1.0 + abs(v))
            while waiting and waiting[0][0] <= limit:
                _, _, gen, entry = heapq.heappop(waiting)
                if entry.live and entry.gen == gen:
                    heapq.heappush(eligible, (entry.deadline(), next(self._seq), gen, entry))
            while eligible and not (eligible[0][3].live and eligible[0][3].gen == eligible[0][2]):
                heapq.heappop(eligible)
            if eligible:
                break
            # Everyone present is ahead of V (members owed picks left): move
            # V on to the earliest start.
            while not (waiting[0][3].live and waiting[0][3].gen == waiting[0][2]):
                heapq.heappop(waiting)
            self._vbase = waiting[0][0]
            self._ticks = 0
        _, _, gen, entry = heapq.heappop(eligible)
        entry.count += 1
        heapq.heappush(waiting, (entry.start(), next(self._seq), gen, entry))
        self._ticks += 1
        self._maybe_compact()
        return entry.obj

    def _maybe_compact(self) -> None:
        if len(self._waiting) + len(self._eligible) > 2 * self._live + 32:
            self._compact()

    def _compact(self) -> None:
        self._waiting = [x for x in self._waiting if x[3].live and x[3].gen == x[2]]
        self._eligible = [x for x in self._eligible if x[3].live and x[3].gen == x[2]]
        heapq.heapify(self._waiting)
        heapq.heapify(self._eligible)

    def heap_size(self) -> int:
        return len(self._waiting) + len(self._eligible)


def _weigher(option: str, spec: object) -> Callable[[HasIndex], float]:
    """The ``socket_weights`` / ``stream_weights`` option as a function."""
    if spec is None:
        return lambda obj: 1.0
    if isinstance(spec, Mapping):
        table: dict[int, float] = {}
        for index, weight in spec.items():
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise TypeError(
                    f"{_NAME}: {option}= keys must be indices (ints >= 0), not {index!r}"
                )
            table[index] = positive_number(_NAME, f"{option}[{index}]", weight)
        return lambda obj: table.get(obj.index, 1.0)
    if callable(spec):
        function = spec

        def weigh(obj: HasIndex) -> float:
            return positive_number(_NAME, f"{option}({obj!r}) result", function(obj))

        return weigh
    raise TypeError(
        f"{_NAME}: {option}= must be a mapping of index to weight, a function, or None, "
        f"not {type(spec).__name__}"
    )


class WeightedRoundRobin(Policy):
    """Smooth weighted round-robin: each member's share of picks follows its weight.

    Receive: each message goes to a socket; transmit: each group to a stream;
    a member of weight ``w`` gets ``w / W`` of the picks (``W`` the total
    weight of the candidates), interleaved rather than in bursts: with weights
    5, 1, 1 the picks go ``a b a a c a a`` and repeat, never more than three
    ``a`` in a row (plain round-robin over a list with ``a`` five times would
    give ``a a a a a b c``).  At every point each member is within about one
    pick of its exact share.  This is the earliest-eligible-virtual-deadline
    schedule (stride scheduling with eligibility), O(log n) per pick; like
    nginx's smooth weighted round-robin it has no bursts, but it does not
    scan every member on each pick.

    A member that joins starts at the current virtual time: it gets its share
    from then on, with no burst to make up for the past and no wait.  A socket
    that was full (or disabled) and comes back resumes where it left off, or
    now if that is later, so a slow worker that fills up is not rushed
    afterwards.

    Options:
      socket_weights: Weights of the sockets: a mapping from ``sock.index`` to
        weight (indices not in it weigh 1), or a function ``sock -> weight``
        (called whenever the socket becomes a candidate).  Default: all 1.
      stream_weights: The same for streams (``stream.index``).

    A weight is a finite number > 0.
    """

    def __init__(
        self,
        *,
        socket_weights: Weights[KCMSocket] = None,
        stream_weights: Weights[AttachedStream] = None,
    ) -> None:
        self._socket_weight = _weigher("socket_weights", socket_weights)
        self._stream_weight = _weigher("stream_weights", stream_weights)
        self._rx: _Schedule[KCMSocket] = _Schedule()
        self._tx: _Schedule[AttachedStream] = _Schedule()

    # -- receive ------------------------------------------------------------

    def socket_added(self, sock: KCMSocket, /) -> None:
        self._rx.add(sock, self._socket_weight(sock))

    def socket_removed(self, sock: KCMSocket, /) -> None:
        self._rx.remove(sock)

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        return self._rx.pick()

    # -- transmit -----------------------------------------------------------

    def stream_added(self, stream: AttachedStream, /) -> None:
        self._tx.add(stream, self._stream_weight(stream))

    def stream_removed(self, stream: AttachedStream, /) -> None:
        self._tx.remove(stream, forget=True)  # a stream never comes back

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        return self._tx.pick()
