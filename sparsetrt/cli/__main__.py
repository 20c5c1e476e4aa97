"""`python -m sparsetrt.cli` = the `sparsetrt` console script."""

import sys

from sparsetrt.cli import main

sys.exit(main())
