"""The detection core: one small protocol for rules, one engine, two drivers.

A rule is plain Python over validated events and its own keyed state. It never
imports Faust and never reads the clock: every time it knows comes from events.
The live driver (``streams.app``) keeps each rule's state in a changelog-backed
Faust table; the offline driver (``streams.offline``) keeps it in a dict. Both call
:meth:`DetectionCore.process`, so the same input gives the same alerts.

A rule declares what it is about (``subject_kind``), which key its state is
partitioned by (``key_kind``), its parameters, and ``apply(state, event) ->
(state, alerts)``. State must be JSON-able (the live driver serialises it) and
``apply`` must be idempotent for a re-delivered event, because the live path is
at-least-once.

A rule that judges whole periods (a day's window, a month) also defines
``close(state, midnight) -> (state, alerts)``, an event-time timer: the drivers
call it when the stream's watermark (``streams.watermark``) has passed
``midnight``, i.e. every day before it is complete. ``apply`` then only adds
events up; ``close`` judges, so the verdict does not depend on the order in which
records of different partitions happened to arrive.

Several rules may judge the same accounts: a pool's income and expenditure feed
its balance warning, its deficit and its surge. Those accounts are kept once, in a
:class:`Book` (``rules.pools.PoolBook``): the core applies every event to the book
of its key before any rule, keeps the book's state beside the rules' (slot
``"<book_id>|<key>"``), and at each close rolls the book first and then calls
``close(state, midnight, book)`` of every rule that names it in ``book``. Such a
rule has no ``apply``: it only judges.

A rule with an online model (``shared = True``, e.g. ``phantom_bed``) keeps per-key
state like any other, plus one *shared* state per detect partition — the model —
which no single key owns. Its ``close_shared(shard, states, shared, midnight)`` is
called once per partition at each close with the states of that partition's keys;
the shared state lives in slot ``"<rule_id>|~<partition>"``. The partition of a key
is the one the live worker's detect stage gives it (:func:`partition_of`, with the
configured partition count ``partitions``), so the offline driver runs exactly the
models the live workers run, each over the same keys.

>>> from rules.core import DetectionCore, load_rules
>>> core = DetectionCore(load_rules())
>>> {'institution', 'pool'} <= set(core.key_kinds())   # the kinds of key state is kept by
True
>>> [book.book_id for book in core.books]
['pool_fund']
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import pkgutil
import struct
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping, MutableMapping

if TYPE_CHECKING:
    from rules.registry import Registry

State = dict[str, Any]
Alert = dict[str, Any]

# How an event is keyed for each kind of partitioned state. None: the rule does not
# see that event (a contribution has no institution; a clinic has no chain).
KEYS: dict[str, Callable[[Any], str | None]] = {
    "institution": lambda e: getattr(e, "institution_id", None),
    "person": lambda e: getattr(e, "person_id", None),
    "pool": lambda e: e.pool_key,
    "chain": lambda e: getattr(e, "chain_id", None),
    # The insured person's province: a province-wide model (its pools side by side).
    "province": lambda e: (getattr(e, "insured_region", None) or "")[:2] or None,
}


#: Slots of a shared (per-partition) state: "<rule_id>|~<partition>". "~" sorts after
#: every key a contract id can start with, and no id of the contract starts with it.
SHARED = "~"


@functools.lru_cache(maxsize=1 << 18)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as aiokafka's) gives a key:
    the live worker sends each routed record to ``partition_of(b"<kind>:<key>")``, and
    the offline driver needs the same answer to emulate per-partition models.

    >>> partition_of(b"person:P1", 4), partition_of(b"person:P1", 1)
    (3, 0)

    Memoised (the most recent 262,144 keys): murmur2 in Python costs microseconds,
    and the same keys come back with every record and every daily close.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_MURMUR_M = 0x5BD1E995
_WORDS = sys.byteorder == "little"  # murmur2 reads the key as little-endian words


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as
    aiokafka's ``partitioner.murmur2`` computes it, about twice as fast: the words are
    read four bytes at a time and only the products are masked. Every key that is not
    in partition_of's cache passes here (each record's own id does), and the answer
    must be Kafka's, or records land on another partition than Java clients send them.

    >>> murmur2(b"person:P1"), murmur2(b"")
    (1601883779, 275646681)
    """
    length = len(data)
    whole = length & ~3
    words = (memoryview(data)[:whole].cast("I") if _WORDS
             else struct.unpack_from(f"<{length >> 2}I", data))
    m, mask = _MURMUR_M, 0xFFFFFFFF
    h = 0x9747B28C ^ length
    for k in words:
        k = (k * m) & mask
        h = ((h * m) & mask) ^ (((k ^ (k >> 24)) * m) & mask)
    extra = length & 3
    if extra:
        if extra == 3:
            h ^= data[whole + 2] << 16
        if extra >= 2:
            h ^= data[whole + 1] << 8
        h = ((h ^ data[whole]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


class RuleConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Param:
    """A rule parameter: its type, default, bounds and meaning."""

    type: type
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None

    def check(self, rule_id: str, name: str, value: Any) -> Any:
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and self.type is not bool or not isinstance(value, self.type):
            raise RuleConfigError(f"rules.{rule_id}.{name}: expected {self.type.__name__}, "
                                  f"got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise RuleConfigError(f"rules.{rule_id}.{name}: {value!r} is below the minimum "
                                  f"{self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise RuleConfigError(f"rules.{rule_id}.{name}: {value!r} is above the maximum "
                                  f"{self.maximum}")
        return value


class Book:
    """Accounts kept once per key for the rules that judge from them (see the module
    doc). ``apply(state, event) -> state`` adds an event; ``close(state, midnight)
    -> state`` is told that every day before ``midnight`` is complete. No alerts:
    judging is the rules' part. Same duties as a rule's state: JSON-able, replaced
    never mutated, idempotent close."""

    book_id: ClassVar[str]
    key_kind: ClassVar[str]

    def __init__(self, registry: "Registry | None" = None) -> None:
        self.registry = registry

    def wants(self, event: Any) -> bool:
        return True

    def apply(self, state: State | None, event: Any) -> State:
        raise NotImplementedError

    def close(self, state: State | None, midnight: datetime) -> State | None:
        return state


class Rule:
    """Base class of every rule. Subclasses set the class attributes and ``apply``
    (or, judging from a book, ``book`` and ``close(state, midnight, book)``)."""

    rule_id: ClassVar[str]
    description: ClassVar[str]
    subject_kind: ClassVar[str]
    key_kind: ClassVar[str]
    params: ClassVar[Mapping[str, Param]] = {}
    book: ClassVar[str | None] = None  # the Book this rule judges from, if any
    shared: ClassVar[bool] = False  # keeps a per-partition state too (close_shared)

    def __init__(self, registry: "Registry | None" = None,
                 provinces: Mapping[str, Mapping[str, Any]] | None = None,
                 **overrides: Any) -> None:
        self.registry = registry
        self.p = self._checked(overrides, f"rules.{self.rule_id}")
        # Per-province overrides: {"44": {"threshold": 0.3}} → that province's values.
        self._by_province = {
            str(prov): {**self.p, **self._checked(values, f"rules.{self.rule_id}.provinces."
                                                          f"{prov}", defaults=False)}
            for prov, values in (provinces or {}).items()}

    def _checked(self, values: Mapping[str, Any], where: str, defaults: bool = True) -> dict:
        unknown = set(values) - set(self.params)
        if unknown:
            raise RuleConfigError(f"{where}: unknown parameter(s) "
                                  f"{', '.join(sorted(unknown))}; known: "
                                  f"{', '.join(self.params) or 'none'}")
        names = self.params if defaults else values
        return {name: self.params[name].check(self.rule_id, name,
                                              values.get(name, self.params[name].default))
                for name in names}

    def param(self, name: str, province: str | None = None) -> Any:
        """A parameter's value, with the province's override where one is set."""
        if province is not None and province in self._by_province:
            return self._by_province[province][name]
        return self.p[name]

    def key(self, event: Any) -> str | None:
        return KEYS[self.key_kind](event)

    def wants(self, event: Any) -> bool:
        """Whether ``apply`` needs to see this event at all. Overriding it keeps
        events a rule would ignore off the detect topic (one fewer send each)."""
        return True

    def apply(self, state: State | None, event: Any) -> tuple[State | None, list[Alert]]:
        raise NotImplementedError

    def close(self, state: State | None, midnight: datetime) -> tuple[State | None,
                                                                      list[Alert]]:
        """Optional event-time timer: every day before ``midnight`` (Asia/Shanghai) is
        complete. Judge each period that has ended by then and was not judged yet,
        oldest first, and remember in the state that it was: a second call with the
        same or an earlier midnight must change nothing. Only data of days before
        ``midnight`` may decide a verdict (a live worker may already hold later
        days' records when it is called). Rules without periods leave it alone."""
        return state, []

    def close_shared(self, shard: int, states: Mapping[str, State], shared: State | None,
                     midnight: datetime) -> tuple[dict[str, State], State | None,
                                                  list[Alert], list[dict]]:
        """For ``shared = True``: every day before ``midnight`` is complete. ``states``
        maps each key of partition ``shard`` that has state to it; ``shared`` is the
        partition's own state. Returns (key → new state for the keys it changed, the
        new shared state, alerts, scores — ``{"settlement_id": ..., "scores": {...}}``
        per scored record). Same duties as ``close``: idempotent, only days before
        ``midnight`` may decide."""
        raise NotImplementedError

    def due(self, state: State) -> bool:
        """Whether the close may change anything for a key with this state (the
        close or ``close_shared`` would alert, or return a different state). Keys
        that are not due are not visited at the close: most of a province's
        millions of persons have nothing waiting on a given day. Never False
        where the close would act; the default, True, visits every key."""
        return True

    @classmethod
    def closes(cls) -> bool:
        """Whether the rule has a ``close`` timer."""
        return cls.close is not Rule.close or cls.shared


class DetectionCore:
    """Routes each event to the rules keyed by each of its keys and runs them.

    ``state`` is any mutable mapping: a dict offline, a Faust table live. Values are
    only ever replaced, never mutated in place, because a Faust table writes its
    changelog on assignment.
    """

    def __init__(self, rules: Iterable[Rule], books: Iterable[Book] | None = None,
                 partitions: int = 1) -> None:
        self.rules = list(rules)
        # The detect stage's partition count: shared states are kept per partition.
        self.partitions = partitions
        if books is None:
            from rules.pools import PoolBook

            # The pool book is kept even with every pool rule off: balances are what
            # a supervision center asks for first (``fundwatch pools``, replay).
            registry = next((r.registry for r in self.rules if r.registry is not None), None)
            books = [PoolBook(registry)]
        self.books = list(books)
        book_ids = {book.book_id: book for book in self.books}
        self._by_kind: dict[str, list[Rule | Book]] = {}
        for book in self.books:
            self._by_kind.setdefault(book.key_kind, []).append(book)
        self._readers: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.book is None:
                self._by_kind.setdefault(rule.key_kind, []).append(rule)
            elif rule.book not in book_ids:
                raise RuleConfigError(f"rule {rule.rule_id} judges from book {rule.book!r}, "
                                      f"which is not kept (books: {', '.join(book_ids)})")
            else:
                self._readers.setdefault(rule.book, []).append(rule)
        self._closing: dict[str, Rule | Book] = {
            rule.rule_id: rule for rule in self.rules if rule.book is None and rule.closes()}
        self._closing.update((book.book_id, book) for book in self.books)

    @property
    def has_timers(self) -> bool:
        return bool(self._closing)

    def key_kinds(self) -> list[str]:
        return list(self._by_kind)

    def closing_slot(self, slot: str) -> tuple[Rule | Book, str, str] | None:
        """(rule or book, key kind, key) of a state slot that has a ``close`` timer
        (a book's slot stands for the rules that judge from it too)."""
        step_id, _, key = slot.partition("|")
        step = self._closing.get(step_id)
        if not step or key.startswith(SHARED):
            return None
        return step, step.key_kind, key

    def due(self, slot: str, stored: Any) -> bool:
        """Whether a close must visit ``slot`` holding ``stored`` (its envelope): a
        slot of a rule or book with a close timer, and for a rule, due by the rule's
        own ``due``. A driver may keep an index of due slots with this."""
        found = self.closing_slot(slot)
        if not found or not stored:
            return False
        step = found[0]
        return isinstance(step, Book) or step.due(stored["v"])

    def slot_partition(self, slot: str) -> int | None:
        """The partition whose close visits ``slot`` (that of its key's copies), or
        None for a slot no close visits."""
        found = self.closing_slot(slot)
        if not found:
            return None
        return partition_of(f"{found[1]}:{found[2]}".encode(), self.partitions)

    def close(self, slots: Iterable[str], state: MutableMapping[str, Any],
              midnight: datetime) -> "Detection":
        """Run the ``close`` timer of each slot's rule or book (other slots, and
        slots not ``due``, are skipped), in slot order; after a book, the rules that
        judge from it. Failures are reported as ``process`` reports them."""
        detection = Detection([], [], {})
        when = f"at {midnight.isoformat()}"
        shards: dict[tuple[str, int], dict[str, Any]] = {}
        for slot in sorted(slots):
            found = self.closing_slot(slot)
            stored = state.get(slot) if found else None
            if not stored or not self.due(slot, stored):
                continue
            step, _, key = found
            if isinstance(step, Rule) and step.shared:
                shard = partition_of(f"{step.key_kind}:{key}".encode(), self.partitions)
                shards.setdefault((step.rule_id, shard), {})[key] = stored
                continue
            before = stored["v"]
            if isinstance(step, Book):
                after = _guarded(detection, step.book_id,
                                 lambda: (step.close(before, midnight), []),
                                 f"closing {slot} {when}")
                if after is None:
                    continue  # the rules must not judge a book that failed to roll
                book = after[0]
                for rule in self._readers.get(step.book_id, ()):
                    own_slot = f"{rule.rule_id}|{key}"
                    own = state.get(own_slot)
                    self._close_one(detection, rule, own_slot, own, when,
                                    lambda r=rule, v=own: r.close(v["v"] if v else None,
                                                                  midnight, book))
                # Written after its readers' states (see ``commit``): a book rolled
                # on with a reader's judgement lost would have that reader judge
                # again from a book that has already folded the days away.
                if book != before:
                    detection.updates[slot] = {"v": book, "at": stored["at"]}
            else:
                self._close_one(detection, step, slot, stored, when,
                                lambda: step.close(before, midnight))
        for (rule_id, shard), stored in sorted(shards.items()):
            self._close_shared(detection, self._closing[rule_id], shard, stored, state,
                               midnight, when)
        return detection

    @staticmethod
    def _close_shared(detection: "Detection", rule: Rule, shard: int,
                      stored: dict[str, Any], state: MutableMapping[str, Any],
                      midnight: datetime, when: str) -> None:
        shared_slot = f"{rule.rule_id}|{SHARED}{shard}"
        shared = state.get(shared_slot)
        result = _guarded(detection, rule.rule_id,
                          lambda: rule.close_shared(shard, {k: v["v"] for k, v in stored.items()},
                                                    shared["v"] if shared else None,
                                                    midnight),
                          f"closing partition {shard} {when}")
        if result is None:
            return
        changed, new_shared, fired, scores = result
        # The partition's state first, then its keys' (see ``commit``): the shared
        # state says what this close did, so a close re-run over keys whose new
        # state was lost can tell what it must not do twice.
        if new_shared != (shared["v"] if shared else None):
            detection.updates[shared_slot] = {"v": new_shared, "at": {}}
        for key, value in changed.items():
            detection.updates[f"{rule.rule_id}|{key}"] = {"v": value,
                                                          "at": stored[key]["at"]}
        detection.alerts.extend(fired)
        detection.scores.extend(scores)

    @staticmethod
    def _close_one(detection: "Detection", rule: Rule, slot: str, stored, when: str,
                   step: Callable[[], tuple]) -> None:
        result = _guarded(detection, rule.rule_id, step, f"closing {slot} {when}")
        if result is None:
            return
        after, fired = result
        if after != (stored["v"] if stored else None):
            detection.updates[slot] = {"v": after, "at": stored["at"] if stored else {}}
        detection.alerts.extend(fired)

    def routes(self, event: Any) -> list[tuple[str, str]]:
        """The (key kind, key) pairs this event must be delivered under."""
        out = []
        for kind, rules in self._by_kind.items():
            key = KEYS[kind](event)
            if key is not None and any(rule.wants(event) for rule in rules):
                out.append((kind, key))
        return out

    def process(self, kind: str, key: str, event: Any, state: MutableMapping[str, Any],
                position: tuple[Any, int] | None = None) -> "Detection":
        """Run every rule keyed by ``kind`` on the event; return alerts and failures.

        ``position`` = (partition, offset) of the event in the ordered stream that
        fed this stage. Each rule's state remembers, per partition, the highest
        offset it has applied, in the same value as the state itself — so a
        redelivered event (a restarted worker re-reading what it had not yet
        committed) is skipped, and even rules that sum money apply every event
        exactly once. Events of one partition reach a key in offset order: the
        live path keeps per-partition order from one stage to the next.

        A rule that raises leaves its state as it was and is reported in
        ``failures`` (the drivers dead-letter it with reason ``rule_failed``); the
        other rules still run, and the worker carries on.
        """
        detection = Detection([], [], {})
        part, offset = (str(position[0]), position[1]) if position else (None, None)
        # Books first: a rule of the same key may read them in the same record's close.
        for step in self._by_kind.get(kind, ()):
            if not step.wants(event):
                continue
            if isinstance(step, Book):
                step_id = step.book_id
                run = (lambda s=step: (s.apply(before, event), []))
            else:
                step_id = step.rule_id
                run = (lambda s=step: s.apply(before, event))
            slot = f"{step_id}|{key}"
            stored = state.get(slot)
            applied = stored["at"] if stored else {}
            if part is not None and applied.get(part, -1) >= offset:
                continue  # already applied: a redelivery
            before = stored["v"] if stored else None
            result = _guarded(detection, step_id, run, "on this record")
            if result is None:
                continue
            after, fired = result
            if after != before:
                # The position is recorded only with a change: an event that left
                # the state as it was gives the same result if it comes again.
                if part is not None:
                    applied = {**applied, part: offset}
                detection.updates[slot] = {"v": after, "at": applied}
            detection.alerts.extend(fired)
        return detection

    @staticmethod
    def commit(state: MutableMapping[str, Any], detection: "Detection") -> None:
        """Write the new rule states. The live driver calls this only once the
        alerts are acknowledged by the broker: state saved with its alert lost would
        make the redelivered event look applied and the alert would never come.

        The slots are written in the order ``updates`` holds them, and that order is
        chosen so that any *prefix* of the writes is a state a re-run can start from:
        a worker killed part-way leaves exactly such a prefix in the changelog (one
        partition, written in order). A close writes each book after the rules that
        judge from it (the book folds days away once they are judged), and a shared
        state before its keys' states (it records what the close did)."""
        for slot, value in detection.updates.items():
            state[slot] = value


class ClosingIndex:
    """The state slots a close must visit (``DetectionCore.due``), for both drivers.

    Built from the state the first time a close needs it (a driver may start with
    state it did not write: a table recovered from its changelog, a resumed
    replay), then kept by every write (``update``). A close used to read every slot
    — every person of a province, each day — while most have nothing waiting.
    ``belongs(slot)`` keeps a live detect partition's index to its own slots.

    >>> core = DetectionCore(load_rules())
    >>> index = ClosingIndex(core)
    >>> state = {"pool_fund|440300:employee": {"v": {"months": {}}, "at": {}},
    ...          "unfiled_cross_region|H1": {"v": {}, "at": {}}}   # no close timer
    >>> sorted(index.slots_due(state))
    ['pool_fund|440300:employee']
    >>> index.update({"pool_fund|110100:resident": {"v": {"months": {}}, "at": {}}})
    >>> sorted(index.slots_due(state))
    ['pool_fund|110100:resident', 'pool_fund|440300:employee']
    """

    def __init__(self, core: DetectionCore,
                 belongs: Callable[[str], bool] = lambda slot: True) -> None:
        self.core = core
        self.belongs = belongs
        self.slots: set[str] | None = None  # None: to be built from the state

    def slots_due(self, state: Mapping[str, Any]) -> set[str]:
        if self.slots is None:
            self.slots = {slot for slot in list(state)
                          if self.core.closing_slot(slot) and self.belongs(slot)
                          and self.core.due(slot, state.get(slot))}
        return self.slots

    def update(self, changes: Mapping[str, Any]) -> None:
        """Slots just written (with their new envelopes)."""
        if self.slots is None:
            return  # built from the state, writes included, when first needed
        for slot, stored in changes.items():
            if self.core.due(slot, stored):
                self.slots.add(slot)
            else:
                self.slots.discard(slot)


@dataclass
class Detection:
    alerts: list[Alert]
    failures: list[tuple[str, str]]  # (rule_id, message)
    updates: dict[str, Any] = field(default_factory=dict)  # slot → new state envelope
    # {"settlement_id", "scores": {rule_id: score}} per record a model scored
    scores: list[dict] = field(default_factory=list)


def _guarded(detection: Detection, step_id: str, step: Callable[[], tuple], what: str
             ) -> tuple | None:
    """Run one rule or book step; one that raises is reported in
    ``detection.failures`` (its state stays as it was) instead of stopping the other
    rules or the worker."""
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - one rule's bug must not stop the rest
        detection.failures.append(
            (step_id, f"rule {step_id} failed {what}: {type(exc).__name__}: {exc}"))
        return None


def _rule_classes(module) -> list[type[Rule]]:
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Rule) and obj is not Rule and obj.__module__ == module.__name__
            and getattr(obj, "rule_id", None)]


