"""Issue 6 end to end: the supervisor's decisions seen from outside (E-11..E-20,
decision 4) and its privileges. Times are measured by the test's own clock
between log lines it waits for (no sleeps)."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from protocol import messages as m

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

TRAP = """
executable: /bin/sh
arguments:
  - -c
  - |
    trap 'echo "got-TERM $LITHOS_NAME"; kill $!; exit 0' TERM
    echo "up $LITHOS_NAME @{word}"
    sleep 1000 &
    wait
user-id: 1000
group-id: 1000
restart-timeout: 0
kill-timeout: 2
variables:
  word: !Name
"""
STUBBORN = """
executable: /bin/sh
arguments: [-c, "trap '' TERM; exec sleep 1000"]
user-id: 1000
group-id: 1000
restart-timeout: 0
kill-timeout: 1
"""


def exits(code: int, after: float) -> str:
    return f"""
executable: /bin/sh
arguments: [-c, "sleep {after}; exit {code}"]
user-id: 1000
group-id: 1000
normal-exit-codes: [42]
restart-timeout: 2
"""


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}


def reload(lithos) -> tuple[str, ...]:
    with lithos.control() as ch:
        ch.send(m.Reload(), 3)
        reply = ch.recv().message
    assert isinstance(reply, m.ReloadOk), reply
    return reply.config_errors


def test_exit_codes_restart_timeout_and_privileges(lithos) -> None:
    lithos.image("x.v1", {"ok.yaml": exits(42, 0.3), "zero.yaml": exits(0, 0.3)})
    lithos.sandbox("x", "", "ok: {image: x.v1, config: /config/ok.yaml}\n"
                   "zero: {image: x.v1, config: /config/zero.yaml}\n")  # fmt: skip
    lithos.start()
    # The supervisor runs unprivileged: not root, no capabilities, NoNewPrivs.
    st = proc_status(lithos.supervisor_pid())
    assert all(int(u) != 0 for u in st["Uid"].split())
    assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
    assert st["NoNewPrivs"] == "1"
    # E-11: with normal-exit-codes [42], 42 is normal and 0 is a failure (the
    # knot judges its service and exits 0 for normal, 2 for abnormal, K-42).
    lithos.wait_for(r"x/ok\.0: RUNNING -> BACKOFF \(pid \d+ exited with code 0, normal")
    lithos.wait_for(r"x/zero\.0: RUNNING -> BACKOFF \(pid \d+ exited with code 2, unexpected")
    # E-13: restart-timeout 2 counts from the previous start, not the death.
    lithos.wait_for(r"x/ok\.0: RUNNING -> BACKOFF", start=lithos.mark())
    lithos.wait_for(r"x/ok\.0: STARTING -> RUNNING", start=lithos.mark())
    t0 = time.monotonic()
    mark = lithos.mark()
    line = lithos.wait_for(r"x/ok\.0: RUNNING -> BACKOFF .*restart in ([\d.]+)s, "
                           r"restart-timeout 2s", start=mark)  # fmt: skip
    assert 1.0 < float(line.group(1)) < 1.95  # ran ~0.3 s: waits the rest of 2 s
    lithos.wait_for(r"x/ok\.0: BACKOFF -> STARTING", start=mark)
    between = time.monotonic() - t0
    # The lower bound is E-13; the upper one only says it did not wait a whole
    # extra period (loose: the 2 cores here are shared with other root suites).
    assert 1.7 < between < 3.9, between


def test_reload_restarts_only_changed_entry_and_lowering_retires(lithos) -> None:
    lithos.image("y.v1", {"trap.yaml": TRAP, "stub.yaml": STUBBORN})
    procs = ("a: {{image: y.v1, config: /config/trap.yaml, instances: 2, "
             "variables: {{word: {a}}}}}\n"
             "b: {{image: y.v1, config: /config/trap.yaml, instances: 2, "
             "variables: {{word: same}}}}\n"
             "s: {{image: y.v1, config: /config/stub.yaml, instances: {s}}}\n")  # fmt: skip
    lithos.sandbox("y", "", procs.format(a="one", s=2))
    lithos.start()
    for name in ("y/a.0", "y/a.1", "y/b.0", "y/b.1"):
        lithos.wait_stdio("y", rf"up {name} ")
    lithos.wait_stdio("y", r'Starting "y/s\.1"')
    before = lithos.running()
    # E-18 via a control-socket Reload: only a's instances restart, each with
    # exactly one SIGTERM (the app counts them in the stdio log).
    mark = lithos.mark()
    lithos.write("processes/y.yaml", procs.format(a="two", s=2))
    assert reload(lithos) == ()
    for name in ("y/a.0", "y/a.1"):
        lithos.wait_stdio("y", rf"up {name} two")
    lithos.wait_for(r"supervisor ready:", start=mark)
    after = lithos.running()
    assert after["y/a.0"] != before["y/a.0"] and after["y/a.1"] != before["y/a.1"]
    for name in ("y/b.0", "y/b.1", "y/s.0", "y/s.1"):
        assert after[name] == before[name], name
    log = lithos.stdio_log("y")
    assert log.count("got-TERM y/a.0\n") == 1 and log.count("got-TERM y/a.1\n") == 1
    assert "got-TERM y/b." not in log
    assert lithos.count(r"Forked y/", mark) == 2
    # The same through SIGQUIT (a re-exec re-reads the configs).
    mark = lithos.mark()
    lithos.write("processes/y.yaml", procs.format(a="three", s=2))
    os.kill(lithos.pid, signal.SIGQUIT)
    for name in ("y/a.0", "y/a.1"):
        lithos.wait_stdio("y", rf"up {name} three")
    lithos.wait_for(r"supervisor ready:", start=mark)
    again = lithos.running()
    for name in ("y/b.0", "y/b.1", "y/s.0", "y/s.1"):
        assert again[name] == before[name], name
    log = lithos.stdio_log("y")
    assert log.count("got-TERM y/a.0\n") == 2 and log.count("got-TERM y/a.1\n") == 2
    assert lithos.count(r"Forked y/", mark) == 2
    # E-19 + E-14: lowering s to 1 retires only s.1, which ignores SIGTERM: the
    # knot kills it after kill-timeout (exit 3); its state dir goes.
    mark = lithos.mark()
    lithos.write("processes/y.yaml", procs.format(a="three", s=1))
    t0 = time.monotonic()
    assert reload(lithos) == ()
    lithos.wait_for(rf"Container y/s\.1 \(pid: {before['y/s.1']}\) exited with code 3",
                    start=mark)  # fmt: skip
    assert time.monotonic() - t0 < 10  # killed at kill-timeout, not left running
    lithos.wait_for(r"supervisor ready:", start=mark)
    final = lithos.running()
    assert "y/s.1" not in final
    assert final["y/s.0"] == before["y/s.0"]
    assert final["y/b.0"] == before["y/b.0"]
    assert not (lithos.runtime / "state" / "y" / "s.1").exists()
    assert lithos.count(r"Forked y/", mark) == 0


def test_broken_config_keeps_old_instances(lithos) -> None:
    lithos.image("z.v1", {"trap.yaml": TRAP})
    good = "a: {image: z.v1, config: /config/trap.yaml, variables: {word: w}}\n"
    lithos.sandbox("z", "", good)
    lithos.start()
    lithos.wait_stdio("z", r"up z/a\.0 w")
    before = lithos.running()
    # Decision 4: a process config that does not load keeps what runs.
    mark = lithos.mark()
    lithos.write("processes/z.yaml", "a: {image: z.v1, config: [broken\n")
    errors = reload(lithos)
    assert errors and "processes/z.yaml" in errors[0]
    lithos.wait_for(r"sandbox z: config failed to load: .*processes/z\.yaml", start=mark)
    lithos.wait_for(r"supervisor ready:", start=mark)
    assert lithos.running() == before
    # A container config that does not load (undeclared variable) keeps it too.
    mark = lithos.mark()
    lithos.image("z.v2", {"trap.yaml": TRAP.replace("@{word}", "@{nope}")})
    lithos.write("processes/z.yaml", good.replace("z.v1", "z.v2"))
    reload(lithos)
    lithos.wait_for(r"z/a: config failed to load: .*nope", start=mark)
    lithos.wait_for(r"supervisor ready:", start=mark)
    assert lithos.running() == before
    assert "got-TERM z/" not in lithos.stdio_log("z")
    assert re.search(r"Forked z/", "\n".join(lithos.lines_since(mark))) is None


def test_refused_start_is_retried_at_most_once_a_second(lithos) -> None:
    # The sandbox's bridge does not exist: only the broker's start finds that
    # out. With restart-timeout 0 the retries must still not spin.
    cfg = exits(0, 1).replace("restart-timeout: 2", "restart-timeout: 0")
    lithos.image("r.v1", {"v.yaml": cfg})
    lithos.sandbox("r", "bridged-network: {bridge: lt-nosuchbr, network: 10.213.0.0/24}\n",
                   "v: {image: r.v1, config: /config/v.yaml, ip-addresses: [10.213.0.2]}\n")
    lithos.start(wait_ready=False)
    refused = r"r/v\.0: STARTING -> BACKOFF \(start refused: .*lt-nosuchbr"
    lithos.wait_for(refused)
    t0 = time.monotonic()
    for _ in range(2):
        lithos.wait_for(refused, start=lithos.mark())
    assert time.monotonic() - t0 > 1.5
    assert not (lithos.runtime / "state" / "r").exists()
