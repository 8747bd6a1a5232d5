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
from typing import Iterable

SCHEMA = "deadletter/v1"

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
    try:
        text: str | None = original.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "schema": SCHEMA,
        "stage": stage,
        "reasons": [{"code": r.code, "message": r.message} for r in reasons],
        "source": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key.decode("utf-8", "backslashreplace") if key is not None else None,
        },
        # The exact bytes, always; the text too when it is text, for people to read.
        "original_b64": base64.b64encode(original).decode("ascii"),
        "original": text,
    }
