"""Dead-letter records: what was rejected, why, and where it came from.

A rejected record is never dropped: it goes to ``fundwatch.deadletter`` (live) or
to the rejects output (offline) with its original bytes, every reason, and its
source position, so that it can be fixed at the source and re-sent.

>>> from streams.records import Reason
>>> rec = deadletter_record(b'{"schema": "settlement/v1"', [Reason("not_json", "cut")],
...                         stage="validate", topic="fundwatch.settlements", partition=0,
...                         offset=17, key=b"P1")
>>> rec["reasons"][0]["code"], rec["source"]["offset"], rec["original"]
('not_json', 17, '{"schema": "settlement/v1"')
"""
from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

from infra.topics import MAX_MESSAGE_BYTES

SCHEMA = "deadletter/v1"

#: A dead letter carries its record's text beside the exact bytes only up to this
#: size: both copies of a large record made a dead letter larger than a Kafka
#: message may be (a bad record of 1 MB: 2,335,085 bytes), the send failed and
#: stopped the worker, and every successor would meet the same record again.
TEXT_COPY_MAX_BYTES = 256 << 10
#: The largest dead letter: the base64 of a record as large as a default topic
#: holds (1 MB; ``streams.records.MAX_RECORD_BYTES``), with its reasons and room to
#: spare. The dead-letter topic is made to take it (``infra.topics``), the worker's
#: producer to send it (``streams.app``).
DEADLETTER_MAX_BYTES = MAX_MESSAGE_BYTES
#: A record larger than this (on a cluster whose input topics were given a larger
#: limit) does not fit a dead letter: its bytes stay at their source position,
#: which the dead letter names, with their size and SHA-256.
BYTES_COPY_MAX_BYTES = 3_000_000  # its base64: 4,000,000 bytes, under DEADLETTER_MAX_BYTES

#: Reasons the pipeline itself adds (the contract's are ``streams.records.REASON_CODES``).
PIPELINE_CODES = {
    "rule_failed": "a rule raised an error on an accepted record; the record counted, "
                   "that rule's state is unchanged; fix the rule and replay the record",
    "internal_error": "fundwatch failed on this record for a reason that is not the "
                      "record's fault; it is kept here to be replayed",
}


def deadletter_record(original: bytes, reasons: Iterable, *, stage: str, topic: str | None,
                      partition: int | None, offset: int | None,
                      key: bytes | None) -> dict:
    """The dead letter of ``original``, rejected for ``reasons`` at ``stage``.

    >>> big = deadletter_record(b"x" * (TEXT_COPY_MAX_BYTES + 1), [], stage="validate",
    ...                         topic="t", partition=0, offset=1, key=None)
    >>> big["original"], big["original_text_left_out"], len(big["original_b64"])
    (None, True, 349528)
    """
    try:
        text: str | None = original.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    record = {
        "schema": SCHEMA,
        "stage": stage,
        "reasons": [{"code": r.code, "message": r.message} for r in reasons],
        "source": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key.decode("utf-8", "backslashreplace") if key is not None else None,
        },
        # The exact bytes; the text too when it is text, for people to read.
        "original_b64": base64.b64encode(original).decode("ascii"),
        "original": text,
    }
    if text is not None and len(original) > TEXT_COPY_MAX_BYTES:
        record["original"] = None
        record["original_text_left_out"] = True
    if len(original) > BYTES_COPY_MAX_BYTES:
        record["original_b64"] = None
        record["original_left_out"] = {
            "bytes": len(original), "sha256": hashlib.sha256(original).hexdigest()}
    return record
