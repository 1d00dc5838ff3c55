"""`python -m nitro` is the `nitro` command."""

import sys

from nitro.cli import main

sys.exit(main())
