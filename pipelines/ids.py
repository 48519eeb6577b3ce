"""Unique, time-ordered identifiers for sessions, items, responses and events.

A process counter is not unique once several media-server replicas share a
conversation store or a log pipeline. These ids are 48 bits of milliseconds
followed by 80 random bits (the ULID layout), in Crockford base32: unique across
processes and machines, and sortable by creation time.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _base32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """``prefix_`` + 26 characters: 10 of time (ms), 16 random."""
    ms = time.time_ns() // 1_000_000
    return f"{prefix}_{_base32(ms, 10)}{_base32(secrets.randbits(80), 16)}"
