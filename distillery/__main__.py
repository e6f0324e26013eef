"""`python -m distillery ...` = the `distillery` command."""

import sys

from distillery.cli import main

sys.exit(main())
