"""bench: lithos measured side by side with its peers (issue 10).

Run as root: `python3 -m bench.run [--quick] [--only spawn,many,memory,restart] [--n 100]`.
Every contender (a C floor compiled at bench time, the lithos knot spawned directly,
the whole lithos_tree path, util-linux unshare, bubblewrap and crun, plus two
what-ifs of the knot: without `site`, and forked from a pre-imported parent) builds
the same container: new mount, pid, uts and ipc namespaces, a read-only bind of a
busybox image as root, a tmpfs volume and /proc. The payload writes one byte as its
very first instruction; the harness times that byte. Nothing here is imported by
lithos itself; results and method are in BENCHMARKS.md. bench_protocol.py (the
protocol layer's costs) is separate.
"""
