"""``consistent-hash``: key affinity on a hash ring with virtual nodes."""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar

from trio_kcm import Policy

from ._common import check_choice, is_full

if TYPE_CHECKING:
    from trio_kcm import AttachedStream, KCMSocket

__all__ = ["ConsistentHash", "Key", "hash_key"]

T = TypeVar("T")

#: What a key function may return.
Key: TypeAlias = bytes | bytearray | memoryview | str | int

_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_POINT_PERSON = b"trio-kcm-ring"


def hash_key(key: Key) -> int:
    """The 64-bit ring position of a key: BLAKE2b, the same in every process.

    ``bytes``-like keys are hashed as they are, ``str`` as UTF-8, ``int`` as
    its decimal digits (so ``7`` and ``"7"`` land together).  Python's own
    ``hash()`` is salted per process, so it is not used: two muxes in two
    processes agree on where a key goes.
    """
    if isinstance(key, str):
        data: bytes | bytearray | memoryview = key.encode()
    elif isinstance(key, (bytes, bytearray, memoryview)):
        data = key
    elif isinstance(key, int) and not isinstance(key, bool):
        data = b"%d" % key
    else:
        raise TypeError(
            "consistent-hash: a key must be bytes, str or int, "
            f"not {type(key).__name__} (check the key= function)"
        )
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class _Ring(Generic[T]):
    """Members on a ring of 64-bit positions, ``replicas`` points each.

    A member is known by its *slot* (the socket's or stream's ``index``), and
    its points depend on the slot alone, so they are the same in every process
    and a member that leaves and comes back (or a new one given the same
    index) takes back exactly the same arcs.  A key belongs to the first point
    at or after its hash, going round.

    ``entries`` is one sorted list of ``point << 32 | slot``: one bisect finds
    a key's point and its owner at once, O(log(n * replicas)).  Membership
    changes are applied to it at the next lookup, all together: one change
    costs O(n * replicas) (a merge, or a filter), and a crowd of sockets made
    in a row costs one sort, not one rebuild each.
    """

    __slots__ = ("_added", "_pending", "_removed", "_replicas", "entries", "members")

    def __init__(self, replicas: int) -> None:
        self._replicas = replicas
        self.entries: list[int] = []
        self.members: dict[int, T] = {}
        self._added: list[int] = []  # points of new members, not in entries yet
        self._pending: set[int] = set()  # their slots
        self._removed: set[int] = set()  # slots whose points must leave entries

    def add(self, slot: int, member: T) -> None:
        if not 0 <= slot <= _SLOT_MASK:  # pragma: no cover - indices are small
            raise ValueError(f"consistent-hash: index {slot} is out of range")
        if slot in self.members:
            self.members[slot] = member  # same arcs, new holder
            return
        self.members[slot] = member
        if slot in self._removed:
            self._removed.discard(slot)  # its points never left
            return
        self._pending.add(slot)
        self._added += [
            int.from_bytes(
                hashlib.blake2b(b"%d-%d" % (slot, r), digest_size=8, person=_POINT_PERSON).digest(),
                "big",
            )
            << _SLOT_BITS
            | slot
            for r in range(self._replicas)
        ]

    def remove(self, slot: int) -> None:
        if self.members.pop(slot, None) is None:
            return
        if slot in self._pending:
            self._pending.discard(slot)
            self._added = [e for e in self._added if e & _SLOT_MASK != slot]
        else:
            self._removed.add(slot)

    def _apply(self) -> None:
        if self._removed:
            removed = self._removed
            self.entries = [e for e in self.entries if e & _SLOT_MASK not in removed]
            removed.clear()
        if self._added:
            # A sorted run and an unsorted tail: timsort sorts the tail and
            # merges, O(n * replicas + new log new).
            self.entries = sorted(self.entries + self._added)
            self._added = []
            self._pending.clear()

    def locate(self, point: int) -> int:
        """The position in ``entries`` of the first point at or after ``point``."""
        if self._added or self._removed:
            self._apply()
        entries = self.entries
        i = bisect_left(entries, point << _SLOT_BITS)
        return i if i < len(entries) else 0

    def member_at(self, pos: int) -> T:
        return self.members[self.entries[pos] & _SLOT_MASK]


def _whole(message: bytes) -> bytes:
    return message


