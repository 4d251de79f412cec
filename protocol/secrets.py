"""Encrypted secrets: the `v2:<KH>:<NH>:<SH>:<CIPHER>` format of `secret-environ` (K-26).

Owns encryption (for `lithos_crypt`), decryption of one value, the key file checks of
`secrets-private-key` (K-24) and the decryption of a whole `secret-environ` (K-21, K-25).

Rules:
- Byte-compatible with the original: H(x) is base64 of blake2b(x, digest_size=6); CIPHER
  is base64 of a libsodium sealed box of `namespace:secret` to the ed25519 key converted
  to curve25519. Checks run in the order of K-26, so errors read the same.
- Every failure is a `SecretError`; no input makes decryption raise anything else.
- No message ever holds a secret or private key byte. A namespace appears only once its
  hash has been verified, and only if it is a valid namespace name.
- Pure except `load_private_keys`, which reads (only) the file it is handed. Imports
  only protocol.sshkeys of ours; never socket, subprocess, time or logging.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import re
import stat
from collections.abc import Collection, Mapping, Sequence

from protocol.digest import blake2b
from protocol.sshkeys import ED25519, KeyFormatError, PrivateKey, parse_private_keys

__all__ = [
    "NAMESPACE_RE",
    "NAMESPACE_RULE",
    "PrivateKey",
    "SecretError",
    "allowed_namespaces",
    "decrypt",
    "decrypt_environ",
    "encrypt",
    "key_hash",
    "load_private_keys",
    "short_hash",
]

NAMESPACE_RE = re.compile(r"[a-zA-Z0-9_.-]*")  # used with fullmatch: `^...$` in the manual
NAMESPACE_RULE = "valid on should match regex `^[a-zA-Z0-9_.-]*$`"  # (sic), original text
# Canonical padded standard base64, as the original's decoder wanted; binascii's strict
# mode alone lets excess padding through.
_BASE64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_SEALBYTES = 48  # ephemeral public key (32) + poly1305 tag (16)
_MAX_KEY_FILE_BYTES = 1 << 20


class SecretError(Exception):
    """A secret can't be encrypted, decrypted or its key loaded; never holds plaintext."""


def short_hash(data: bytes) -> str:
    """H(x) of K-26: base64 of the 6-byte blake2b of `data` (8 characters)."""
    return base64.b64encode(blake2b(data, digest_size=6).digest()).decode()


def key_hash(public_key: bytes) -> str:
    """KH of K-26 for a 32-byte ed25519 public key."""
    return short_hash(public_key)


def encrypt(public_key: bytes, namespace: str, secret: str) -> str:
    """`v2:<KH>:<NH>:<SH>:<CIPHER>` of `secret` in `namespace`, sealed to `public_key`.

    Raises:
        SecretError: the namespace is not valid or the key is not an ed25519 point.
    """
    if not NAMESPACE_RE.fullmatch(namespace):
        raise SecretError(f"invalid namespace, {NAMESPACE_RULE}")
    if len(public_key) != 32:
        raise SecretError(f"ed25519 public key is {len(public_key)} bytes, expected 32")
    import nacl.bindings  # here: lithos_tree imports this module, never encrypts
    import nacl.exceptions

    try:
        curve_public = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except nacl.exceptions.CryptoError:
        raise SecretError("the public key is not a valid ed25519 key") from None
    try:
        namespace_bytes, secret_bytes = namespace.encode(), secret.encode()
    except UnicodeEncodeError:  # lone surrogates, e.g. from undecodable argv bytes
        raise SecretError("the secret is not valid UTF-8 text") from None
    sealed = nacl.bindings.crypto_box_seal(namespace_bytes + b":" + secret_bytes, curve_public)
    cipher = base64.b64encode(sealed).decode()
    return ":".join(
        ["v2", key_hash(public_key), short_hash(namespace_bytes), short_hash(secret_bytes), cipher]
    )


