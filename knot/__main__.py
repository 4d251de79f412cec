"""`python3 -m knot --name ...`: the knot's entry point (see knot.main)."""

import sys

from knot.main import main

if __name__ == "__main__":
    sys.exit(main())
