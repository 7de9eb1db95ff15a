"""``python -m trio_kcm``: the ``trio-kcm`` command."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
