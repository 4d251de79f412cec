"""Bad inputs: one clear line on stderr, EXIT_SETUP_FAILED, nothing left mounted on the host.

(The env fixture compares the host's mountinfo before and after every test.)
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from knot.exitcodes import EXIT_SETUP_FAILED
from knot.spec import HostsFile, Volume, VolumeKind

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root


def one_line(knot) -> str:
    text = knot.stderr_text()
    assert text.count("\n") == 1 and text.startswith("knot[test/svc.0]: "), text
    assert "Traceback" not in text
    print(text, end="")
    return text


def test_missing_image(env):
    spec = env.spec("exit 0", image_root=str(env.tmp / "no-such-image"))
    code, knot = env.run(spec)
    assert code == EXIT_SETUP_FAILED
    line = one_line(knot)
    assert "bind image read-only" in line and "no-such-image: ENOENT" in line
    assert "(image in " in line and "Starting" not in knot.log_text()


def test_missing_readonly_source(env):
    spec = env.spec("exit 0", volumes=(
        Volume(VolumeKind.READONLY, "/ro", str(env.tmp / "nowhere")),))
    code, knot = env.run(spec)
    assert code == EXIT_SETUP_FAILED
    line = one_line(knot)
    assert "mount Readonly volume" in line and "nowhere: ENOENT" in line
    assert 'volumes: "/ro" in ' in line and str(env.image / "config/main.yaml") in line


def test_missing_mount_point(env):                                      # V-2
    spec = env.spec("exit 0", volumes=(Volume(VolumeKind.TMPFS, "/not-in-image", None,
                                              size_bytes=1 << 20),))
    code, knot = env.run(spec)
    assert code == EXIT_SETUP_FAILED
    line = one_line(knot)
    assert "/mnt/not-in-image: ENOENT" in line and 'volumes: "/not-in-image"' in line


def test_symlinked_etc_hosts_with_mount_true(env):                      # E-26
    (env.image / "etc" / "hosts").unlink()
    (env.image / "etc" / "hosts").symlink_to("/state/hosts")
    spec = env.spec("exit 0", hosts_file=dataclasses.replace(env.spec("").hosts_file,
                                                             mount=True))
    code, knot = env.run(spec)
    assert code == EXIT_SETUP_FAILED
    line = one_line(knot)
    assert "/etc/hosts is not a valid mount point" in line and "(hosts-file in " in line


def test_mount_true_with_nothing_generated(env):
    spec = env.spec("exit 0", hosts_file=HostsFile(
        mount=True, copy_from_host=False, localhost=False, public_hostname=False,
        source=str(env.host_hosts)))
    code, knot = env.run(spec)
    assert code == EXIT_SETUP_FAILED
    assert "nothing was generated" in one_line(knot)


def test_missing_host_resolv_conf(env):
    spec = env.spec("exit 0", resolv_conf=dataclasses.replace(
        env.spec("").resolv_conf, source=str(env.tmp / "no-resolv")))
    code, knot = env.run(spec)
    assert code == EXIT_SETUP_FAILED
    assert "error preparing resolv.conf" in one_line(knot)


def test_image_without_tmp_cannot_pivot(env):                           # K-52
    (env.image / "tmp").rmdir()
    code, knot = env.run(env.spec("exit 0"))
    assert code == EXIT_SETUP_FAILED
    assert "mnt/tmp: missing (the image must have a /tmp directory" in one_line(knot)


def test_missing_executable(env):
    code, knot = env.run(env.spec("", executable="/bin/nonexistent"))
    assert code == EXIT_SETUP_FAILED
    line = one_line(knot)
    assert "start service: exec /bin/nonexistent: ENOENT (No such file or directory) " \
        "(executable in " in line


def test_missing_workdir(env):
    code, knot = env.run(env.spec("", workdir="/nonexistent"))
    assert code == EXIT_SETUP_FAILED
    assert "chdir /nonexistent: ENOENT (No such file or directory) (workdir in " in one_line(knot)


def test_bad_spec_json_is_refused_by_the_knot(env):
    import subprocess
    import sys

    r, w = os.pipe()
    os.write(w, b'{"name": "test/svc.0"}')
    os.close(w)
    proc = subprocess.run([sys.executable, "-m", "knot", "--name", "test/svc.0",
                           "--spec-fd", str(r)], pass_fds=(r,), capture_output=True,
                          text=True, timeout=30)
    os.close(r)
    assert proc.returncode == EXIT_SETUP_FAILED
    assert proc.stderr.startswith("knot[test/svc.0]: knot spec: missing keys [")
    assert proc.stderr.count("\n") == 1


def test_mount_point_symlinked_outside_the_container(env):
    (env.image / "data").rmdir()
    (env.image / "data").symlink_to("/etc")
    spec = env.spec("exit 0", volumes=(Volume(VolumeKind.TMPFS, "/data", None,
                                              size_bytes=1 << 20),))
    code, knot = env.run(spec)
    assert code == EXIT_SETUP_FAILED
    line = one_line(knot)
    assert "resolves to /etc, outside the container" in line and 'volumes: "/data"' in line


def test_stdout_stderr_file_on_the_read_only_image(env):
    code, knot = env.run(env.spec("exit 0", stdout_stderr_file="/app.log"))
    assert code == EXIT_SETUP_FAILED
    assert "open stdout-stderr-file: /app.log: EROFS (Read-only file system) " \
        "(stdout-stderr-file in " in one_line(knot)
