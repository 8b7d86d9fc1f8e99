"""Operator commands of ``lowrank-server``: ``hash-key`` and ``audit``.

``lowrank-server hash-key [--generate] [--name NAME]``
    Read a key from standard input (or make a random one with ``--generate``) and print
    the ``[keys.NAME]`` table for the keys file: its SHA-256 and its key id.  With
    ``--generate`` the new key is printed too, once; store it, because the server keeps
    only its digest.  Example::

        printf '%s' "$NEW_KEY" | lowrank-server hash-key --name alice >> keys.toml

``lowrank-server audit --ledger PATH [--key-id ID] [--limit N]``
    Print the query audit of a usage ledger as JSON lines, oldest first: one object per
    charged ``POST /v1/complete`` with ``id``, ``time`` (seconds since the Unix epoch),
    ``key_id``, ``samples``, ``tokens``, ``n``, ``max_tokens``, ``seed``,
    ``aggregate``, ``next_token_probs`` and ``prompts``.  ``--limit N`` prints the last
    ``N`` entries.  It reads the database while the server runs, without blocking it.

Exit status 2 means bad arguments, empty input, or a ledger that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from server.keys import generate_key, key_digest, key_id_of_digest
from server.ledger import Ledger, LedgerError

__all__ = ["OPERATOR_COMMANDS", "run_operator_command"]

logger = logging.getLogger(__name__)

OPERATOR_COMMANDS = ("hash-key", "audit")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_operator_parser() -> argparse.ArgumentParser:
    """Return the parser of the operator commands."""
    parser = argparse.ArgumentParser(prog="lowrank-server", description="Operator commands.")
    commands = parser.add_subparsers(dest="command", required=True)

    hash_key = commands.add_parser(
        "hash-key",
        help="print the keys-file entry of a key read from standard input",
        description="Print the keys-file table of a key: its SHA-256 and its key id.",
    )
    hash_key.add_argument("--name", default="NAME", help="table name in the keys file")
    hash_key.add_argument(
        "--generate", action="store_true", help="make a random key instead of reading one"
    )

    audit = commands.add_parser(
        "audit",
        help="print the query audit of a ledger as JSON lines",
        description="Print charged queries, oldest first, one JSON object per line.",
    )
    audit.add_argument("--ledger", required=True, metavar="PATH", help="SQLite ledger file")
    audit.add_argument("--key-id", metavar="ID", help="only this key (key_ and 12 hex digits)")
    audit.add_argument("--limit", type=_positive, metavar="N", help="only the last N entries")
    return parser


def run_operator_command(
    argv: Sequence[str], stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    """Run ``hash-key`` or ``audit`` with arguments ``argv``; return the exit status."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    args = build_operator_parser().parse_args(argv)
    if args.command == "hash-key":
        return _hash_key(args.name, args.generate, stdin, stdout)
    return _audit(Path(args.ledger), args.key_id, args.limit, stdout)


def _hash_key(name: str, generate: bool, stdin: TextIO, stdout: TextIO) -> int:
    if generate:
        key = generate_key()
    else:
        # Only a trailing newline is dropped, so a key with inner spaces is hashed as given.
        key = stdin.read().rstrip("\r\n")
        if not key:
            print("lowrank-server hash-key: no key on standard input", file=sys.stderr)
            return 2
    digest = key_digest(key)
    if generate:
        print(f"# new key, shown only now: {key}", file=stdout)
    print(f"# key id {key_id_of_digest(digest)}", file=stdout)
    print(f"[keys.{_toml_key(name)}]", file=stdout)
    print(f'sha256 = "{digest.hex()}"', file=stdout)
    return 0


def _toml_key(name: str) -> str:
    """Return ``name`` as a TOML key: bare when it may be, else a quoted string."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    return json.dumps(name)


def _audit(path: Path, key_id: str | None, limit: int | None, stdout: TextIO) -> int:
    if not path.is_file():
        print(f"lowrank-server audit: no ledger file {path}; check --ledger", file=sys.stderr)
        return 2
    try:
        ledger = Ledger(path, read_only=True)
        try:
            entries = ledger.audit(key_id=key_id, limit=limit)
        finally:
            ledger.close()
    except LedgerError as error:
        print(f"lowrank-server audit: {error}", file=sys.stderr)
        return 2
    for entry in entries:
        print(json.dumps(entry.to_json(), separators=(",", ":")), file=stdout)
    return 0
