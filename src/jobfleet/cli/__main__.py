"""``python -m jobfleet.cli``: the same as the ``jobfleet`` command."""

import sys

from jobfleet.cli import main

sys.exit(main())
