"""``python -m birdd.daemon`` is the ``birdd`` command."""

import sys

from birdd.daemon.app.cli import main

sys.exit(main())
