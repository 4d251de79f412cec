"""lithos_crypt: encrypt secrets for `secret-environ`, and check or decrypt them (§2.8).

Owns the command line only; the format and the cryptography are protocol/secrets.py's.
Rules: every error is one line on stderr and exit code 1, usage errors included (the
original used clap); decrypted secrets go to stdout only, never into a message.
Imports protocol only.
"""

from __future__ import annotations

import argparse
import errno
import sys

from protocol.secrets import (
    NAMESPACE_RE,
    NAMESPACE_RULE,
    PrivateKey,
    SecretError,
    decrypt,
    encrypt,
    key_hash,
)
from protocol.sshkeys import KeyFormatError, parse_private_keys, parse_public_key

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

EXIT_OK = 0
EXIT_ERROR = 1

DESCRIPTION = """\
An utility to encrypt secrets for lithos. It also allows to decrypt secrets
for introspection if you have access to the private key (only for debugging).
"""

EXAMPLES = """\
examples:
  # on the server, once: a private key (no passphrase), owned by root, mode 0600
  ssh-keygen -t ed25519 -N '' -f /etc/lithos/keys/main.key

  # anyone with the public key: encrypt for the sandbox's secrets-namespaces
  lithos_crypt encrypt -k main.key.pub -n myapp -d the_secret
  echo the_secret | lithos_crypt encrypt -k main.key.pub -n myapp --data-stdin

  # was this value encrypted for this key?
  lithos_crypt check-key -k main.key.pub -d v2:ROit92I5:KqWSX0BY:8MtOoWUX:nHcV...

  # debugging, as root: prints "myapp:" to stderr and the secret to stdout
  lithos_crypt decrypt -i /etc/lithos/keys/main.key -d v2:ROit92I5:KqWSX0BY:...

See docs/secrets.md for the walkthrough and the v2 format.
"""


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that exits 1 on usage errors (clap did) and never calls sys.exit."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise _Exit(EXIT_ERROR)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def _namespace(text: str) -> str:
    if not NAMESPACE_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid namespace, {NAMESPACE_RULE}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lithos_crypt",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enc = commands.add_parser(
        "encrypt",
        help="Encrypt secret value to put in config",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enc.add_argument(
        "-k",
        "--key-file",
        required=True,
        help="an openssh-formatted ed25519 public key to use for encryption",
    )
    data = enc.add_mutually_exclusive_group(required=True)
    data.add_argument("-d", "--data", help="data to encrypt")
    data.add_argument(
        "--data-stdin",
        action="store_true",
        help="read the data to encrypt from stdin (one trailing newline is "
        "dropped); keeps the secret out of the process list",
    )
    enc.add_argument(
        "-n",
        "--namespace",
        default="",
        type=_namespace,
        help='secrets namespace; only processes "authorized" to read this '
        "namespace (secrets-namespaces) will be able to decrypt the data "
        '(default: "")',
    )

    dec = commands.add_parser(
        "decrypt",
        help="Decrypt secret value from config (for debugging)",
        description="Prints <namespace>: to stderr and the secret, without a newline, to "
        "stdout. Uses the last key of the file.",
    )
    dec.add_argument(
        "-i",
        "--key-file",
        required=True,
        help="an openssh-formatted ed25519 private key to use for decryption",
    )
    dec.add_argument("-d", "--data", required=True, help="the v2:... value to decrypt")

    check = commands.add_parser(
        "check-key", help="Check that the secret value is encrypted with specified public key"
    )
    check.add_argument(
        "-k", "--key-file", required=True, help="an openssh-formatted ed25519 public key"
    )
    check.add_argument("-d", "--data", required=True, help="the v2:... value to check")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "encrypt":
            return _encrypt(args.key_file, _data(args), args.namespace)
        if args.command == "decrypt":
            return _decrypt(args.key_file, args.data)
        return _check_key(args.key_file, args.data)
    except _Exit as done:
        return done.status
    except SecretError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_ERROR


def _data(args: argparse.Namespace) -> str:
    if not args.data_stdin:
        return str(args.data)
    text = sys.stdin.read()
    return text[:-1] if text.endswith("\n") else text


def _encrypt(key_file: str, data: str, namespace: str) -> int:
    public_key = _read_public_key(key_file)
    sys.stdout.write(encrypt(public_key, namespace, data) + "\n")
    return EXIT_OK


def _check_key(key_file: str, data: str) -> int:
    public_key = _read_public_key(key_file)
    if not data.startswith("v2:"):
        # The original printed "Only v1 secrets are supported" here, a typo (§2.8).
        raise SecretError("Only v2 secrets are supported")
    if data.split(":")[1] != key_hash(public_key):
        raise SecretError("key doesn't match")
    return EXIT_OK


def _decrypt(key_file: str, data: str) -> int:
    keys = _read_private_keys(key_file)
    namespace, secret = decrypt([keys[-1]], data)
    # The namespace goes to stderr, so that `$(lithos_crypt decrypt ...)` is the secret.
    sys.stderr.write(f"{namespace}:")
    sys.stderr.flush()
    sys.stdout.buffer.write(secret.encode())
    sys.stdout.flush()
    sys.stderr.write("\n")
    return EXIT_OK


def _read_public_key(path: str) -> bytes:
    """The key on the first line of `path` (the original read only that line)."""
    try:
        with open(path, encoding="utf-8") as file:
            line = file.readline()
        return parse_public_key(line)
    except OSError as exc:
        raise SecretError(f"{path}: {_os_error(exc)}") from None
    except (UnicodeDecodeError, KeyFormatError) as exc:
        raise SecretError(f"{path}: {exc}") from None


def _read_private_keys(path: str) -> list[PrivateKey]:
    # No owner/mode check here: this is a debugging tool run on a copy of the key too.
    try:
        with open(path, encoding="utf-8") as file:
            return parse_private_keys(file.read())
    except OSError as exc:
        raise SecretError(f"{path}: {_os_error(exc)}") from None
    except (UnicodeDecodeError, KeyFormatError) as exc:
        raise SecretError(f"{path}: {exc}") from None


def _os_error(exc: OSError) -> str:
    return f"{errno.errorcode.get(exc.errno or 0, 'error')} ({exc.strerror})"


if __name__ == "__main__":
    sys.exit(main())
