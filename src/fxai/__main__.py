"""``python -m fxai``: the ``fxai`` command."""

import sys

from .cli import main

sys.exit(main())
