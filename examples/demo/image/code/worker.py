"""Demo worker: counts its starts in a Persistent volume and uses a secret."""

import os
import signal
import sys

count_file = "/data/starts"
try:
    with open(count_file) as f:
        starts = int(f.read() or 0) + 1
except FileNotFoundError:
    starts = 1
with open(count_file, "w") as f:
    f.write(str(starts))
greeting = os.environ.get("GREETING", "(no secret)")
print(f"{os.environ['LITHOS_NAME']}: start #{starts}; secret has {len(greeting)} chars",
      flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.pause()
