"""Every dead letter fits the dead-letter topic, and carries its record's exact bytes
whenever they fit (``streams.deadletter``)."""
from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from streams.deadletter import (
    BYTES_COPY_MAX_BYTES,
    DEADLETTER_MAX_BYTES,
    TEXT_COPY_MAX_BYTES,
    deadletter_record,
)
from streams.records import MAX_RECORD_BYTES, Rejected, parse


def _letter(original: bytes) -> dict:
    try:
        parse(original)
    except Rejected as exc:
        reasons = exc.reasons
    else:
        raise AssertionError("the record was meant to be bad")
    return deadletter_record(original, reasons, stage="validate", topic="fundwatch.settlements",
                             partition=3, offset=41, key=b"P-1")


def _padded(size: int, fill: bytes = b"x") -> bytes:
    head, tail = b'{"schema": "settlement/v1", "pad": "', b'"}'
    return head + fill * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("size", [100, TEXT_COPY_MAX_BYTES, TEXT_COPY_MAX_BYTES + 1,
                                  MAX_RECORD_BYTES, MAX_RECORD_BYTES + 1,
                                  BYTES_COPY_MAX_BYTES])
def test_a_dead_letter_keeps_the_exact_bytes_and_fits_the_topic(size):
    original = _padded(size)
    letter = _letter(original)
    assert base64.b64decode(letter["original_b64"]) == original
    assert len(orjson.dumps(letter)) <= DEADLETTER_MAX_BYTES
    if size <= TEXT_COPY_MAX_BYTES:
        assert letter["original"] == original.decode()
        assert "original_text_left_out" not in letter
    else:
        assert letter["original"] is None and letter["original_text_left_out"] is True


def test_text_at_its_limit_fits_even_escaped():
    # Control characters are escaped six bytes each in JSON: the worst case for text.
    original = _padded(TEXT_COPY_MAX_BYTES, b"\x01")
    letter = _letter(original)
    assert letter["original"] == original.decode()
    assert len(orjson.dumps(letter)) <= DEADLETTER_MAX_BYTES


def test_a_record_too_large_for_a_dead_letter_is_named_by_its_place_size_and_digest():
    original = _padded(BYTES_COPY_MAX_BYTES + 1)
    letter = _letter(original)
    assert letter["original_b64"] is None and letter["original"] is None
    assert letter["original_left_out"] == {"bytes": len(original),
                                           "sha256": hashlib.sha256(original).hexdigest()}
    assert letter["source"] == {"topic": "fundwatch.settlements", "partition": 3,
                                "offset": 41, "key": "P-1"}
    assert [r["code"] for r in letter["reasons"]] == ["record_too_large"]
    assert len(orjson.dumps(letter)) < 10_000


def test_a_record_that_is_not_text_has_no_text_to_leave_out():
    original = b"\xff" + _padded(TEXT_COPY_MAX_BYTES + 1)[1:]
    letter = _letter(original)
    assert base64.b64decode(letter["original_b64"]) == original
    assert letter["original"] is None and "original_text_left_out" not in letter
    assert [r["code"] for r in letter["reasons"]] == ["not_utf8"]
