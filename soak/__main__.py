"""``python -m soak``: see :mod:`soak.chaos`."""

from __future__ import annotations

import sys

from .chaos import main

sys.exit(main())
