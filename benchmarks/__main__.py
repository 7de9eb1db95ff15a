"""``python -m benchmarks``: see :mod:`benchmarks._runner`."""

from __future__ import annotations

import sys

from ._runner import main

sys.exit(main())
