"""The cyclic garbage collector, set for a process that decodes records all day.

CPython runs a collection of its youngest generation after every 700 container
objects allocated, and a full one, which visits every tracked object of the
heap, every 100 of those. A worker allocates a few hundred objects per record
(each decoded message, event and state slot is a tree of dicts and lists), and
its heap holds everything imported at start (Faust, aiokafka, River, pandas,
SQLAlchemy: about 190,000 objects in a worker) besides the tables, so the full
collections came back every second and each visited all of it. Measured (a
``gc.callbacks`` probe in a worker under ``python bench/throughput.py --days
30``, 62,099 records): 13.0 s of the worker's life in the collector (its
throughput phase took 48 s), 9.9 s of it in 48 full collections, ~200 ms each;
py-spy had charged that time to the lines that allocated, above all the
decoding of the detect stage's messages.

:func:`settled` moves what exists at start into the permanent generation
(``gc.freeze``: the modules and the app are never garbage, and a full
collection no longer visits them) and collects the youngest generation every
:data:`YOUNG_THRESHOLD` allocations instead of 700. The records' own objects
rarely form cycles (reference counting frees them); what does (asyncio's
futures and tracebacks) is still collected, later. Same probe after: 0.5 s in
the collector (4 full collections).
"""
from __future__ import annotations

import contextlib
import gc

YOUNG_THRESHOLD = 50_000  # CPython's default is 700


@contextlib.contextmanager
def settled():
    """Within: the heap built so far frozen, the young generation collected every
    YOUNG_THRESHOLD allocations. Enter once the process has built what it keeps for
    its whole run (a worker's app; a replay's rules); leaving puts the collector
    back as it was, so a command run inside another process (the tests) leaves it
    unchanged.

    >>> before = gc.get_threshold()
    >>> with settled():
    ...     gc.get_threshold()[0] == YOUNG_THRESHOLD and gc.get_freeze_count() > 0
    True
    >>> gc.get_threshold() == before
    True
    """
    threshold = gc.get_threshold()
    gc.collect()  # what start-up left over as garbage, rather than freeze it
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
