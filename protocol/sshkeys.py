"""OpenSSH key parsing: the one-line public key and the openssh-key-v1 private key file.

Owns the byte layout of the keys that `secrets-private-key` names and that
`lithos_crypt` reads (K-24, §2.8). Pure: text in, key objects out; reading files and
checking their owner and mode is `protocol/secrets.py`'s job.

Rules:
- Only unencrypted keys are accepted (`ssh-keygen -N ''`), as in the original.
- A private key file may hold several concatenated PEM blocks, and a block may hold
  several keys; every key of every block is returned, in file order. (The original
  only read the first block although the manual promises several keys.)
- Keys of other types than ed25519 are returned as `PrivateKey` with `key_type` set,
  so that decryption reports `Only ed25519 keys are supported` for them (K-26, 1).
- No secret byte ever reaches a message or a repr.
- Imports nothing of ours and no I/O module (no os, socket, time).
"""

from __future__ import annotations

import binascii
import re
import struct
from dataclasses import field

from protocol.structs import dataclass

ED25519 = "ssh-ed25519"
BEGIN_OPENSSH = "-----BEGIN OPENSSH PRIVATE KEY-----"
END_OPENSSH = "-----END OPENSSH PRIVATE KEY-----"
_MAGIC = b"openssh-key-v1\0"
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
# How many length-prefixed fields follow the type name of a private key in the
# openssh-key-v1 private section (before the comment), so that keys of types we
# don't use can be skipped to reach the ed25519 keys after them.
_PRIVATE_FIELDS = {
    "ssh-rsa": 6,  # n, e, d, iqmp, p, q
    "ssh-dss": 5,  # p, q, g, y, x
    "ecdsa-sha2-nistp256": 3,  # curve, Q, d
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
    ED25519: 2,  # public key, seed || public key
}


class KeyFormatError(ValueError):
    """The text is not a key we can use; the message says why (never with key bytes)."""


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """One private key from a key file; `seed` and `public_key` are empty unless ed25519."""

    key_type: str
    public_key: bytes = b""
    seed: bytes = field(default=b"", repr=False)
    comment: str = ""


def parse_public_key(line: str) -> bytes:
    """The 32-byte ed25519 key of an OpenSSH public key line (`ssh-ed25519 AAAA... comment`).

    Raises:
        KeyFormatError: not a public key line, or (`Only ed25519 keys are supported`) not ed25519.
    """
    words = line.split()
    if len(words) < 2:
        raise KeyFormatError(
            "not an OpenSSH public key line (expected `ssh-ed25519 AAAA... comment`)"
        )
    kind, blob_b64 = words[0], words[1]
    try:
        blob = binascii.a2b_base64(blob_b64, strict_mode=True)
        reader = _Reader(blob)
        inner_kind = reader.text()
    except (ValueError, KeyFormatError) as exc:
        raise KeyFormatError(f"bad base64 key data after {kind!r}: {exc}") from None
    if kind != inner_kind:
        raise KeyFormatError(f"key type {kind!r} does not match the key data ({inner_kind!r})")
    if kind != ED25519:
        raise KeyFormatError("Only ed25519 keys are supported")
    key = reader.bytes()
    if len(key) != 32:
        raise KeyFormatError(f"ed25519 public key is {len(key)} bytes, expected 32")
    return key


def parse_private_keys(text: str) -> list[PrivateKey]:
    """Every key of every OpenSSH private key block in `text`, in order.

    Raises:
        KeyFormatError: no block, a block in another format, an encrypted or corrupt key.
    """
    keys: list[PrivateKey] = []
    blocks = list(_PEM_BLOCK.finditer(text))
    if text.count("-----BEGIN ") != len(blocks):
        raise KeyFormatError(
            "a '-----BEGIN ...-----' line has no matching '-----END ...-----' line "
            "(truncated file?)"
        )
    if not blocks:
        raise KeyFormatError(
            f"no {BEGIN_OPENSSH!r} block found (create the key with "
            "`ssh-keygen -t ed25519 -N '' -f <file>`)"
        )
    for number, block in enumerate(blocks, start=1):
        label = block.group(1)
        if label != "OPENSSH PRIVATE KEY":
            raise KeyFormatError(
                f"block {number}: '-----BEGIN {label}-----' is not supported (only "
                "unencrypted OpenSSH ed25519 keys, as `ssh-keygen -t ed25519 -N ''` makes)"
            )
        try:
            data = binascii.a2b_base64("".join(block.group(2).split()), strict_mode=True)
        except ValueError as exc:
            raise KeyFormatError(f"block {number}: bad base64: {exc}") from None
        try:
            keys.extend(_parse_block(data))
        except KeyFormatError as exc:
            raise KeyFormatError(f"block {number}: {exc}") from None
    if not keys:
        raise KeyFormatError("the key blocks hold no keys")
    return keys


def _parse_block(data: bytes) -> list[PrivateKey]:
    if not data.startswith(_MAGIC):
        raise KeyFormatError("not an openssh-key-v1 key")
    reader = _Reader(data[len(_MAGIC) :])
    cipher, kdf, _kdf_options = reader.text(), reader.text(), reader.bytes()
    if cipher != "none" or kdf != "none":
        raise KeyFormatError(
            f"key is encrypted ({cipher}, {kdf}); password-protected keys aren't supported "
            "(remove the passphrase with `ssh-keygen -p -N '' -f <file>`)"
        )
    count = reader.uint32()
    public_types = [_Reader(reader.bytes()).text() for _ in range(count)]
    private = _Reader(reader.bytes())
    if private.uint32() != private.uint32():
        raise KeyFormatError("check numbers differ (corrupt or encrypted key)")
    keys = []
    for index, public_type in enumerate(public_types):
        key_type = private.text()
        if key_type != public_type:
            raise KeyFormatError(f"key {index + 1}: type {key_type!r} != {public_type!r}")
        if key_type == ED25519:
            keys.append(_ed25519_key(private, index))
            continue
        fields = _PRIVATE_FIELDS.get(key_type)
        if fields is None:
            if index + 1 < count:  # we can't find where the next key starts
                raise KeyFormatError(f"key {index + 1}: unsupported key type {key_type!r}")
            keys.append(PrivateKey(key_type=key_type))
            break
        for _ in range(fields):
            private.bytes()
        keys.append(PrivateKey(key_type=key_type, comment=private.text()))
    return keys


def _ed25519_key(private: _Reader, index: int) -> PrivateKey:
    public_key, secret = private.bytes(), private.bytes()
    comment = private.text()
    # The secret field is seed || public key, as libsodium's 64-byte secret key.
    if len(public_key) != 32 or len(secret) != 64 or secret[32:] != public_key:
        raise KeyFormatError(f"key {index + 1}: malformed ed25519 key")
    return PrivateKey(key_type=ED25519, public_key=public_key, seed=secret[:32], comment=comment)


class _Reader:
    """Reads SSH wire-format fields (RFC 4251: uint32, string) from a byte string."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def uint32(self) -> int:
        if self._offset + 4 > len(self._data):
            raise KeyFormatError("truncated key data")
        (value,) = struct.unpack_from(">I", self._data, self._offset)
        self._offset += 4
        return int(value)

    def bytes(self) -> bytes:
        length = self.uint32()
        end = self._offset + length
        if end > len(self._data):
            raise KeyFormatError("truncated key data")
        value = self._data[self._offset : end]
        self._offset = end
        return value

    def text(self) -> str:
        try:
            return self.bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise KeyFormatError("key data holds a name that is not utf-8") from None