class ConsistentHash(Policy):
    """Key affinity: a message's key always reaches the same socket (a hash ring).

    Each message has a *key*, computed by the ``key`` option from its bytes;
    by default the key is the whole message, so that only identical messages
    are kept together -- give a ``key`` to make it useful.  Keys and members
    (sockets on receive, streams on transmit) are placed on a ring of 64-bit
    positions, each member at ``replicas`` pseudo-random points derived from
    its ``index``; a key goes to the member owning the first point at or after
    the key's hash.  So the same key always reaches the same socket while the
    membership holds, and when a member joins or leaves, only the keys on its
    arcs move (about 1/n of them): the keys of every other member stay put.
    Positions depend on nothing but the key and the indices, so separate
    muxes (or processes) with the same sockets agree.  Picks are
    O(log(n * replicas)).

    **Full sockets keep their keys.**  The mux stops offering a socket whose
    receive queue is full (``socket_removed``) until it has room again, but a
    full socket stays a member of the ring: its keys are not handed to
    another socket just because its worker is behind.  With
    ``when_full="wait"`` (the default) a message whose owner is full is held:
    ``pick_socket`` returns ``None``, the mux stops reading that stream until
    a socket has room again, and delivery resumes where it stopped -- TCP
    backpressure, like a Kafka partition whose consumer lags.  Note that it
    holds up the messages behind it on the same stream, whatever their keys.
    With ``when_full="next"`` the message goes instead to the next member
    round the ring that has room (affinity gives way to progress; the keys
    return to their owner once it has room).  That walk is O(1) expected
    while most sockets have room, and at worst O(n * replicas).  A socket
    that is receive-disabled or closed *leaves* the ring, and its keys move to
    the others; re-enabled, it takes them back.

    Transmit: each group goes to the stream that owns its key (the key of the
    group's first message; or, with ``tx_key="socket"``, the sending socket's
    index, so that everything one socket sends goes out on one stream and
    stays in order).  A stream that fails or is unattached leaves the ring.

    Options:
      key: How to get a message's key: a function ``message -> bytes | str |
        int``, or a ``slice`` of the message's bytes (``slice(4, 12)``: eight
        bytes after a 4-byte header).  Default: the whole message.
      replicas: Points per member (default 160); more spread keys more evenly.
      when_full: ``"wait"`` (default) or ``"next"``, as above.
      tx_key: ``"message"`` (default) or ``"socket"``, as above.
    """

    def __init__(
        self,
        *,
        key: Callable[[bytes], Key] | slice | None = None,
        replicas: int = 160,
        when_full: str = "wait",
        tx_key: str = "message",
    ) -> None:
        if key is None:
            self._key: Callable[[bytes], Key] = _whole
        elif isinstance(key, slice):
            part = key
            self._key = lambda message: message[part]
        elif callable(key):
            self._key = key
        else:
            raise TypeError(
                "consistent-hash: key= must be a function of the message, a slice, or None, "
                f"not {type(key).__name__}"
            )
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise TypeError(
                f"consistent-hash: replicas= must be an int, not {type(replicas).__name__}"
            )
        if not 1 <= replicas <= 10_000:
            raise ValueError(f"consistent-hash: replicas= must be 1 to 10000, not {replicas}")
        self._spill = check_choice("consistent-hash", "when_full", when_full, ("wait", "next"))
        self._spill_next = self._spill == "next"
        self._tx_by_socket = (
            check_choice("consistent-hash", "tx_key", tx_key, ("message", "socket")) == "socket"
        )
        self._rx_ring: _Ring[KCMSocket] = _Ring(replicas)
        self._rx_live: set[KCMSocket] = set()
        self._tx_ring: _Ring[AttachedStream] = _Ring(replicas)

    # -- receive ------------------------------------------------------------

    def socket_added(self, sock: KCMSocket, /) -> None:
        ring = self._rx_ring
        old = ring.members.get(sock.index)
        if old is not sock:
            if old is not None:
                # An index is only reused once its socket closed: a closed
                # socket that was full, never evicted (see pick_socket).
                self._rx_live.discard(old)
            ring.add(sock.index, sock)
        self._rx_live.add(sock)

    def socket_removed(self, sock: KCMSocket, /) -> None:
        self._rx_live.discard(sock)
        if not is_full(sock):  # disabled or closed: it leaves the ring
            self._leave(sock)

    def _leave(self, sock: KCMSocket) -> None:
        if self._rx_ring.members.get(sock.index) is sock:
            self._rx_ring.remove(sock.index)

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        live = self._rx_live
        if not live:
            return None
        ring = self._rx_ring
        point = hash_key(self._key(message))
        while True:
            pos = ring.locate(point)
            owner = ring.member_at(pos)
            if owner in live:
                return owner
            if is_full(owner):
                break
            # A member that is neither a candidate nor full was disabled or
            # closed while it was full: the mux told us only that it filled
            # up, then moved its queue away -- and those messages are picked
            # for right away, so this runs at once.  It leaves the ring.
            self._leave(owner)
        if not self._spill_next:
            return None
        entries = ring.entries
        members = ring.members
        n = len(entries)
        for step in range(1, n):
            member = members[entries[(pos + step) % n] & _SLOT_MASK]
            if member in live:
                return member
        return None  # pragma: no cover - every candidate is on the ring

    # -- transmit -----------------------------------------------------------

    def stream_added(self, stream: AttachedStream, /) -> None:
        self._tx_ring.add(stream.index, stream)

    def stream_removed(self, stream: AttachedStream, /) -> None:
        if self._tx_ring.members.get(stream.index) is stream:
            self._tx_ring.remove(stream.index)

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        ring = self._tx_ring
        if not ring.members:
            return None
        key: Key = sock.index if self._tx_by_socket else self._key(messages[0])
        return ring.member_at(ring.locate(hash_key(key)))
