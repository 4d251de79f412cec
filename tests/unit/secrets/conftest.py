"""Fixtures for the secrets tests: keys made by ssh-keygen, or written by hand.

`ssh_keygen` skips a test cleanly when openssh-client is not installed; `key_text`
writes the openssh-key-v1 format itself, so most tests run without it.
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import nacl.bindings
import pytest

from protocol.secrets import short_hash

ED25519 = "ssh-ed25519"


def _string(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack(">I", len(raw)) + raw


def openssh_private_block(seeds: list[bytes], comment: str = "test") -> str:
    """One `-----BEGIN OPENSSH PRIVATE KEY-----` block holding an ed25519 key per seed."""
    publics = [nacl.bindings.crypto_sign_seed_keypair(seed)[0] for seed in seeds]
    private = struct.pack(">II", 0x12345678, 0x12345678)
    for seed, public in zip(seeds, publics, strict=True):
        private += _string(ED25519) + _string(public) + _string(seed + public) + _string(comment)
    private += bytes(range(1, 1 + (-len(private)) % 8))
    data = (
        b"openssh-key-v1\0"
        + _string("none")
        + _string("none")
        + _string(b"")
        + struct.pack(">I", len(seeds))
        + b"".join(_string(_string(ED25519) + _string(pk)) for pk in publics)
        + _string(private)
    )
    b64 = base64.b64encode(data).decode()
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return "\n".join(
        ["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----", ""]
    )


def public_line(seed: bytes, comment: str = "test") -> str:
    public = nacl.bindings.crypto_sign_seed_keypair(seed)[0]
    blob = base64.b64encode(_string(ED25519) + _string(public)).decode()
    return f"{ED25519} {blob} {comment}\n"


def public_of(seed: bytes) -> bytes:
    return bytes(nacl.bindings.crypto_sign_seed_keypair(seed)[0])


def seal_raw(
    public_key: bytes,
    plaintext: bytes,
    *,
    kh: str | None = None,
    nh: str | None = None,
    sh: str | None = None,
) -> str:
    """A v2 value sealing arbitrary `plaintext`, with hashes computed or given."""
    namespace, _, secret = plaintext.partition(b":")
    curve = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    cipher = base64.b64encode(nacl.bindings.crypto_box_seal(plaintext, curve)).decode()
    fields = [
        kh if kh is not None else short_hash(public_key),
        nh if nh is not None else short_hash(namespace),
        sh if sh is not None else short_hash(secret),
    ]
    return ":".join(["v2", *fields, cipher])


class Kit:
    """The helpers above, for test modules (importlib mode can't import conftest)."""

    private_block = staticmethod(openssh_private_block)
    public_line = staticmethod(public_line)
    public_of = staticmethod(public_of)
    seal_raw = staticmethod(seal_raw)


@pytest.fixture
def kit() -> Kit:
    return Kit()


@pytest.fixture
def ssh_keygen(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Runs the real ssh-keygen; returns the private key path (`.pub` beside it)."""
    program = shutil.which("ssh-keygen")
    if program is None:
        pytest.skip("ssh-keygen is not installed (apt package openssh-client)")
    counter = iter(range(1000))

    def generate(key_type: str = "ed25519", passphrase: str = "", comment: str = "t") -> Path:
        path = tmp_path / f"key{next(counter)}"
        cmd = [program, "-q", "-t", key_type, "-N", passphrase, "-C", comment, "-f", str(path)]
        if key_type == "rsa":
            cmd += ["-b", "1024"]
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        return path

    yield generate


@pytest.fixture
def seeds() -> list[bytes]:
    return [os.urandom(32) for _ in range(3)]
