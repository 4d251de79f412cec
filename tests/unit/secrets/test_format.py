"""The v2 format (K-26, E-35, E-36): hashes, the sealed box construction, round trips."""

from __future__ import annotations

import base64
import hashlib
import os

import nacl.bindings
import pytest

from protocol.secrets import SecretError, decrypt, encrypt, short_hash
from protocol.sshkeys import PrivateKey

P = 2**255 - 19


def ed25519_key(seed: bytes) -> PrivateKey:
    public, _ = nacl.bindings.crypto_sign_seed_keypair(seed)
    return PrivateKey(key_type="ssh-ed25519", public_key=public, seed=seed)


def test_e36_manual_short_hash_example() -> None:
    # E-36: `echo -n the_secret | b2sum -l48 | xxd -r -p | base64` prints 8MtOoWUX.
    assert short_hash(b"the_secret") == "8MtOoWUX"


def test_e36_secret_hash_field_of_the_manual_example() -> None:
    key = ed25519_key(os.urandom(32))
    value = encrypt(key.public_key, "myapp", "the_secret")
    version, _kh, nh, sh, _cipher = value.split(":")
    assert version == "v2"
    assert sh == "8MtOoWUX"
    # The manual's example value v2:ROit92I5:KqWSX0BY:8MtOoWUX:... has namespace myapp.
    assert nh == "KqWSX0BY"


def test_e35_fields() -> None:
    key = ed25519_key(os.urandom(32))
    value = encrypt(key.public_key, "ns", "s")
    fields = value.split(":")
    assert len(fields) == 5
    b6 = lambda data: base64.b64encode(hashlib.blake2b(data, digest_size=6).digest()).decode()  # noqa: E731
    assert fields[:4] == ["v2", b6(key.public_key), b6(b"ns"), b6(b"s")]
    assert len(base64.b64decode(fields[4], validate=True)) == 48 + len("ns:s")


def test_e35_same_value_twice_differs_only_in_cipher() -> None:
    key = ed25519_key(os.urandom(32))
    first, second = (encrypt(key.public_key, "ns", "s").split(":") for _ in range(2))
    assert first[:4] == second[:4]
    assert first[4] != second[4]


@pytest.mark.parametrize(
    ("namespace", "secret"),
    [("", "s"), ("ns", ""), ("project1.web", "pa:ss:wo:rd"), ("a-b_c.D9", "ünïcødé ✓ \n\t")],
)
def test_round_trip(namespace: str, secret: str) -> None:
    key = ed25519_key(os.urandom(32))
    assert decrypt([key], encrypt(key.public_key, namespace, secret)) == (namespace, secret)


@pytest.mark.parametrize("namespace", ["a b", "ns:x", "ns/x", "ns\n", "é", "*"])
def test_encrypt_refuses_invalid_namespace(namespace: str) -> None:
    key = ed25519_key(os.urandom(32))
    with pytest.raises(SecretError, match=r"invalid namespace, .*\^\[a-zA-Z0-9_\.-\]\*\$"):
        encrypt(key.public_key, namespace, "s")


def test_encrypt_refuses_a_key_that_is_not_a_curve_point() -> None:
    with pytest.raises(SecretError, match="not a valid ed25519 key"):
        encrypt(b"\xff" * 32, "", "s")
    with pytest.raises(SecretError, match="31 bytes"):
        encrypt(b"\x01" * 31, "", "s")


# The construction of K-26, written out independently of libsodium's sealed box, as
# the original's nacl.rs does it: this pins byte compatibility with lithos.


def edwards_to_montgomery(public_key: bytes) -> bytes:
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, P - 2, P) % P
    return u.to_bytes(32, "little")


def original_curve_secret(seed: bytes) -> bytes:
    hashed = bytearray(hashlib.sha512(seed).digest()[:32])
    hashed[0] &= 248
    hashed[31] &= 63  # nacl.rs; libsodium's &= 127 gives the same after |= 64
    hashed[31] |= 64
    return bytes(hashed)


def seal_nonce(epk: bytes, recipient: bytes) -> bytes:
    return hashlib.blake2b(epk + recipient, digest_size=24).digest()


def test_key_conversion_matches_the_original() -> None:
    key = ed25519_key(os.urandom(32))
    assert nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(
        key.public_key
    ) == edwards_to_montgomery(key.public_key)
    assert nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
        key.seed + key.public_key
    ) == original_curve_secret(key.seed)


def test_value_sealed_as_the_original_does_decrypts() -> None:
    key = ed25519_key(os.urandom(32))
    recipient = edwards_to_montgomery(key.public_key)
    esk = os.urandom(32)
    epk = nacl.bindings.crypto_scalarmult_base(esk)
    boxed = nacl.bindings.crypto_box(b"ns:s", seal_nonce(epk, recipient), recipient, esk)
    cipher = base64.b64encode(epk + boxed).decode()
    value = f"v2:{short_hash(key.public_key)}:{short_hash(b'ns')}:{short_hash(b's')}:{cipher}"
    assert decrypt([key], value) == ("ns", "s")


def test_our_value_opens_as_the_original_opens_it() -> None:
    key = ed25519_key(os.urandom(32))
    cipher = base64.b64decode(encrypt(key.public_key, "ns", "s").split(":")[4])
    epk, boxed = cipher[:32], cipher[32:]
    recipient = edwards_to_montgomery(key.public_key)
    plain = nacl.bindings.crypto_box_open(
        boxed, seal_nonce(epk, recipient), epk, original_curve_secret(key.seed)
    )
    assert plain == b"ns:s"


def test_encrypt_refuses_text_that_is_not_utf8() -> None:
    key = ed25519_key(os.urandom(32))
    with pytest.raises(SecretError, match="^the secret is not valid UTF-8 text$"):
        encrypt(key.public_key, "", "pass\udcffword")
