"""``python -m fxai``: the ``fxai`` command."""

import sys

from .app.cli import main

sys.exit(main())
