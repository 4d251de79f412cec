"""bench: lithos measured side by side with its peers (issue 10).

Run as root: `python3 -m bench.run [--quick] [--only spawn,many,memory,restart] [--n 100]`.
Every contender (a C floor compiled at bench time, util-linux unshare, bubblewrap,
crun, and the lithos knot) builds the same container: new mount, pid, uts and ipc
namespaces, a read-only bind of a busybox image as root, a tmpfs volume and /proc.
The payload writes one byte to its fd 3 as its very first instruction; the harness
times that byte. Nothing here is imported by lithos itself; see BENCHMARKS.md.
"""
