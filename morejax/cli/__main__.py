"""`python -m morejax.cli ...` runs the same command line as `morejax ...`."""

import sys

from morejax.cli import main

sys.exit(main())
