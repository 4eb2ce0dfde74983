"""``python -m cachewise``: the console script (``cli``): operations commands and the demo."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
