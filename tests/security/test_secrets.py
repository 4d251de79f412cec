"""Secrets stay secret (issue 11, K-21, K-24): with a secret-environ container, the
service sees the decrypted value, and the plaintext is nowhere else: not in the
supervisor's (nor the broker's) memory, the broker's log, the log directory (master,
config and stdio logs), the runtime dir, nor lithos_ps's output (when it exists)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.secrets import encrypt
from protocol.sshkeys import parse_public_key
from tests.security.tree import read_memory, supervisor_pid

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

CONTAINER = """
executable: /bin/sh
arguments: ["-c", "echo secret-holder-up; exec /bin/sleep 100000"]
user-id: 1000
group-id: 1000
restart-timeout: 0
secret-environ:
  LITHOS_TEST_SECRET: "{cipher}"
"""


def test_plaintext_reaches_the_service_and_nothing_else(sec_tree) -> None:
    keys = sec_tree.root / "keys"
    keys.mkdir(mode=0o700)
    key = keys / "main.key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    key.chmod(0o600)
    plaintext = "lithos-plain-" + secrets.token_hex(16)
    public = parse_public_key(Path(f"{key}.pub").read_text())
    cipher = encrypt(public, "sec", plaintext)
    sec_tree.image("secret.v1", {"app.yaml": CONTAINER.format(cipher=cipher)})
    sec_tree.sandbox(
        "sec",
        f"secrets-private-key: {key}\nsecrets-namespaces: [sec]\n",
        "app: {image: secret.v1, config: /config/app.yaml}\n",
    )
    sec_tree.start()
    sec_tree.wait_stdio("sec", r"^secret-holder-up$")
    knot = sec_tree.running()["sec/app.0"]
    service = sec_tree.service_pid(knot)
    needle = plaintext.encode()
    environ = Path(f"/proc/{service}/environ").read_bytes().split(b"\0")
    assert b"LITHOS_TEST_SECRET=" + needle in environ  # the service has it, decrypted

    assert needle not in read_memory(supervisor_pid(sec_tree)), "plaintext in the supervisor"
    assert needle not in read_memory(sec_tree.pid), "plaintext in the broker (lithos_tree)"
    assert sec_tree.log is not None
    assert not [line for line in sec_tree.log.lines if plaintext in line], "in the log"
    scanned = []
    for top in (sec_tree.root / "log", sec_tree.runtime):
        for path in top.rglob("*"):
            if path.is_file() and not path.is_socket():
                assert needle not in path.read_bytes(), f"plaintext in {path}"
                scanned.append(str(path.relative_to(sec_tree.root)))
    print("scanned for the plaintext:", sorted(scanned))
    if importlib.util.find_spec("supervisor.ps") is not None:
        ps = subprocess.run([sys.executable, "-m", "supervisor.ps", "--config",
                             str(sec_tree.master)], capture_output=True, timeout=60)  # fmt: skip
        assert needle not in ps.stdout + ps.stderr, "plaintext in lithos_ps output"
