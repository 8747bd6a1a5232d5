"""Event-time progress: how far the stream has surely got, and which days it closed.

A rule that judges a period — a day's surge window, a month's deficit — must not
judge it while its events are still arriving. Records of one day do not arrive
together: the live worker reads several source partitions at their own pace (a
backlog replay can put one partition days ahead of another), and a province's
platform may send its settlements hours late. So the drivers keep a **watermark**:
the event time up to which the stream is taken to be complete.

* Each *channel* (a source partition live; the one input file offline) reports the
  newest event time it has delivered and whether it is *idle* (caught up: nothing
  more is waiting in it). The low mark is the oldest newest-time among the busy
  channels — the slowest one holds everyone back — or, when every channel is
  idle, the newest time of all. Live, the reports reach the detect stage through
  each admission partition, in order with the records it forwarded, and the low
  mark is the least over those partitions (:func:`low_mark`).
* The watermark is that mark minus ``allowed_lateness`` (default 6 hours: the
  sources report platforms syncing up to 4 hours late).
* When the watermark passes an Asia/Shanghai midnight, every day before it is
  complete: the drivers call every closing rule's ``close(state, midnight)`` for
  every key that has state. The rule judges the periods that ended by then and
  that it has not judged yet (it keeps that in its state), so a watermark that
  jumps several days closes them all, in order, in one call.

A record older than the watermark when it arrives is *late*: it still counts in
everything it adds to (balances, windows not yet judged), but a day already closed
is not judged again. Both drivers — the live worker and the offline replay — use
these functions, so with no record later than ``allowed_lateness`` they close the
same days with the same data.

>>> from datetime import datetime
>>> from rules.alerts import SHANGHAI
>>> def ms(*a):
...     return int(datetime(*a, tzinfo=SHANGHAI).timestamp() * 1000)
>>> seen = {"settlements/0": [ms(2025, 3, 5, 9), False],
...         "settlements/1": [ms(2025, 3, 2, 23), False],    # a partition behind
...         "contributions/0": [ms(2025, 3, 1, 8), True]}    # idle: holds nothing
>>> views = {"0": seen, "1": {**seen, "settlements/0": [ms(2025, 3, 5, 10), False]}}
>>> low_mark(views.values()) == ms(2025, 3, 2, 23)
True
>>> last_midnight(ms(2025, 3, 3, 1)).isoformat()
'2025-03-03T00:00:00+08:00'
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterable, Mapping

from rules.alerts import SHANGHAI

DEFAULT_LATENESS_S = 6 * 3600

# channel name → [newest event time in epoch milliseconds, idle]
ChannelView = Mapping[str, list]


def event_ms(event) -> int:
    """A validated record's event time, epoch milliseconds."""
    moment = event.settled_at if event.kind == "settlement" else event.received_at
    return int(moment.timestamp() * 1000)


def is_late(event, closed_ms: int | None) -> bool:
    """A record arriving after the day of its event time was closed: it still counts
    in what it adds to, but that day is not judged again. Both drivers count such
    copies at the detect stage; a live worker should have none that a replay of the
    same stream has not (its watermark is never ahead of the replay's).

    >>> from types import SimpleNamespace as E
    >>> from datetime import datetime
    >>> from rules.alerts import SHANGHAI
    >>> e = E(kind="settlement", settled_at=datetime(2025, 3, 1, 23, tzinfo=SHANGHAI))
    >>> is_late(e, None), is_late(e, to_ms(datetime(2025, 3, 2, tzinfo=SHANGHAI)))
    (False, True)
    """
    return closed_ms is not None and event_ms(event) < closed_ms


def merge(view: ChannelView, update: ChannelView) -> dict[str, list]:
    """A channel view with newer reports folded in: times only grow; idleness is
    whatever the channel said last (its reports arrive in order).

    A report without a time (None: a channel idle since the reporter started, whose
    time it does not know) only changes idleness.

    >>> merge({"a": [5, False]}, {"a": [3, True], "b": [1, False], "c": [None, True]})
    {'a': [5, True], 'b': [1, False], 'c': [None, True]}
    """
    out = {name: list(value) for name, value in view.items()}
    for name, (t, idle) in update.items():
        old = out.get(name, [None, idle])[0]
        out[name] = [t if old is None else old if t is None else max(old, t), bool(idle)]
    return out


def low_mark(views: Iterable[ChannelView]) -> int | None:
    """The event time up to which every upstream partition has passed on everything.

    Each view is what one upstream partition (an admission partition, live) was
    last told about the source channels, in order with the records it forwarded.
    Its own mark is the oldest newest-time of the channels busy in it — or, when
    all are idle in it, the newest time of all: it has passed on everything there
    was. A channel busy with no time yet (not read from since the worker started,
    records waiting) holds every mark back. The low mark is the least of those marks: a view that says "idle" only
    speaks for what that partition has forwarded, not for the others.

    >>> low_mark([{"s0": [9, True], "s1": [5, False]},   # s1 busy: this one passed on up to 5
    ...           {"s0": [3, True], "s1": [4, True]}])   # told earlier: all read, up to 4
    4
    >>> low_mark([{"s0": [None, False]}]) is None      # no time known: no mark
    True
    >>> low_mark([{"s0": [9, False], "s1": [None, False]}]) is None  # s1 not read yet
    True
    >>> low_mark([{"s0": [9, False], "s1": [None, True]}])  # s1 empty: holds nothing
    9
    """
    marks = []
    for view in views:
        if any(t is None and not idle for t, idle in view.values()):
            # Busy with no time yet (a partition not read from since the start):
            # anything may still come from it.
            return None
        busy = [t for t, idle in view.values() if t is not None and not idle]
        every = [t for t, _ in view.values() if t is not None]
        if busy:
            marks.append(min(busy))
        elif every:
            marks.append(max(every))
        else:
            return None  # a partition that knows no time yet holds everything open
    return min(marks) if marks else None


def last_midnight(at_ms: int) -> datetime:
    """The latest Asia/Shanghai midnight at or before ``at_ms``."""
    moment = datetime.fromtimestamp(at_ms / 1000, SHANGHAI)
    return datetime(moment.year, moment.month, moment.day, tzinfo=SHANGHAI)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
