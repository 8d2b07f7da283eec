"""Mutations of valid bytes, for the fuzz tests: bit flips, cuts, inserts and bad lengths.

Random mutations rarely hit the few bytes that say how long something is, yet those are
what a parser trusts most; so a caller names its length fields and a good share of the
mutations go there, with the values that break parsers (0, odd, one off, all ones).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LengthField:
    offset: int
    size: Literal[2, 4]
    byteorder: Literal["little", "big"]


def _interesting(field: LengthField, current: int, total: int, rng: random.Random) -> int:
    top = (1 << (8 * field.size)) - 1
    choices = [0, 1, 2, 3, current - 1, current + 1, current + 2, current * 2, current // 2]
    choices += [total, total - current, top, top - 1, top >> 1, (top >> 1) + 1, 0xFFFF]
    choices.append(rng.randrange(top + 1))
    return rng.choice(choices) % (top + 1)


def _length(data: bytearray, rng: random.Random, fields: Sequence[LengthField]) -> str:
    field = rng.choice(fields)
    if field.offset + field.size > len(data):
        return "length field (already cut off)"
    end = field.offset + field.size
    current = int.from_bytes(data[field.offset : end], field.byteorder)
    value = _interesting(field, current, len(data), rng)
    data[field.offset : end] = value.to_bytes(field.size, field.byteorder)
    return f"length at {field.offset}: {current} -> {value}"


def _cut_at_field(data: bytearray, rng: random.Random, fields: Sequence[LengthField]) -> str:
    """Cut inside or just around a header: where a parser must notice that bytes are missing."""
    keep = max(0, min(len(data), rng.choice(fields).offset + rng.randrange(-6, 8)))
    del data[keep:]
    return f"cut to {keep} bytes, at a header"


def _flip(data: bytearray, rng: random.Random) -> str:
    position = rng.randrange(len(data))
    bit = rng.randrange(8)
    data[position] ^= 1 << bit
    return f"bit {bit} of byte {position} flipped"


def _byte(data: bytearray, rng: random.Random) -> str:
    position = rng.randrange(len(data))
    data[position] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256)))
    return f"byte {position} set to {data[position]:#04x}"


def _word(data: bytearray, rng: random.Random) -> str:
    position = rng.randrange(len(data))
    value = rng.choice((0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFEE000, 0xE000FFFE))
    data[position : position + 4] = value.to_bytes(4, "little")
    return f"4 bytes at {position} set to {value:#010x}"


def _truncate(data: bytearray, rng: random.Random) -> str:
    keep = rng.randrange(len(data))
    del data[keep:]
    return f"cut to {keep} bytes"


def _delete(data: bytearray, rng: random.Random) -> str:
    start = rng.randrange(len(data))
    end = min(len(data), start + rng.choice((1, 2, 4, 8, rng.randrange(1, 256))))
    del data[start:end]
    return f"bytes {start}-{end} removed"


def _insert(data: bytearray, rng: random.Random) -> str:
    position = rng.randrange(len(data) + 1)
    if rng.random() < 0.5 and data:
        start = rng.randrange(len(data))
        chunk = bytes(data[start : start + rng.randrange(1, 64)])
    else:
        chunk = rng.randbytes(rng.choice((1, 2, 4, 8, rng.randrange(1, 128))))
    data[position:position] = chunk
    return f"{len(chunk)} bytes inserted at {position}"


_MUTATIONS: tuple[Callable[[bytearray, random.Random], str], ...] = (
    _flip,
    _flip,
    _byte,
    _word,
    _truncate,
    _delete,
    _insert,
)


def mutate(
    data: bytes, rng: random.Random, fields: Sequence[LengthField] = ()
) -> tuple[bytes, str]:
    """`data` after one to four mutations, and what they were (for a failure message)."""
    mutated = bytearray(data)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        if not mutated:
            break
        if fields and rng.random() < 0.4:
            at_field = _length if rng.random() < 0.75 else _cut_at_field
            done.append(at_field(mutated, rng, fields))
        else:
            done.append(rng.choice(_MUTATIONS)(mutated, rng))
    return bytes(mutated), "; ".join(done)
