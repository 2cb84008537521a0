"""``python -m pyralog``: the ``pyralog`` command (how ``pyralog up`` starts its nodes, so
they run on the same interpreter whatever is on PATH)."""

import sys

from pyralog.cli.main import main

sys.exit(main())
