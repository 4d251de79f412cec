"""Exit codes of lithos_knot: a protocol between the knot and the supervisor.

Owns the numbers only; imports nothing. K-43 gives the original's meanings; we
keep 0, 2 and 3 and move "setup failed" off 1 so that the supervisor can tell a
wrong config (back off, report it) from a knot that crashed (a Python traceback
exits 1, like the original's panic exited 101) and from a service that died (2).

  0   EXIT_NORMAL        the service's death was normal (K-42), or we got SIGTERM
  1   EXIT_KNOT_CRASHED  uncaught exception in the knot itself (a bug)
  2   EXIT_ABNORMAL      the service died abnormally (K-42 says it is a failure)
  3   EXIT_KILL_TIMEOUT  the service ignored SIGTERM for kill-timeout (K-41 step 6);
                         every process of the container is gone with the knot
  78  EXIT_SETUP_FAILED  a setup step failed (bad spec, mount, secrets, exec of the
                         service...); one line on stderr names the step, the path and
                         the config key. 78 is EX_CONFIG of sysexits.h.
"""

EXIT_NORMAL = 0
EXIT_KNOT_CRASHED = 1
EXIT_ABNORMAL = 2
EXIT_KILL_TIMEOUT = 3
EXIT_SETUP_FAILED = 78
