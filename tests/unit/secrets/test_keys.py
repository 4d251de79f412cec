"""OpenSSH key parsing and the secrets-private-key file checks (K-24, E-24)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from protocol.secrets import SecretError, decrypt, encrypt, load_private_keys
from protocol.sshkeys import KeyFormatError, parse_private_keys, parse_public_key

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
NOBODY = 65534


def write_key(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


# --- public keys ------------------------------------------------------------------


def test_public_key_from_ssh_keygen(ssh_keygen: Any) -> None:
    private = ssh_keygen()
    public = parse_public_key(Path(f"{private}.pub").read_text())
    [key] = parse_private_keys(private.read_text())
    assert public == key.public_key
    assert len(public) == 32


def test_public_key_line_forms(kit: Any, seeds: list[bytes]) -> None:
    expected = kit.public_of(seeds[0])
    line = kit.public_line(seeds[0])
    assert parse_public_key(line) == expected
    assert parse_public_key(line.rsplit(" ", 1)[0]) == expected  # no comment
    assert parse_public_key("  " + line.replace(" ", "\t")) == expected


def test_public_key_of_another_type(ssh_keygen: Any) -> None:
    rsa = ssh_keygen("rsa")
    with pytest.raises(KeyFormatError, match="^Only ed25519 keys are supported$"):
        parse_public_key(Path(f"{rsa}.pub").read_text())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "not an OpenSSH public key line"),
        ("ssh-ed25519", "not an OpenSSH public key line"),
        ("ssh-ed25519 !!!", "bad base64"),
        ("ssh-ed25519 AAAA", "bad base64"),  # a length of 0 but no name
        ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIA==", "does not match"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAAQA=", "1 bytes, expected 32"),
    ],
)
def test_public_key_errors(line: str, message: str) -> None:
    with pytest.raises(KeyFormatError, match=message):
        parse_public_key(line)


# --- private keys -----------------------------------------------------------------


def test_private_key_from_ssh_keygen(ssh_keygen: Any) -> None:
    path = ssh_keygen(comment="me@host")
    [key] = parse_private_keys(path.read_text())
    assert key.key_type == "ssh-ed25519"
    assert key.comment == "me@host"
    public = parse_public_key(Path(f"{path}.pub").read_text())
    assert decrypt([key], encrypt(public, "", "s")) == ("", "s")


def test_several_concatenated_keys(ssh_keygen: Any) -> None:
    first, second, rsa = ssh_keygen(), ssh_keygen(), ssh_keygen("rsa")
    text = first.read_text() + rsa.read_text() + second.read_text()
    keys = parse_private_keys(text)
    assert [key.key_type for key in keys] == ["ssh-ed25519", "ssh-rsa", "ssh-ed25519"]
    publics = [parse_public_key(Path(f"{p}.pub").read_text()) for p in (first, second)]
    assert [keys[0].public_key, keys[2].public_key] == publics
    # A value for either ed25519 key decrypts with the whole file.
    for public in publics:
        assert decrypt(keys, encrypt(public, "", "s")) == ("", "s")


def test_several_keys_in_one_block(kit: Any, seeds: list[bytes]) -> None:
    keys = parse_private_keys(kit.private_block(seeds))
    assert [key.seed for key in keys] == seeds
    assert [key.public_key for key in keys] == [kit.public_of(seed) for seed in seeds]


def test_passphrase_protected_key_is_refused(ssh_keygen: Any) -> None:
    path = ssh_keygen(passphrase="correct horse")
    with pytest.raises(KeyFormatError, match="block 1: key is encrypted .*aren't supported"):
        parse_private_keys(path.read_text())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no '-----BEGIN OPENSSH PRIVATE KEY-----' block found"),
        ("ssh-ed25519 AAAA", "no '-----BEGIN OPENSSH PRIVATE KEY-----' block found"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "block 1: '-----BEGIN RSA PRIVATE KEY-----' is not supported",
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\n!!\n-----END OPENSSH PRIVATE KEY-----\n",
            "block 1: bad base64",
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            "block 1: not an openssh-key-v1 key",
        ),
    ],
)
def test_private_key_format_errors(text: str, message: str) -> None:
    with pytest.raises(KeyFormatError, match=message):
        parse_private_keys(text)


def test_truncated_private_key(kit: Any, seeds: list[bytes]) -> None:
    lines = kit.private_block(seeds[:1]).splitlines()
    lines[1:-1] = ["".join(lines[1:-1])[:100]]
    with pytest.raises(KeyFormatError, match="block 1: truncated key data"):
        parse_private_keys("\n".join(lines))


# --- the key file (K-24) ----------------------------------------------------------


def test_e24_key_not_owned_by_root(tmp_path: Path, kit: Any, seeds: list[bytes]) -> None:
    path = write_key(tmp_path / "main.key", kit.private_block(seeds[:1]))
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    with pytest.raises(SecretError, match=f"^{path}: Key must be owned by root"):
        load_private_keys(path)


@requires_root
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o700, 0o610, 0o666])
def test_e24_key_mode_must_be_0600(
    tmp_path: Path, kit: Any, seeds: list[bytes], mode: int, no_fd_leak: None
) -> None:
    path = write_key(tmp_path / "main.key", kit.private_block(seeds[:1]), mode)
    with pytest.raises(SecretError, match=f"^{path}: Key's mode must be 0600 \\(mode is 0"):
        load_private_keys(path)


@requires_root
def test_owner_is_checked_before_mode(tmp_path: Path, kit: Any, seeds: list[bytes]) -> None:
    path = write_key(tmp_path / "main.key", kit.private_block(seeds[:1]), 0o644)
    os.chown(path, NOBODY, 0)
    with pytest.raises(SecretError, match="Key must be owned by root"):
        load_private_keys(path)


@requires_root
@pytest.mark.parametrize("mode", [0o600, 0o400, 0o200, 0o000])
def test_key_modes_accepted(
    tmp_path: Path, kit: Any, seeds: list[bytes], mode: int, no_fd_leak: None
) -> None:
    path = write_key(tmp_path / "main.key", kit.private_block(seeds[:2]), mode)
    keys = load_private_keys(path)
    assert [key.seed for key in keys] == seeds[:2]


@requires_root
def test_ssh_keygen_key_loads_and_decrypts(ssh_keygen: Any) -> None:
    # ssh-keygen's default mode is 0600, as the manual says.
    first, second = ssh_keygen(), ssh_keygen()
    combined = write_key(first.parent / "combined.key", first.read_text() + second.read_text())
    keys = load_private_keys(combined)
    public = parse_public_key(Path(f"{second}.pub").read_text())
    assert decrypt(keys, encrypt(public, "myapp", "pw")) == ("myapp", "pw")
    assert len(load_private_keys(str(first))) == 1


@requires_root
def test_key_file_format_error_names_the_file(tmp_path: Path) -> None:
    path = write_key(tmp_path / "main.key", "not a key\n")
    with pytest.raises(SecretError, match=f"^{path}: no '-----BEGIN OPENSSH"):
        load_private_keys(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(SecretError, match=f"^{path}: not an OpenSSH private key file"):
        load_private_keys(path)


@requires_root
def test_key_halves_that_do_not_match(tmp_path: Path, kit: Any, seeds: list[bytes]) -> None:
    good = kit.private_block(seeds[:1])
    # Swap in another key's public half everywhere: the seed no longer derives it.
    public = kit.public_of(seeds[0])
    other = kit.public_of(seeds[1])
    body = "".join(good.splitlines()[1:-1])
    data = base64.b64decode(body).replace(public, other)
    text = good.splitlines()[0] + "\n" + base64.b64encode(data).decode() + "\n"
    text += good.splitlines()[-1] + "\n"
    path = write_key(tmp_path / "main.key", text)
    with pytest.raises(SecretError, match=f"^{path}: key 1: public and private halves"):
        load_private_keys(path)


def test_missing_key_file(tmp_path: Path, no_fd_leak: None) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(SecretError, match=f"^{path}: can't open key file: ENOENT"):
        load_private_keys(path)


def test_key_file_that_is_not_a_regular_file(tmp_path: Path, no_fd_leak: None) -> None:
    with pytest.raises(SecretError, match=f"^{tmp_path}: key file is not a regular file"):
        load_private_keys(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)  # must not hang waiting for a writer
    with pytest.raises(SecretError, match=f"^{fifo}: key file is not a regular file"):
        load_private_keys(fifo)


def test_block_with_no_keys(kit: Any) -> None:
    lines = kit.private_block([]).splitlines()
    with pytest.raises(KeyFormatError, match="hold no keys"):
        parse_private_keys("\n".join(lines))


def test_block_without_end_line(kit: Any, seeds: list[bytes]) -> None:
    complete = kit.private_block(seeds[:1])
    truncated = complete + complete.rsplit("-----END", 1)[0]
    with pytest.raises(KeyFormatError, match="no matching '-----END"):
        parse_private_keys(truncated)
