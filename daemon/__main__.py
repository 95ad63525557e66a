"""``python -m birdd.daemon`` is the ``birdd`` command."""

import sys

from .cli import main

sys.exit(main())
