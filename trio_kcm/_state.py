"""The life of an attached stream: its phases, and every transition between them.

This file is the whole of the rules; ``_lifecycle.py`` moves a stream from
phase to phase only through :func:`transition`, which refuses anything not in
:data:`TRANSITIONS`.  No I/O here: ``tests/test_state.py`` checks the table.

::

                 +--------- stall / resume ---------+
                 v                                  v
    attach -> ACTIVE <----------------------------> STALLED
                 |  \\                              /  |
                 |   +-------> UNATTACHING <-------+   |
                 |              |        |             |
                 |   unattach   |        | write done  |
                 |   cancelled  |        v             |
                 +----> FAILED <+     UNATTACHED       +--> CLOSED
                           |          (handed back)         (closed by the mux,
                           v                                 as it closed)
                       DISCARDED
           (closed by auto_close, or handed back by unattach)

ACTIVE, STALLED and UNATTACHING may all also go to FAILED (a read or a write
failed, the parser refused a header, a message outlasted assembly_timeout) and
to CLOSED (the mux closed or died with the stream healthy).  UNATTACHED,
DISCARDED and CLOSED are final: the stream has left the mux (it is
*released*).
"""

from __future__ import annotations

import enum

from ._stats import StreamState

__all__ = ["HEALTHY", "PUBLIC", "RELEASED", "TRANSITIONS", "Phase", "transition"]


class Phase(enum.Enum):
    """Where an attached stream is in its life (internal; see :data:`PUBLIC`)."""

    #: Attached and healthy: read from, and given messages by the transmit policy.
    ACTIVE = "active"
    #: Healthy, but its write has made no progress for ``tx_stall_timeout``:
    #: still read from, not given new messages until the write completes.
    STALLED = "stalled"
    #: The application is unattaching it: not given new messages, its reader
    #: stopping, a write in progress allowed to finish.
    UNATTACHING = "unattaching"
    #: Handed back, open, by :meth:`Mux.unattach`.
    UNATTACHED = "unattached"
    #: It failed; its tasks end; it stays in the mux until released.
    FAILED = "failed"
    #: Failed and released: closed by the mux (``auto_close``), or handed back
    #: by :meth:`Mux.unattach`.
    DISCARDED = "discarded"
    #: Healthy when the mux closed (or died): the mux closed it.
    CLOSED = "closed"


_HEALTHY_EXITS = frozenset({Phase.FAILED, Phase.CLOSED})

#: Every allowed move: from a phase, to the phases it may go to.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.ACTIVE: _HEALTHY_EXITS | {Phase.STALLED, Phase.UNATTACHING},
    Phase.STALLED: _HEALTHY_EXITS | {Phase.ACTIVE, Phase.UNATTACHING},
    Phase.UNATTACHING: _HEALTHY_EXITS | {Phase.UNATTACHED},
    Phase.FAILED: frozenset({Phase.DISCARDED}),
    Phase.UNATTACHED: frozenset(),
    Phase.DISCARDED: frozenset(),
    Phase.CLOSED: frozenset(),
}

#: Phases in which the stream still carries traffic (its tasks may run).
HEALTHY = frozenset({Phase.ACTIVE, Phase.STALLED, Phase.UNATTACHING})

#: Final phases: the stream has left the mux.
RELEASED = frozenset({Phase.UNATTACHED, Phase.DISCARDED, Phase.CLOSED})

#: What :attr:`AttachedStream.state` shows for each phase.  A stream the mux
#: closed as it closed keeps ``"active"`` (its statistics are final then), a
#: failed one stays ``"failed"`` after it was released.
PUBLIC: dict[Phase, StreamState] = {
    Phase.ACTIVE: StreamState.ACTIVE,
    Phase.STALLED: StreamState.ACTIVE,
    Phase.UNATTACHING: StreamState.ACTIVE,
    Phase.UNATTACHED: StreamState.UNATTACHED,
    Phase.FAILED: StreamState.FAILED,
    Phase.DISCARDED: StreamState.FAILED,
    Phase.CLOSED: StreamState.ACTIVE,
}


def transition(old: Phase, new: Phase) -> Phase:
    """Return ``new`` if a stream may move from ``old`` to it; else raise.

    Raises:
      RuntimeError: The move is not in :data:`TRANSITIONS` (a bug of ours).

    """
    if new not in TRANSITIONS[old]:
        raise RuntimeError(f"internal error: a stream cannot go from {old.name} to {new.name}")
    return new
