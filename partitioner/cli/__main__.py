"""`python -m partitioner.cli`: the same as the `partitioner` command."""

import sys

from partitioner.cli import main

sys.exit(main())
