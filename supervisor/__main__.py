"""`python -m supervisor`: the process lithos_tree starts (never run by hand)."""

import sys

from supervisor.main import main

sys.exit(main())
