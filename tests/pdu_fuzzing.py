"""Fuzz cases for the receiver: valid PDUs and DIMSE messages, mutated, over raw sockets.

Each case is made from its seed and number alone (``make_case(seed, n)``), so a failure
is replayed by running that one case again. Three kinds:

- first PDU: a mutated A-ASSOCIATE-RQ (or another PDU where that one belongs) on a fresh
  connection;
- in an association: a valid association, then echo, store and release PDUs with one
  of them mutated at the PDU level (PDU and PDV lengths, control headers, types);
- DIMSE: a valid association and well-framed P-DATA whose command set or data set is
  mutated, which is what reaches ``decode_c_store_rq``, pynetdicom's decoding and the
  C-STORE handler.

After sending, the peer closes its writing side and reads until the receiver closes:
every case must end there, none may leave the receiver waiting.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared.headers import element_places
from tests.hostile_objects import (
    ENCODINGS,
    EXPLICIT_LE,
    MR_IMAGE_STORAGE,
    Encoding,
    identifying,
    length_fields,
    nested,
)
from tests.mutations import LengthField, mutate
from tests.raw_peer import (
    ABORT,
    C_STORE_RSP,
    COMMAND,
    IMPLICIT_LE,
    LAST,
    P_DATA_TF,
    RELEASE_RQ,
    VERIFICATION,
    associate_rq,
    c_echo_rq,
    c_store_rq,
    command_length_fields,
    fragments,
    p_data,
    parse_associate_ac,
    pdu_length_fields,
    read_pdus,
    response_of,
)

DEFLATED = "1.2.840.10008.1.2.1.99"
#: (context ID, abstract syntax, transfer syntax): one context per encoding stored
CONTEXTS = (
    (1, VERIFICATION, IMPLICIT_LE),
    (3, MR_IMAGE_STORAGE, EXPLICIT_LE.syntax),
    (5, MR_IMAGE_STORAGE, IMPLICIT_LE),
    (7, MR_IMAGE_STORAGE, "1.2.840.10008.1.2.2"),
    (9, MR_IMAGE_STORAGE, DEFLATED),
)
PROPOSED = [(cid, abstract, [syntax]) for cid, abstract, syntax in CONTEXTS]
MAX_PDU = 16384  # what the fuzzing peer accepts (the receiver's own maximum is its setting)


@dataclass(frozen=True)
class Seed:
    """A valid data set to mutate, with its context and where its lengths lie."""

    context_id: int
    data_set: bytes
    fields: tuple[LengthField, ...]


@dataclass(frozen=True)
class Case:
    number: int
    kind: str
    associate: bool  # open a valid association first
    pdus: tuple[bytes, ...]
    what: str

    def describe(self, seed: int) -> str:
        return f"case {self.number} of seed {seed} ({self.kind}: {self.what})"


@dataclass
class Outcome:
    statuses: list[int] = field(default_factory=list)  # of every C-STORE response
    associated: bool = False


def seeds(real_data_sets: Sequence[tuple[bytes, str]] = ()) -> list[Seed]:
    """Small data sets in every stored encoding, with sequences, and the real ones given."""
    by_syntax = {syntax: cid for cid, _abstract, syntax in CONTEXTS}
    made = [(identifying(enc, middle=nested(3, enc, defined=d)), enc) for enc in ENCODINGS
            for d in (True, False)]  # fmt: skip
    result = [Seed(by_syntax[enc.syntax], raw, _data_set_fields(raw, enc)) for raw, enc in made]
    for raw, syntax in real_data_sets:
        encoding = next((enc for enc in ENCODINGS if enc.syntax == syntax), None)
        fields = _data_set_fields(raw, encoding) if encoding else ()
        result.append(Seed(by_syntax[syntax], raw, fields))
    return result


def _data_set_fields(raw: bytes, enc: Encoding) -> tuple[LengthField, ...]:
    places = element_places(raw, implicit=enc.implicit, little_endian=enc.little_endian)
    return tuple(length_fields(places, enc.little_endian))


def _store(seed: Seed, message_id: int, max_pdu: int) -> list[bytes]:
    instance = f"1.2.826.0.1.3680043.8.498.7.{message_id}"
    command = c_store_rq(message_id, MR_IMAGE_STORAGE, instance)
    return fragments(seed.context_id, COMMAND, command, max_pdu) + fragments(
        seed.context_id, 0, seed.data_set, max_pdu
    )


def make_case(seed: int, number: int, corpus: Sequence[Seed]) -> Case:
    rng = random.Random(f"{seed}:{number}")
    kind = rng.choices(("first PDU", "in association", "DIMSE"), weights=(3, 3, 4))[0]
    if kind == "first PDU":
        return _first_pdu(rng, number, corpus)
    if kind == "in association":
        return _in_association(rng, number, corpus)
    return _dimse(rng, number, corpus)


def _first_pdu(rng: random.Random, number: int, corpus: Sequence[Seed]) -> Case:
    valid = associate_rq(PROPOSED, max_pdu=rng.choice((0, 4096, MAX_PDU, 0xFFFFFFFF)))
    base = rng.choices(
        (
            valid,
            p_data([(1, COMMAND | LAST, c_echo_rq(1))]),
            RELEASE_RQ,
            ABORT,
            b"\x02" + valid[1:],
        ),
        weights=(12, 2, 1, 1, 1),
    )[0]
    mutated, what = mutate(base, rng, pdu_length_fields(base))
    return Case(number, "first PDU", False, (mutated,), f"PDU type {base[0]:#04x}: {what}")


def _in_association(rng: random.Random, number: int, corpus: Sequence[Seed]) -> Case:
    seed = rng.choice(corpus)
    pdus = [
        p_data([(1, COMMAND | LAST, c_echo_rq(1))]),
        *_store(seed, 2, rng.choice((64, 1024, MAX_PDU))),
    ]
    pdus.append(RELEASE_RQ)
    target = rng.randrange(len(pdus))
    pdus[target], what = mutate(pdus[target], rng, pdu_length_fields(pdus[target]))
    if rng.random() < 0.1:  # a PDU of a type that has no place in an association
        pdus.insert(target, bytes([rng.choice((0x01, 0x02, 0x03, 0x08, 0xFF))]) + pdus[target][1:])
        what += "; a PDU of the wrong type before it"
    return Case(number, "in association", True, tuple(pdus), f"PDU {target}: {what}")


def _dimse(rng: random.Random, number: int, corpus: Sequence[Seed]) -> Case:
    seed = rng.choice(corpus)
    command = c_store_rq(2, MR_IMAGE_STORAGE, f"1.2.826.0.1.3680043.8.498.7.{number}")
    data_set, context_id, what = seed.data_set, seed.context_id, ""
    target = rng.choices(("command", "data set", "both", "context"), weights=(4, 5, 1, 1))[0]
    if target in ("command", "both"):
        if rng.random() < 0.2:  # an echo's command set on a storage context, and so on
            command = c_echo_rq(2)
        command, what = mutate(command, rng, command_length_fields(command))
        what = f"command: {what}"
    if target in ("data set", "both"):
        data_set, mutation = mutate(data_set, rng, seed.fields)
        what += f"{'; ' if what else ''}data set: {mutation}"
    if target == "context":
        context_id = rng.choice((0, 1, 2, 255, *[cid for cid, *_ in CONTEXTS]))
        what = f"context ID {context_id}"
    max_pdu = rng.choice((64, 1024, MAX_PDU))
    pdus = fragments(context_id, COMMAND, command, max_pdu) + fragments(
        context_id, 0, data_set, max_pdu
    )
    if rng.random() < 0.2:  # the data set before its command, or the command twice
        pdus = pdus[len(pdus) // 2 :] + pdus[: len(pdus) // 2]
        what += "; message halves swapped"
    return Case(number, "DIMSE", True, (*pdus, RELEASE_RQ), what)


def run_case(port: int, case: Case, timeout: float = 30.0) -> Outcome:
    """Send the case; read every answer until the receiver closes the connection.

    TimeoutError when the receiver neither answers nor closes for `timeout` seconds.
    """
    outcome = Outcome()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if case.associate:
            sock.sendall(associate_rq(PROPOSED, max_pdu=MAX_PDU))
            pdus = read_pdus(sock, timeout)
            kind, body = next(pdus)
            if kind != 0x02 or len(parse_associate_ac(body).contexts) != len(CONTEXTS):
                raise AssertionError(f"a valid association was refused (PDU type {kind:#04x})")
            outcome.associated = True
        try:
            sock.sendall(b"".join(case.pdus))
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the receiver closed first, having seen enough
            pass
        for kind, body in read_pdus(sock, timeout):
            response = response_of(body) if kind == P_DATA_TF else None
            if response is not None and response[0] == C_STORE_RSP:
                outcome.statuses.append(response[1])
    return outcome


def real_data_sets(testdata: Path) -> list[tuple[bytes, str]]:
    """Small real objects in the explicit, implicit, big endian and deflated encodings."""
    folder = testdata / "pydicom_mr_small_transfer_syntax_variants" / "dicom"
    names = {
        "MR_small.dcm": EXPLICIT_LE.syntax,
        "MR_small_implicit.dcm": IMPLICIT_LE,
        "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",
        "image_dfl.dcm": DEFLATED,
    }
    found = []
    for name, syntax in names.items():
        raw = (folder / name).read_bytes()
        meta_end = 144 + int.from_bytes(raw[140:144], "little")
        found.append((raw[meta_end:], syntax))
    return found
