"""Secrets in the knot (K-21, K-24..K-26, E-21..E-23), through protocol.secrets.

protocol.secrets is written by another helper; these tests are skipped only while
that module is absent. The ciphertexts are made here from K-26 with PyNaCl.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os

import pytest

from knot.exitcodes import EXIT_SETUP_FAILED
from knot.spec import Secrets

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = [
    requires_root,
    pytest.mark.skipif(importlib.util.find_spec("protocol.secrets") is None,
                       reason="protocol.secrets is not there yet"),
]


def _h(data: bytes) -> str:
    return base64.b64encode(hashlib.blake2b(data, digest_size=6).digest()).decode()


def encrypt(public: bytes, namespace: str, secret: str) -> str:
    from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
    from nacl.public import PublicKey, SealedBox

    box = SealedBox(PublicKey(crypto_sign_ed25519_pk_to_curve25519(public)))
    cipher = box.encrypt(f"{namespace}:{secret}".encode())
    return (f"v2:{_h(public)}:{_h(namespace.encode())}:{_h(secret.encode())}:"
            f"{base64.b64encode(cipher).decode()}")


@pytest.fixture
def key(env):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    path = env.tmp / "secrets.key"
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    os.chmod(path, 0o600)
    public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
    return path, public


def test_secrets_are_decrypted_and_override_environ(env, key):
    path, public = key
    secrets = Secrets(key_file=str(path), namespaces=("", "ns"),
                      environ=(("PW", (encrypt(public, "ns", "s3cret"),)),))
    spec = env.spec("echo PW=$PW", environ=(("PW", "plain"),), secrets=secrets)
    code, knot = env.run(spec)
    assert code == 2, knot.stderr_text()
    assert "PW=s3cret" in knot.log_text()                               # E-22


def test_secret_environ_file_is_read_from_the_image(env, key):
    path, public = key
    (env.image / "config" / "secrets.yaml").write_text(
        f"PW: [{encrypt(public, '', 'from-file')}]\n")
    secrets = Secrets(key_file=str(path), namespaces=("",),
                      environ_file="/config/secrets.yaml")
    code, knot = env.run(env.spec("echo PW=$PW", secrets=secrets))
    assert "PW=from-file" in knot.log_text(), knot.stderr_text()


def test_wrong_namespace_fails_setup(env, key):                         # E-23
    path, public = key
    secrets = Secrets(key_file=str(path), namespaces=("",),
                      environ=(("PW", (encrypt(public, "x", "s"),)),))
    code, knot = env.run(env.spec("echo PW=$PW", secrets=secrets))
    assert code == EXIT_SETUP_FAILED
    text = knot.stderr_text()
    assert text.count("\n") == 1 and "decrypt secrets" in text and "secret-environ" in text
