"""`python3 -m knot.lithos_knot --name ...`: the entry point knot.spawn execs.

Same as `python3 -m knot`, but the command line then reads
`... knot.lithos_knot --name SANDBOX/PROC.N ...`, so the manual's
`pgrep -f 'lithos_knot --name SANDBOX/PROC.N'` finds the container's pid 1,
as it does with the installed `lithos_knot` console script.
"""

import sys

from knot.main import main

if __name__ == "__main__":
    sys.exit(main())
