"""``python -m rdna1shim ...``: the same command line as the ``rdna1shim`` script."""

import sys

from .cli import main

sys.exit(main())
