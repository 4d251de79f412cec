"""Decryption: every K-26 check in its order, namespaces (K-25, E-23), secret-environ (K-21)."""

from __future__ import annotations

import base64
import os
from typing import Any

import nacl.bindings
import pytest

from protocol.secrets import (
    SecretError,
    allowed_namespaces,
    decrypt,
    decrypt_environ,
    encrypt,
    short_hash,
)
from protocol.sshkeys import PrivateKey

DEFAULT_NAMESPACES = frozenset({""})  # K-25: an empty secrets-namespaces means {""}


def ed25519_key(seed: bytes | None = None) -> PrivateKey:
    seed = os.urandom(32) if seed is None else seed
    public, _ = nacl.bindings.crypto_sign_seed_keypair(seed)
    return PrivateKey(key_type="ssh-ed25519", public_key=public, seed=seed)


RSA = PrivateKey(key_type="ssh-rsa")
KEY = ed25519_key()
OTHER = ed25519_key()
BAD = "QUJD"  # a hash that matches nothing


def environ_error(value: str, namespaces: frozenset[str] = DEFAULT_NAMESPACES) -> str:
    with pytest.raises(SecretError) as info:
        decrypt_environ({"DB_PASSWORD": value}, [KEY], namespaces)
    return str(info.value)


def b64_random(size: int) -> str:
    return base64.b64encode(os.urandom(size)).decode()


# Each case breaks its own check and, where it can, every later check too: the message
# names the first broken check, which pins K-26's order.
def k26_cases(kit: Any) -> list[tuple[PrivateKey, str, str]]:
    seal = kit.seal_raw
    pk = KEY.public_key
    return [
        (RSA, "v1:x", "Only ed25519 keys are supported"),  # 1
        (KEY, "v1:a:b:c:!!", "Only v2 secrets are supported"),  # 2
        (KEY, "V2:a:b:c:d", "Only v2 secrets are supported"),
        (KEY, "v2:a:b:!!", "invalid key format"),  # 3
        (KEY, "v2:a:b:c:d:!!", "invalid key format"),
        (KEY, "v2:a:b:c:!!", "invalid base64 in the encrypted part"),  # 4
        (KEY, "v2:a:b:c:QUJD=", "invalid base64 in the encrypted part"),
        (KEY, "v2:a:b:c:" + b64_random(60), "decryption error"),  # 5
        (KEY, encrypt(OTHER.public_key, "", "s"), "decryption error. This usually means"),
        (KEY, "v2:a:b:c:" + b64_random(47), "encrypted data is too short (47 bytes"),
        (KEY, "v2:a:b:c:", "encrypted data is too short (0 bytes"),
        (KEY, seal(pk, b"\xff\xfe", kh=BAD, nh=BAD, sh=BAD), "can't decode namespace"),  # 6
        (KEY, seal(pk, b"nocolon", kh=BAD, nh=BAD, sh=BAD), "decrypted data is invalid"),  # 7
        (KEY, seal(pk, b"", kh=BAD, nh=BAD, sh=BAD), "decrypted data is invalid"),
        (KEY, seal(pk, b"x:\0\xff", kh=BAD, nh=BAD, sh=BAD), "invalid key hash"),  # 8
        (KEY, seal(pk, b"x:\0\xff", nh=BAD, sh=BAD), "invalid namespace hash"),  # 9
        (KEY, seal(pk, b"x:\0\xff", sh=BAD), "invalid secret hash"),  # 10
    ]


def test_k26_errors_in_order(kit: Any) -> None:
    for key, value, message in k26_cases(kit):
        with pytest.raises(SecretError) as info:
            decrypt([key], value)
        assert str(info.value).startswith(message), (value, str(info.value))


def test_k26_errors_after_the_hashes(kit: Any) -> None:
    seal, pk = kit.seal_raw, KEY.public_key
    # 11: the namespace check comes before the null byte and utf-8 checks.
    assert environ_error(seal(pk, b"x:\0\xff")) == (
        'Can\'t decrypt secret "DB_PASSWORD", errors: expected namespaces {""} got "x"'
    )
    message = environ_error(seal(pk, b"x:s"), frozenset({"a", ""}))
    assert message.endswith('expected namespaces {"", "a"} got "x"')
    # 12, then 13
    assert environ_error(seal(pk, b":a\0\xff")).endswith("no null bytes allowed in secret")
    assert environ_error(seal(pk, b":\xff")).endswith("Can't decode secret as utf-8")
    # decrypt() (lithos_crypt decrypt) has no namespace check but does 12 and 13.
    assert decrypt([KEY], seal(pk, b"x:s")) == ("x", "s")
    with pytest.raises(SecretError, match="no null bytes"):
        decrypt([KEY], seal(pk, b"x:\0"))


def test_hash_check_catches_a_swapped_field() -> None:
    value = encrypt(KEY.public_key, "", "s").split(":")
    value[3] = short_hash(b"t")
    with pytest.raises(SecretError, match="^invalid secret hash$"):
        decrypt([KEY], ":".join(value))


def test_a_namespace_that_is_not_a_name_is_not_echoed(kit: Any) -> None:
    message = environ_error(kit.seal_raw(KEY.public_key, b"pass word:s"))
    assert "pass word" not in message
    assert message.endswith("got (invalid name)")


