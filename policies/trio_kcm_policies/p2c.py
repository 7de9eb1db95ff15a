"""``p2c``: the power of two random choices, on queue length."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from trio_kcm import Policy

from ._common import Candidates, make_rng

if TYPE_CHECKING:
    from trio_kcm import AttachedStream, KCMSocket

__all__ = ["PowerOfTwoChoices"]


class PowerOfTwoChoices(Policy):
    """Two random candidates, the less loaded of them: power of two choices.

    Receive: each message goes to whichever of two randomly drawn receive
    candidates has fewer bytes queued (``rx_queued_bytes``).  Transmit: each
    group goes to whichever of two randomly drawn streams has fewer bytes
    queued and not yet written (``tx_queued_bytes``).  The two are distinct
    whenever there are two candidates or more; on a tie the first drawn wins.

    Drawing two and keeping the better one spreads load almost as evenly as
    always taking the least loaded (the maximum load is exponentially closer
    to the mean than with one random choice), at O(1) per pick and with no
    herding: many muxes reading the same stale loads do not all pile onto the
    same target.

    Options:
      seed: Seed for a private ``random.Random`` (makes the picks repeatable).
      rng: A ``random.Random`` to draw from instead (not with ``seed``).
    """

    def __init__(self, *, seed: int | str | bytes | None = None, rng: random.Random | None = None):
        self._rng = make_rng("p2c", seed, rng)
        self._rx: Candidates[KCMSocket] = Candidates()
        self._tx: Candidates[AttachedStream] = Candidates()

    # -- receive ------------------------------------------------------------

    def socket_added(self, sock: KCMSocket, /) -> None:
        self._rx.add(sock)

    def socket_removed(self, sock: KCMSocket, /) -> None:
        self._rx.discard(sock)

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        pair = self._rx.two(self._rng)
        if pair is None:
            return None
        a, b = pair
        return b if b.rx_queued_bytes < a.rx_queued_bytes else a

    # -- transmit -----------------------------------------------------------

    def stream_added(self, stream: AttachedStream, /) -> None:
        self._tx.add(stream)

    def stream_removed(self, stream: AttachedStream, /) -> None:
        self._tx.discard(stream)

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        pair = self._tx.two(self._rng)
        if pair is None:
            return None
        a, b = pair
        return b if b.tx_queued_bytes < a.tx_queued_bytes else a