def discover() -> dict[str, tuple[type[Rule], str]]:
    """Every rule class: built-ins under ``rules/builtin`` and entry point group
    ``fundwatch.rules``; maps rule_id → (class, where it came from)."""
    from rules import builtin

    found: dict[str, tuple[type[Rule], str]] = {}
    for info in pkgutil.iter_modules(builtin.__path__):
        module = importlib.import_module(f"rules.builtin.{info.name}")
        for cls in _rule_classes(module):
            found[cls.rule_id] = (cls, f"builtin:{module.__name__}")
    for ep in importlib.metadata.entry_points(group="fundwatch.rules"):
        obj = ep.load()
        classes = _rule_classes(obj) if inspect.ismodule(obj) else [obj]
        for cls in classes:
            if cls.rule_id in found:
                raise RuleConfigError(f"entry point {ep.name} ({ep.value}) defines rule "
                                      f"{cls.rule_id!r}, already defined by "
                                      f"{found[cls.rule_id][1]}")
            found[cls.rule_id] = (cls, f"entry point:{ep.value}")
    return found


def config_problems(config: Any, classes: Mapping[str, tuple[type[Rule], str]]) -> list[str]:
    """Every problem of a ``[rules]`` configuration against the rules' declarations,
    each as ``rules.<id>[.provinces.<pp>][.<param>]: what is wrong`` — all of them
    at once, so a data engineer fixes a file in one pass rather than one per start.

    >>> classes = discover()
    >>> for problem in config_problems({"unfiled_cross_region": {"min_settlements": -3,
    ...         "provinces": {"4501": {}}}, "no_such_rule": {}}, classes):
    ...     print(problem.split(";")[0])
    rules.no_such_rule: unknown rule id
    rules.unfiled_cross_region.min_settlements: -3 is below the minimum 1
    rules.unfiled_cross_region.provinces.4501: a province is its two-digit prefix (e.g. "44")
    """
    if not isinstance(config, Mapping):
        return [f"rules: should be a table of rule tables, got {type(config).__name__}"]
    problems = [f"rules.{rule_id}: unknown rule id; known: {', '.join(sorted(classes))}"
                for rule_id in sorted(set(config) - set(classes))]
    for rule_id in sorted(set(config) & set(classes)):
        rule_cls, where = classes[rule_id][0], f"rules.{rule_id}"
        conf = config[rule_id]
        if not isinstance(conf, Mapping):
            problems.append(f"{where}: should be a table of parameters, got "
                            f"{type(conf).__name__}")
            continue
        found = _param_problems(rule_cls, {k: v for k, v in conf.items()
                                         if k not in ("enabled", "provinces")}, where)
        if not isinstance(conf.get("enabled", True), bool):
            found.append(f"{where}.enabled: expected true or false, got {conf['enabled']!r}")
        provinces = conf.get("provinces", {})
        if not isinstance(provinces, Mapping):
            found.append(f"{where}.provinces: should be a table of province tables")
            provinces = {}
        for province, values in provinces.items():
            at = f"{where}.provinces.{province}"
            if not (isinstance(province, str) and len(province) == 2 and province.isdigit()):
                found.append(f'{at}: a province is its two-digit prefix (e.g. "44")')
            elif not isinstance(values, Mapping):
                found.append(f"{at}: should be a table of parameters")
            else:
                found += _param_problems(rule_cls, values, at)
        if not found:
            try:  # what only the rule itself can check: a combination, a table file
                rule_cls(**{k: v for k, v in conf.items() if k != "enabled"})
            except RuleConfigError as exc:
                found.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - a rule's own check, reported as such
                found.append(f"{where}: {type(exc).__name__}: {exc}")
        problems += found
    return problems