def allowed_namespaces(
    secrets_namespaces: Collection[str], extra_secrets_namespaces: Collection[str]
) -> frozenset[str]:
    """The namespaces a process may decrypt (K-25): the sandbox's `secrets-namespaces`,
    or `{""}` when that is empty, plus the process's `extra-secrets-namespaces`."""
    return frozenset(secrets_namespaces or {""}) | frozenset(extra_secrets_namespaces)


def decrypt(private_keys: Sequence[PrivateKey], value: str) -> tuple[str, str]:
    """(namespace, secret) of `value`, with the first of `private_keys` that opens it.

    The namespace is not checked against any allowed set (that is `decrypt_environ`'s job).

    Raises:
        SecretError: no key opens it; the message lists each key's error, in K-26 wording.
    """
    errors = []
    for key in private_keys:
        try:
            return _decrypt_one(key, value, allowed_namespaces=None)
        except SecretError as exc:
            errors.append(str(exc))
    raise SecretError(", ".join(errors) if errors else "no private key given")


def decrypt_environ(
    encrypted: Mapping[str, str | Sequence[str]],
    keys: Sequence[PrivateKey],
    namespaces: Collection[str],
) -> dict[str, str]:
    """Decrypted `secret-environ`: each name's first value that a key opens (K-21, K-25).

    Every key is tried with every value of a name (keys outer, values inner) and the first
    success wins. `namespaces` is the allowed set, computed by the caller (K-25).

    Raises:
        SecretError: `Can't decrypt secret "<NAME>", errors: <e1>, <e2>, ...`.
    """
    result = {}
    for name, values in encrypted.items():
        candidates = [values] if isinstance(values, str) else list(values)
        errors = []
        secret = None
        for key in keys:
            for candidate in candidates:
                try:
                    _, secret = _decrypt_one(key, candidate, allowed_namespaces=namespaces)
                except SecretError as exc:
                    errors.append(str(exc))
                    continue
                break
            if secret is not None:
                break
        if secret is None:
            if not candidates:
                errors.append("no encrypted value given (an empty list)")
            if not keys:
                errors.append("no private key given")
            raise SecretError(f"Can't decrypt secret {_quote(name)}, errors: {', '.join(errors)}")
        result[name] = secret
    return result


