"""lithos_crypt end to end through `python -m knot.crypt` (§2.8, E-35)."""

from __future__ import annotations

import base64
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from protocol.secrets import short_hash

ROOT = Path(__file__).resolve().parents[3]


def crypt(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knot.crypt", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def keys(tmp_path: Path, kit: Any, seeds: list[bytes]) -> dict[str, Path]:
    """`k`/`k.pub`: one key; `both`: keys 1 and 0 in that order (so key 0 is last)."""
    files = {
        "k": kit.private_block(seeds[:1]),
        "k.pub": kit.public_line(seeds[0]),
        "other.pub": kit.public_line(seeds[1]),
        "both": kit.private_block([seeds[1]]) + kit.private_block([seeds[0]]),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {name: tmp_path / name for name in files}


def test_e35_encrypt_then_decrypt(keys: dict[str, Path], kit: Any, seeds: list[bytes]) -> None:
    done = crypt("encrypt", "-k", str(keys["k.pub"]), "-n", "ns", "-d", "s")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1
    value = done.stdout.strip()
    fields = value.split(":")
    assert fields[:4] == ["v2", short_hash(kit.public_of(seeds[0])), "80VfE+Rj", "TwTg3Ce6"]
    # (those two from `echo -n ns | b2sum -l48 | xxd -r -p | base64`, and `s`)
    assert len(base64.b64decode(fields[4])) == 48 + len("ns:s")

    done = crypt("decrypt", "-i", str(keys["k"]), "-d", value)
    assert (done.returncode, done.stdout, done.stderr) == (0, "s", "ns:\n")

    again = crypt("encrypt", "--key-file", str(keys["k.pub"]), "--namespace", "ns", "--data", "s")
    assert again.stdout.split(":")[:4] == fields[:4]
    assert again.stdout.split(":")[4] != fields[4]


def test_default_namespace_is_empty(keys: dict[str, Path]) -> None:
    value = crypt("encrypt", "-k", str(keys["k.pub"]), "-d", "pw").stdout.strip()
    assert value.split(":")[2] == "3dnEB2f5"  # H(""), from b2sum as above
    done = crypt("decrypt", "--key-file", str(keys["k"]), "--data", value)
    assert (done.returncode, done.stdout, done.stderr) == (0, "pw", ":\n")


def test_data_from_stdin(keys: dict[str, Path]) -> None:
    done = crypt("encrypt", "-k", str(keys["k.pub"]), "--data-stdin", stdin="from stdin\n")
    assert done.returncode == 0, done.stderr
    decrypted = crypt("decrypt", "-i", str(keys["k"]), "-d", done.stdout.strip())
    assert decrypted.stdout == "from stdin"


def test_decrypt_uses_the_last_key(keys: dict[str, Path]) -> None:
    for_last = crypt("encrypt", "-k", str(keys["k.pub"]), "-d", "a").stdout.strip()
    for_first = crypt("encrypt", "-k", str(keys["other.pub"]), "-d", "b").stdout.strip()
    assert crypt("decrypt", "-i", str(keys["both"]), "-d", for_last).stdout == "a"
    done = crypt("decrypt", "-i", str(keys["both"]), "-d", for_first)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "decryption error. This usually means the key is wrong.\n"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("v1:a:b:c:d", "Only v2 secrets are supported"),
        ("v2:a:b:c", "invalid key format"),
        ("v2:a:b:c:QUJD", "encrypted data is too short (3 bytes"),
    ],
)
def test_decrypt_errors(keys: dict[str, Path], value: str, message: str) -> None:
    done = crypt("decrypt", "-i", str(keys["k"]), "-d", value)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1


def test_check_key(keys: dict[str, Path]) -> None:
    value = crypt("encrypt", "-k", str(keys["k.pub"]), "-d", "s").stdout.strip()
    done = crypt("check-key", "-k", str(keys["k.pub"]), "-d", value)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    done = crypt("check-key", "--key-file", str(keys["other.pub"]), "--data", value)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "key doesn't match\n")
    done = crypt("check-key", "-k", str(keys["k.pub"]), "-d", "v1:" + value[3:])
    # The original printed "Only v1 secrets are supported" here (a typo, §2.8).
    assert (done.returncode, done.stderr) == (1, "Only v2 secrets are supported\n")


