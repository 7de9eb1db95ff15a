"""More load-balancing policies for trio-kcm, registered by entry points only.

``trio_kcm`` never imports this package: installing the distribution
registers the policies under the ``trio_kcm.policies`` entry-point group,
and ``trio_kcm.open_mux(policy="p2c")`` (or ``trio_kcm.load_policy("p2c",
seed=1)``) finds them there, exactly as it would find a third party's.

=========================  ==================================================
``p2c``                    :class:`PowerOfTwoChoices`: two random candidates,
                           the less loaded
``peak-ewma``              :class:`PeakEwma`: two random candidates, the lower
                           latency x outstanding
``consistent-hash``        :class:`ConsistentHash`: a message's key always
                           reaches the same socket
``weighted-round-robin``   :class:`WeightedRoundRobin`: smooth turns in
                           proportion to weights
=========================  ==================================================
"""

from .consistent_hash import ConsistentHash
from .p2c import PowerOfTwoChoices
from .peak_ewma import PeakEwma
from .weighted_round_robin import WeightedRoundRobin

__all__ = ["ConsistentHash", "PeakEwma", "PowerOfTwoChoices", "WeightedRoundRobin"]
__version__ = "0.1.0.dev0"