def load_private_keys(path: str | os.PathLike[str]) -> list[PrivateKey]:
    """Every private key in the `secrets-private-key` file `path`, after the K-24 checks.

    The file must be owned by root and not readable or writable by anyone else.

    Raises:
        SecretError: naming the file, for an unreadable, badly owned or malformed file.
    """
    name = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the knot on open().
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretError(f"{name}: can't open key file: {_os_error(exc)}") from None
    try:
        # fstat the opened fd, not the path, so the checks apply to what is read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"{name}: key file is not a regular file")
        if info.st_uid != 0:
            raise SecretError(
                f"{name}: Key must be owned by root (owner is uid {info.st_uid}; "
                f"`chown root {name}`)"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o177:
            raise SecretError(
                f"{name}: Key's mode must be 0600 (mode is {mode:04o}; `chmod 0600 {name}`)"
            )
        if info.st_size > _MAX_KEY_FILE_BYTES:
            raise SecretError(f"{name}: key file is {info.st_size} bytes, too big for a key")
        data = _read_all(fd)
        if len(data) > _MAX_KEY_FILE_BYTES:
            raise SecretError(f"{name}: key file is more than {_MAX_KEY_FILE_BYTES} bytes")
    except OSError as exc:
        raise SecretError(f"{name}: can't read key file: {_os_error(exc)}") from None
    finally:
        os.close(fd)
    try:
        keys = parse_private_keys(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SecretError(f"{name}: not an OpenSSH private key file (not text)") from None
    except KeyFormatError as exc:
        raise SecretError(f"{name}: {exc}") from None
    for number, key in enumerate(keys, start=1):
        if key.key_type == ED25519 and _derive_public(key.seed) != key.public_key:
            raise SecretError(f"{name}: key {number}: public and private halves don't match")
    return keys


def _decrypt_one(
    key: PrivateKey, value: str, allowed_namespaces: Collection[str] | None
) -> tuple[str, str]:
    """(namespace, secret) of one value with one key; the checks are in K-26's order."""
    if key.key_type != ED25519:  # 1
        raise SecretError("Only ed25519 keys are supported")
    if not value.startswith("v2:"):  # 2
        raise SecretError("Only v2 secrets are supported")
    fields = value.split(":")
    if len(fields) != 5:  # 3
        raise SecretError("invalid key format")
    _, expected_key_hash, namespace_hash, secret_hash, cipher_b64 = fields
    if not _BASE64_RE.fullmatch(cipher_b64):  # 4
        raise SecretError(
            "invalid base64 in the encrypted part (standard alphabet, padded with '=')"
        )
    cipher = binascii.a2b_base64(cipher_b64)
    plain = _open_sealed(key, cipher)  # 5
    namespace_bytes, colon, secret_bytes = plain.partition(b":")
    try:  # 6
        namespace = namespace_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError("can't decode namespace from utf-8") from None
    if not colon:  # 7
        raise SecretError("decrypted data is invalid")
    if key_hash(key.public_key) != expected_key_hash:  # 8
        raise SecretError("invalid key hash")
    if short_hash(namespace_bytes) != namespace_hash:  # 9
        raise SecretError("invalid namespace hash")
    if short_hash(secret_bytes) != secret_hash:  # 10
        raise SecretError("invalid secret hash")
    if allowed_namespaces is not None and namespace not in allowed_namespaces:  # 11
        allowed = ", ".join(_quote(ns) for ns in sorted(allowed_namespaces))
        shown = _quote(namespace) if NAMESPACE_RE.fullmatch(namespace) else "(invalid name)"
        raise SecretError(f"expected namespaces {{{allowed}}} got {shown}")
    if b"\0" in secret_bytes:  # 12
        raise SecretError("no null bytes allowed in secret")
    try:  # 13
        return namespace, secret_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError("Can't decode secret as utf-8") from None


def _open_sealed(key: PrivateKey, cipher: bytes) -> bytes:
    if len(cipher) < _SEALBYTES:
        # The original panicked here (K-26 [src-bug?]); a short box is an ordinary error.
        raise SecretError(
            f"encrypted data is too short ({len(cipher)} bytes, a sealed box has at least "
            f"{_SEALBYTES}; is the value truncated?)"
        )
    import nacl.bindings  # here, not at the top: see encrypt
    import nacl.exceptions

    try:
        # As the original: the curve25519 public key comes from the stored ed25519 public
        # key, the secret one from the seed (sha512(seed)[:32], clamped).
        curve_public = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(key.public_key)
        curve_secret = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(key.seed + key.public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise SecretError("the private key is not a valid ed25519 key") from None
    try:
        return nacl.bindings.crypto_box_seal_open(cipher, curve_public, curve_secret)
    except nacl.exceptions.CryptoError:
        raise SecretError("decryption error. This usually means the key is wrong.") from None


def _derive_public(seed: bytes) -> bytes:
    import nacl.bindings  # here, not at the top: see encrypt

    public_key, _ = nacl.bindings.crypto_sign_seed_keypair(seed)
    return public_key


def _read_all(fd: int) -> bytes:
    chunks = []
    total = 0
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
        total += len(chunk)
        if total > _MAX_KEY_FILE_BYTES:
            break
    return b"".join(chunks)


def _quote(text: str) -> str:
    """`"text"`, escaped like Rust's `{:?}` of a string (the original's error format)."""
    return json.dumps(text, ensure_ascii=False)


def _os_error(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0, "error")
    return f"{code} ({exc.strerror})"