def test_wrong_key() -> None:
    with pytest.raises(SecretError, match="This usually means the key is wrong"):
        decrypt([OTHER], encrypt(KEY.public_key, "", "s"))


def test_decrypt_tries_every_key() -> None:
    value = encrypt(KEY.public_key, "ns", "s")
    assert decrypt([RSA, OTHER, KEY], value) == ("ns", "s")
    with pytest.raises(SecretError) as info:
        decrypt([RSA, OTHER], value)
    assert str(info.value) == (
        "Only ed25519 keys are supported, decryption error. This usually means the key is wrong."
    )


def test_e23_namespace_needs_to_be_allowed() -> None:
    value = encrypt(KEY.public_key, "x", "s")
    assert environ_error(value).endswith('expected namespaces {""} got "x"')
    # extra-secrets-namespaces: [x] joins the allowed set.
    assert decrypt_environ({"A": value}, [KEY], {"", "x"}) == {"A": "s"}


def test_namespaces_match_exactly_not_as_prefixes() -> None:
    value = encrypt(KEY.public_key, "project1.web", "s")
    for allowed in ({"project1"}, {"project1.we"}, {"project1.web.x"}, {"PROJECT1.WEB"}):
        with pytest.raises(SecretError, match="expected namespaces"):
            decrypt_environ({"A": value}, [KEY], allowed)
    empty = encrypt(KEY.public_key, "", "s")
    with pytest.raises(SecretError, match='got ""'):
        decrypt_environ({"A": empty}, [KEY], {"project1.web"})


def test_environ_all_names() -> None:
    encrypted = {
        "A": encrypt(KEY.public_key, "", "one"),
        "B": [encrypt(KEY.public_key, "", "two")],
        "C": encrypt(KEY.public_key, "", ""),
    }
    assert decrypt_environ(encrypted, [KEY], DEFAULT_NAMESPACES) == {
        "A": "one",
        "B": "two",
        "C": "",
    }
    assert decrypt_environ({}, [], DEFAULT_NAMESPACES) == {}


def test_environ_list_first_decryptable_wins() -> None:
    values = [
        "garbage",
        encrypt(OTHER.public_key, "", "for other key"),
        encrypt(KEY.public_key, "", "first"),
        encrypt(KEY.public_key, "", "second"),
    ]
    assert decrypt_environ({"A": values}, [KEY], DEFAULT_NAMESPACES) == {"A": "first"}


def test_environ_keys_outer_values_inner() -> None:
    # K-25: for each key, every value; so the first key's value wins over an earlier value.
    values = [encrypt(OTHER.public_key, "", "other"), encrypt(KEY.public_key, "", "key")]
    assert decrypt_environ({"A": values}, [KEY, OTHER], DEFAULT_NAMESPACES) == {"A": "key"}
    assert decrypt_environ({"A": values}, [OTHER, KEY], DEFAULT_NAMESPACES) == {"A": "other"}


def test_environ_error_lists_every_key_and_value() -> None:
    values = ["v1:x", encrypt(OTHER.public_key, "", "s")]
    with pytest.raises(SecretError) as info:
        decrypt_environ({"DB_PASSWORD": values}, [RSA, KEY], DEFAULT_NAMESPACES)
    assert str(info.value) == (
        'Can\'t decrypt secret "DB_PASSWORD", errors: '
        "Only ed25519 keys are supported, Only ed25519 keys are supported, "
        "Only v2 secrets are supported, "
        "decryption error. This usually means the key is wrong."
    )


def test_environ_empty_list_and_no_keys() -> None:
    with pytest.raises(SecretError, match='"A", errors: no encrypted value given'):
        decrypt_environ({"A": []}, [KEY], DEFAULT_NAMESPACES)
    with pytest.raises(SecretError, match='"A", errors: no private key given'):
        decrypt_environ({"A": "v2:a:b:c:d"}, [], DEFAULT_NAMESPACES)


def test_environ_name_is_quoted_like_the_original() -> None:
    with pytest.raises(SecretError, match=r'^Can\'t decrypt secret "A\\"B", errors: '):
        decrypt_environ({'A"B': "v1:x"}, [KEY], DEFAULT_NAMESPACES)


def test_no_plaintext_in_any_error(kit: Any) -> None:
    secret = b"hunter2-plaintext"
    seal, pk = kit.seal_raw, KEY.public_key
    values = [
        seal(pk, b"ns:" + secret),  # namespace not allowed
        seal(pk, b":" + secret + b"\0"),
        seal(pk, b":" + secret + b"\xff"),
        seal(pk, b":" + secret, sh=BAD),
        seal(pk, secret),  # no colon
        encrypt(OTHER.public_key, "", secret.decode()),
    ]
    for value in values:
        with pytest.raises(SecretError) as info:
            decrypt_environ({"A": value}, [KEY], DEFAULT_NAMESPACES)
        assert "hunter2" not in str(info.value)
        assert "hunter2" not in repr(info.value)


def test_private_key_repr_hides_the_seed() -> None:
    assert KEY.seed.hex() not in repr(KEY)
    assert repr(KEY.seed) not in repr(KEY)


def test_k25_allowed_namespaces() -> None:
    assert allowed_namespaces([], []) == {""}
    assert allowed_namespaces([], ["x"]) == {"", "x"}
    assert allowed_namespaces(["a", "b"], []) == {"a", "b"}
    assert allowed_namespaces(["a"], ["x", "a"]) == {"a", "x"}
