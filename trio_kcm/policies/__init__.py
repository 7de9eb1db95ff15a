"""The built-in load-balancing policies, one module each.

They are registered under the ``trio_kcm.policies`` entry-point group in
trio-kcm's own ``pyproject.toml``, exactly as a third party registers its own,
and are normally loaded by name (``policy="round-robin"``).
"""

from .batch_affinity import BatchAffinity
from .least_queued import LeastQueued
from .round_robin import RoundRobin

__all__ = ["BatchAffinity", "LeastQueued", "RoundRobin"]
