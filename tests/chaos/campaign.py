"""Long chaos campaign: `python3 -m tests.chaos.campaign --iterations 1000 --seconds 3600`.

Runs the storm of tests/chaos/storm.py (`--containers`, 200 by default: crashing
services, lithos_switch config switches, the supervisor killed -9 at random
moments, lithos_tree SIGQUIT between rounds) until
`--iterations` supervisor kills and `--sigquits` re-execs are done or `--seconds`
have passed, checking the invariants after every round, then SIGTERMs the tree and
checks nothing is left. Prints progress, then the figures and every failure; exits
0 only with no failure and both targets met. Needs root; run from the repo root.
Reproduce a run with `--seed N` (or LITHOS_CHAOS_SEED=N).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tests.chaos.storm import Layout, Storm, choose_seed
from tests.chaos.treefix import destroy, make_tree


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tests.chaos.campaign", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--iterations", type=int, default=1000, help="supervisor kills to do")
    p.add_argument("--sigquits", type=int, default=100, help="lithos_tree re-execs to do")
    p.add_argument("--seconds", type=float, default=3600.0, help="time bound of the storm")
    p.add_argument("--kills-per-round", type=int, default=3,
                   help="most kills between two SIGQUITs (the back-off grows with each)")
    p.add_argument("--containers", type=int, default=200,
                   help="configured instances (at least 30; the CI test runs 30)")
    p.add_argument("--switch-chance", type=float, default=0.5,
                   help="chance that a round has a lithos_switch among its kills")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("campaign: needs root (it runs a real lithos_tree)", file=sys.stderr)
        return 2
    try:
        layout = Layout.for_containers(args.containers)
    except ValueError as e:
        print(f"campaign: {e}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else choose_seed()
    print(f"campaign: seed {seed}; {layout.containers} containers ({layout}); target "
          f"{args.iterations} kills, {args.sigquits} SIGQUITs, at most {args.seconds:.0f}s",
          flush=True)  # fmt: skip
    started = time.monotonic()
    failures: list[str] = []
    lithos = make_tree("campaign")
    storm = Storm(lithos, seed, layout, args.switch_chance)
    figures = storm.figures
    try:
        storm.build()
        storm.start()
        deadline = started + args.seconds
        while (figures.kills < args.iterations or figures.sigquits < args.sigquits) and \
                time.monotonic() < deadline:  # fmt: skip
            try:
                storm.round(args.kills_per_round)
            except AssertionError as e:  # a wait timed out: the tree is stuck; stop here
                failures.append(f"round {figures.rounds + 1}: {e}".splitlines()[0])
                print("campaign: the tree's last 80 log lines:", flush=True)
                for line in lithos.log.lines[-80:]:
                    print(f"  | {line}", flush=True)
                break
            if figures.rounds % 10 == 0:
                print(f"  {time.monotonic() - started:7.0f}s  {figures.line()}", flush=True)
        failures = figures.failures + failures
        failures += [f"final: {problem}" for problem in storm.final_stop()]
    except KeyboardInterrupt:
        failures = figures.failures + failures + ["interrupted"]
    finally:
        destroy(lithos)
    elapsed = time.monotonic() - started
    met = figures.kills >= args.iterations and figures.sigquits >= args.sigquits
    for failure in failures:
        print(f"FAILURE {failure}")
    print(f"iterations (supervisor kills): {figures.kills}; SIGQUITs: {figures.sigquits}; "
          f"rounds: {figures.rounds}; config switches: {figures.switches}; "
          f"containers: {layout.containers}; failures: {len(failures)}; {elapsed:.0f}s; "
          f"targets {'met' if met else 'NOT met'}; seed {seed}", flush=True)  # fmt: skip
    return 0 if met and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
