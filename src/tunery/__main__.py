"""`python -m tunery` runs the command line."""

import sys

from tunery.cli import main

sys.exit(main())
