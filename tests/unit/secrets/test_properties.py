"""Hypothesis: no input makes decryption fail with anything but SecretError (K-26 [src-bug?])."""

from __future__ import annotations

import base64
import contextlib
import os

import nacl.bindings
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.secrets import SecretError, decrypt, decrypt_environ, encrypt
from protocol.sshkeys import KeyFormatError, PrivateKey, parse_private_keys, parse_public_key

SEED = os.urandom(32)
PUBLIC = bytes(nacl.bindings.crypto_sign_seed_keypair(SEED)[0])
KEY = PrivateKey(key_type="ssh-ed25519", public_key=PUBLIC, seed=SEED)
PLAIN = "pl41nt3xt"
VALID = encrypt(PUBLIC, "ns", PLAIN)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="

SETTINGS = settings(max_examples=150, deadline=None)

values = st.one_of(
    st.text(),
    st.text().map(lambda text: "v2:" + text),
    st.tuples(
        st.lists(st.text(alphabet=B64, max_size=10), min_size=3, max_size=3),
        st.binary(max_size=120),
    ).map(lambda t: ":".join(["v2", *t[0], base64.b64encode(t[1]).decode()])),
    st.tuples(st.integers(0, len(VALID) - 1), st.sampled_from(B64 + ":x\0é")).map(
        lambda t: VALID[: t[0]] + t[1] + VALID[t[0] + 1 :]
    ),
    st.integers(0, len(VALID)).map(lambda n: VALID[:n]),
)


@SETTINGS
@given(values)
def test_decrypt_never_crashes(value: str) -> None:
    try:
        namespace, secret = decrypt([KEY], value)
    except SecretError as exc:
        assert PLAIN not in str(exc)
        return
    # Only an untouched (or identically re-encoded) value can open.
    assert (namespace, secret) == ("ns", PLAIN)


@SETTINGS
@given(st.dictionaries(st.text(max_size=5), st.one_of(values, st.lists(values, max_size=3))))
def test_decrypt_environ_never_crashes(encrypted: dict[str, str | list[str]]) -> None:
    try:
        result = decrypt_environ(encrypted, [KEY], {"", "ns"})
    except SecretError as exc:
        assert PLAIN not in str(exc)
        return
    assert set(result.values()) <= {PLAIN}


@SETTINGS
@given(
    st.text(alphabet="abcXYZ019_.-", max_size=20),
    st.text().filter(lambda text: "\0" not in text),
)
def test_round_trip(namespace: str, secret: str) -> None:
    value = encrypt(PUBLIC, namespace, secret)
    assert decrypt([KEY], value) == (namespace, secret)
    assert decrypt_environ({"A": value}, [KEY], {namespace}) == {"A": secret}


@SETTINGS
@given(
    st.one_of(
        st.text(),
        st.binary().map(lambda b: base64.b64encode(b).decode()),
        st.binary().map(lambda b: base64.b64encode(b"openssh-key-v1\0" + b).decode()),
        st.binary().map(
            lambda b: base64.b64encode(
                b"openssh-key-v1\0\0\0\0\4none\0\0\0\4none\0\0\0\0" + b
            ).decode()
        ),
    )
)
def test_key_parsers_raise_only_key_format_error(text: str) -> None:
    for parse in (parse_public_key, parse_private_keys):
        with contextlib.suppress(KeyFormatError):
            parse(text)
    wrapped = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{text}\n-----END OPENSSH PRIVATE KEY-----"
    with contextlib.suppress(KeyFormatError):
        parse_private_keys(wrapped)
