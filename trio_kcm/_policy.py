"""The load-balancing policy protocol, and finding policies by name.

A policy is a strategy object the mux consults synchronously: on receive it
picks the KCM socket for each complete message, on transmit it picks the
stream for each group of messages (one message, or a batch).  Because a pick
is a plain call with no ``await``, it is atomic with respect to other tasks.

The mux keeps the *candidate sets* exact and tells the policy about every
change through the event methods, so a pick never has to scan or check
anything: a socket is a receive candidate while it is open, receive-enabled and
its receive queue is below ``receive_buffer_size``; a stream is a transmit
candidate while it is attached and healthy.  A pick must return one of the
current candidates (or ``None``: "none now"), and whatever it returns gets
the message(s) -- a pick is a delivery.

Events that let stateful, load- and latency-aware policies keep their own
bookkeeping:

* receive: :meth:`~Policy.socket_added`, :meth:`~Policy.socket_removed`,
  :meth:`~Policy.pick_socket` (a delivery), :meth:`~Policy.socket_drained`
  (bytes left a socket's queue), :meth:`~Policy.read_done` (the end of a read
  batch);
* transmit: :meth:`~Policy.stream_added`, :meth:`~Policy.stream_removed`
  (unattached or failed), :meth:`~Policy.pick_stream` (a group queued),
  :meth:`~Policy.written` (a group written, with the time it took),
  :meth:`~Policy.withdrawn` (a group withdrawn unwritten: it went stale),
  :meth:`~Policy.released` (a socket has nothing left queued or in flight on a
  stream).

Messages sent with :meth:`KCMSocket.send_to` name their stream themselves:
the policy is not asked, and hears nothing of them (they do count in
:attr:`AttachedStream.tx_queued_bytes`).

Cheap read-only views of the load are :attr:`KCMSocket.rx_queued_bytes` and
:attr:`AttachedStream.tx_queued_bytes`.

Policy code that raises is a bug: the exception propagates out of
:func:`open_mux`.  A policy object serves one mux at a time: giving it to a
second mux while the first is open raises :exc:`ValueError` (it would mix
the two muxes' sockets and streams).
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from ._errors import PolicyLoadError

if TYPE_CHECKING:
    from ._socket import KCMSocket
    from ._stream import AttachedStream

__all__ = ["ENTRY_POINT_GROUP", "Policy", "available_policies", "load_policy"]

#: The entry-point group policies are registered under.
ENTRY_POINT_GROUP = "trio_kcm.policies"


class Policy:
    """Base class of load-balancing policies.

    Subclass it and implement :meth:`pick_socket` and :meth:`pick_stream`; the
    event methods do nothing by default, override the ones you need.  Register
    the class (or any callable taking keyword options and returning a policy)
    under the ``trio_kcm.policies`` entry-point group to make it loadable by
    name.

    One object decides both directions when given as ``policy=``; given as
    ``rx_policy=`` or ``tx_policy=`` only that side's methods are called.

    Attributes:
      name: The name it is registered under (set by :func:`load_policy`).
      batch_affine: ``True`` promises that :meth:`pick_socket`, for the
        messages of one read of a stream, returns the socket it returned for
        the first one for as long as that socket stays a candidate, with no
        other effect (as ``batch-affinity`` does).  The mux then asks once per
        *run*: for the first message of a read, and again for the first
        message after the socket filled up; it delivers the messages in
        between without a call each.  ``False`` (the default): asked once per
        message.
    """

    name: str = ""
    batch_affine: ClassVar[bool] = False

    # -- receive side -------------------------------------------------------

    def socket_added(self, sock: KCMSocket, /) -> None:
        """``sock`` became a receive candidate (new, re-enabled, or has room again)."""

    def socket_removed(self, sock: KCMSocket, /) -> None:
        """``sock`` is no longer a receive candidate (full, disabled or closed)."""

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        """Choose the socket that receives ``message``.

        Args:
          stream: The stream the message was read from, or ``None`` for a
            message that is moving between sockets (its socket was closed or
            disabled) or was held while no socket had room.
          message: The whole message.

        Returns:
          One of the current receive candidates, which then gets the message;
          or ``None`` to hold it (the stream stops reading until a socket is
          added).

        """
        raise NotImplementedError

    def read_done(self, stream: AttachedStream | None, /) -> None:
        """The messages of one read of ``stream`` have all been picked for.

        The messages parsed from one read are a batch (the kernel's read pass);
        a batch-affine policy keeps them together.  ``stream`` is ``None`` after
        a run of moved or held messages.
        """

    def socket_drained(self, sock: KCMSocket, nbytes: int, /) -> None:
        """``nbytes`` left ``sock``'s receive queue (received, or moved away)."""

    # -- transmit side ------------------------------------------------------

    def stream_added(self, stream: AttachedStream, /) -> None:
        """``stream`` became a transmit candidate (it was attached)."""

    def stream_removed(self, stream: AttachedStream, /) -> None:
        """``stream`` is no longer a transmit candidate (failed or unattaching).

        Its unwritten messages are picked for again, one group at a time.
        """

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        """Choose the stream that writes a group of ``sock``'s messages.

        Args:
          sock: The socket that sent them.
          messages: The group: one message, or a batch that goes out together.
          nbytes: Their total size.

        Returns:
          One of the current transmit candidates, which then queues the group;
          or ``None`` to keep the group (and everything ``sock`` sends after
          it) waiting until a stream is added or released.

        """
        raise NotImplementedError

    def written(
        self, stream: AttachedStream, sock: KCMSocket, nbytes: int, seconds: float, /
    ) -> None:
        """A group of ``sock``'s, ``nbytes`` long, was written to ``stream``.

        ``seconds`` is the time from its pick to the end of its write.
        """

    def withdrawn(self, stream: AttachedStream, sock: KCMSocket, nbytes: int, /) -> None:
        """A group of ``sock``'s, ``nbytes`` long, picked for ``stream``, was withdrawn unwritten.

        It went stale in the stream's queue (the socket's ``time_to_live``,
        or its sender's deadline): it will never be :meth:`written`.  A
        policy that counts picks against writes counts this as well.
        """

    def released(self, stream: AttachedStream, sock: KCMSocket, /) -> None:
        """``sock`` has nothing left queued or in flight on ``stream``."""


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def available_policies() -> list[str]:
    """Return the names of the installed policies, sorted.

    These are the entry points of the ``trio_kcm.policies`` group: the
    built-ins (``round-robin``, ``batch-affinity``, ``least-queued``) and any a
    third-party distribution registers.  Nothing is imported.
    """
    return sorted(_entry_points())


def load_policy(name: str, /, **options: Any) -> Policy:
    """Build the policy registered as ``name``.

    Args:
      name: A name from :func:`available_policies`.
      **options: Passed to the policy's factory.

    Raises:
      PolicyLoadError: No policy has that name, or its plugin failed to
        import or to build (its exception is ``__cause__``).

    """
    eps = _entry_points()
    try:
        ep = eps[name]
    except KeyError:
        known = ", ".join(sorted(eps)) or "none"
        raise PolicyLoadError(name, f"no policy named {name!r} (installed: {known})") from None
    try:
        factory = ep.load()
    except Exception as exc:
        raise PolicyLoadError(
            name, f"policy {name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        policy = factory(**options)
    except Exception as exc:
        raise PolicyLoadError(
            name, f"policy {name!r} ({ep.value}) failed to build: {type(exc).__name__}: {exc}"
        ) from exc
    if not (
        callable(getattr(policy, "pick_socket", None))
        and callable(getattr(policy, "pick_stream", None))
    ):
        raise PolicyLoadError(
            name, f"policy {name!r} ({ep.value}) built {policy!r}, which is not a policy"
        )
    try:
        policy.name = name
    except AttributeError:  # pragma: no cover - a policy with __slots__ and no name
        pass
    return policy  # type: ignore[no-any-return]


def resolve_policy(spec: str | Policy) -> Policy:
    """Internal: a name or a policy object -> a policy object."""
    if isinstance(spec, str):
        return load_policy(spec)
    if not (
        callable(getattr(spec, "pick_socket", None))
        and callable(getattr(spec, "pick_stream", None))
    ):
        raise TypeError(
            f"a policy must be a name or have pick_socket() and pick_stream(), not {spec!r}"
        )
    return spec


def resolve_policies(
    policy: str | Policy, rx_policy: str | Policy | None, tx_policy: str | Policy | None
) -> tuple[Policy, Policy]:
    """Internal: ``open_mux``'s three policy arguments -> (receive, transmit) objects.

    One object for both sides when only ``policy`` is given (it is built once).
    """
    base = resolve_policy(policy) if rx_policy is None or tx_policy is None else None
    rx = resolve_policy(rx_policy) if rx_policy is not None else base
    tx = resolve_policy(tx_policy) if tx_policy is not None else base
    assert rx is not None and tx is not None
    return rx, tx


# Policy objects in use, by id: (the policy, the mux it serves, how many sides).
_bound: dict[int, tuple[Policy, object, int]] = {}
_bound_lock = threading.Lock()


@contextmanager
def bind_policy(policy: Policy, mux: object) -> Iterator[None]:
    """Internal: ``policy`` serves ``mux`` (one side or both) until the block ends.

    Raises:
      ValueError: ``policy`` serves another mux that is still open.

    """
    with _bound_lock:
        entry = _bound.get(id(policy))
        if entry is not None and entry[1] is not mux:
            raise ValueError(
                f"policy {policy!r} already serves another open mux; a policy object"
                " serves one mux at a time (make one per mux: load_policy(name), or a"
                " new instance)"
            )
        _bound[id(policy)] = (policy, mux, 1 if entry is None else entry[2] + 1)
    try:
        yield
    finally:
        with _bound_lock:
            _, _, count = _bound[id(policy)]
            if count == 1:
                del _bound[id(policy)]
            else:
                _bound[id(policy)] = (policy, mux, count - 1)