def _param_problems(cls: type[Rule], values: Mapping[str, Any], where: str) -> list[str]:
    problems = []
    unknown = sorted(set(values) - set(cls.params))
    if unknown:
        problems.append(f"{where}: unknown parameter(s) {', '.join(unknown)}; known: "
                        f"{', '.join(cls.params) or 'none'}")
    for name in sorted(set(values) & set(cls.params)):
        try:
            cls.params[name].check(cls.rule_id, name, values[name])
        except RuleConfigError as exc:  # the message names rules.<id>.<name>; say where
            problems.append(f"{where}.{name}:{str(exc).split(':', 1)[1]}")
    return problems


def raise_config_problems(problems: list[str], source: str | None = None) -> None:
    """One RuleConfigError naming the file (``source``) and every problem."""
    if problems:
        prefix = f"{source}: " if source else ""
        if len(problems) == 1:
            raise RuleConfigError(prefix + problems[0])
        raise RuleConfigError(f"{len(problems)} problems in the rules configuration:\n"
                              + "\n".join(f"  {prefix}{p}" for p in problems))


def load_rules(config: Mapping[str, Mapping[str, Any]] | None = None,
               registry: "Registry | None" = None, source: str | None = None) -> list[Rule]:
    """Instantiate every discovered rule with its configured parameters.

    ``config`` maps rule_id → {"enabled": bool, <param>: value, "provinces":
    {"44": {<param>: value}}}; rules not named are enabled with their defaults.
    ``source`` (the config file) prefixes every problem found.
    """
    config = dict(config or {})
    classes = discover()
    raise_config_problems(config_problems(config, classes), source)
    rules = []
    for rule_id in sorted(classes):
        cls, _ = classes[rule_id]
        conf = dict(config.get(rule_id, {}))
        if not conf.pop("enabled", True):
            continue
        rules.append(cls(registry=registry, **conf))
    return rules