def test_invalid_namespace(keys: dict[str, Path]) -> None:
    done = crypt("encrypt", "-k", str(keys["k.pub"]), "-n", "my app", "-d", "s")
    assert (done.returncode, done.stdout) == (1, "")
    assert "invalid namespace, valid on should match regex `^[a-zA-Z0-9_.-]*$`" in done.stderr


def test_only_the_first_line_of_the_public_key_file(keys: dict[str, Path], tmp_path: Path) -> None:
    first = keys["k.pub"].read_text()
    (tmp_path / "extra.pub").write_text(first + "garbage\n")
    assert crypt("encrypt", "-k", str(tmp_path / "extra.pub"), "-d", "s").returncode == 0
    (tmp_path / "late.pub").write_text("# comment\n" + first)
    done = crypt("encrypt", "-k", str(tmp_path / "late.pub"), "-d", "s")
    assert done.returncode == 1
    assert done.stderr.startswith(f"{tmp_path / 'late.pub'}: ")


def test_rsa_public_key(tmp_path: Path) -> None:
    def string(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    blob = base64.b64encode(string(b"ssh-rsa") + string(b"\x01\x00\x01") + string(b"\x00" * 64))
    (tmp_path / "rsa.pub").write_text(f"ssh-rsa {blob.decode()} me@host\n")
    done = crypt("encrypt", "-k", str(tmp_path / "rsa.pub"), "-d", "s")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"{tmp_path / 'rsa.pub'}: Only ed25519 keys are supported\n"


def test_missing_key_file(tmp_path: Path) -> None:
    done = crypt("encrypt", "-k", str(tmp_path / "nope.pub"), "-d", "s")
    assert (done.returncode, done.stderr) == (
        1,
        f"{tmp_path / 'nope.pub'}: ENOENT (No such file or directory)\n",
    )
    done = crypt("decrypt", "-i", str(tmp_path / "nope"), "-d", "v2:a:b:c:d")
    assert done.returncode == 1 and "ENOENT" in done.stderr


def test_real_ssh_keygen_keys(ssh_keygen: Any) -> None:
    path = ssh_keygen()
    value = crypt("encrypt", "-k", f"{path}.pub", "-n", "myapp", "-d", "the_secret").stdout
    assert value.split(":")[2:4] == ["KqWSX0BY", "8MtOoWUX"]  # as in the manual
    done = crypt("decrypt", "-i", str(path), "-d", value.strip())
    assert (done.returncode, done.stdout, done.stderr) == (0, "the_secret", "myapp:\n")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["encrypt"],
        ["encrypt", "-d", "s"],
        ["decrypt", "-i", "k"],
        ["encrypt", "-k", "k.pub", "-d", "s", "--data-stdin"],
        ["check-key", "-x"],
    ],
)
def test_usage_errors_exit_1(args: list[str]) -> None:
    done = crypt(*args)
    assert (done.returncode, done.stdout) == (1, "")
    assert "usage: lithos_crypt" in done.stderr


def test_help() -> None:
    done = crypt("--help")
    assert (done.returncode, done.stderr) == (0, "")
    assert "lithos_crypt encrypt -k main.key.pub -n myapp -d the_secret" in done.stdout
    for command in ("encrypt", "decrypt", "check-key"):
        done = crypt(command, "--help")
        assert done.returncode == 0 and "--key-file" in done.stdout


def test_data_that_is_not_utf8(keys: dict[str, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "knot.crypt", "encrypt", "-k", str(keys["k.pub"]), "-d", b"\xff"],
        cwd=ROOT,
        capture_output=True,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        b"",
        b"the secret is not valid UTF-8 text\n",
    )
