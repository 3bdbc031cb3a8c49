"""``python -m editbench.report``: see :mod:`editbench.report.cli`."""

import sys

from editbench.report.cli import main

sys.exit(main())
