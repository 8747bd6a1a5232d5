"""Who is told about an alert, and through which channels: the ``[notify]`` routes.

A route serves regions — a province's 2-digit prefix (``"44"``: every region of
Guangdong) or a full 6-digit region code — and sends through one or more Apprise
URLs (``mailto://``, ``dingtalk://``, ``wecombot://``, ``slack://``, ``json://`` for a
webhook, ...: whatever Apprise supports; each URL is a **channel**). A route takes
the alerts at or above its ``min_severity`` that name one of its regions, and is
told only about its own sides: the two sides of a joint review (双地联查) reach the
two centers' routes, each with its own duty. ``max_messages`` per ``per_s`` seconds
limits how many messages a channel gets; alerts beyond it are folded into digests
of up to ``digest_size`` alerts (never dropped: the store keeps every alert, the
outbox every notification).

In the config file named by ``FUNDWATCH_CONFIG``::

    [notify]
    retry_base_s = 5        # first retry after this long, doubling ...
    retry_max_s = 300       # ... up to this

    [[notify.routes]]
    name = "maoming"
    regions = ["440900"]
    urls = ["json://127.0.0.1:8080/fundwatch", "mailto://user:pass@example.com"]
    min_severity = "warning"
    max_messages = 10
    per_s = 3600

The key that makes person pseudonyms (``FUNDWATCH_NOTIFY_SECRET`` or
``[fundwatch] notify_secret``) must be set whenever a route is.

>>> routing = Routing.from_config({"routes": [
...     {"name": "guangdong", "regions": ["44"], "urls": ["json://127.0.0.1:9/hook"]},
...     {"name": "nanning", "regions": ["450100"], "urls": ["json://127.0.0.1:9/gx"],
...      "min_severity": "critical"}]}, "fundwatch.toml", secret="x" * 32)
>>> alert = {"regions": ["440900", "450100"], "severity": "warning"}
>>> [(r.route.name, r.channel, r.sides) for r in routing.recipients(alert)]
[('guangdong', 'guangdong#1', ('440900',))]
>>> Routing.from_config({"routes": [{"name": "x", "regions": ["4409"], "urls": []}]},
...                     "fundwatch.toml", secret="x" * 32)
Traceback (most recent call last):
...
infra.config.ConfigError: fundwatch.toml: [[notify.routes]] 'x': regions: '4409' is not a ...
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from infra.config import ConfigError
from rules.alerts import SEVERITIES

SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}
_REGION = re.compile(r"^([0-9]{2}|[0-9]{6})$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,60}$")
MIN_SECRET_LEN = 16


@dataclass(frozen=True)
class Route:
    name: str
    regions: tuple[str, ...]
    urls: tuple[str, ...] = field(repr=False)  # may carry tokens: never logged as is
    min_severity: str = "info"
    max_messages: int | None = None
    per_s: float = 3600.0
    digest_size: int = 50

    def serves(self, region: str) -> bool:
        return any(region.startswith(r) for r in self.regions)

    def accepts(self, severity: str) -> bool:
        return SEVERITY_RANK[severity] >= SEVERITY_RANK[self.min_severity]

    def channels(self) -> list[tuple[str, str]]:
        """(channel id, URL); the id names the URL by its place in the route, so a
        token rotated in the config still receives what was queued for it."""
        return [(f"{self.name}#{i}", url) for i, url in enumerate(self.urls, 1)]


@dataclass(frozen=True)
class Recipient:
    route: Route
    channel: str
    url: str = field(repr=False)
    sides: tuple[str, ...]  # the alert's regions this route speaks for


@dataclass(frozen=True)
class Routing:
    routes: tuple[Route, ...] = ()
    secret: str | None = field(default=None, repr=False)
    retry_base_s: float = 5.0
    retry_max_s: float = 300.0
    # How long a dispatcher may hold notifications it is sending before another
    # may take them over (it crashed): longer than any one send can take.
    lease_s: float = 120.0

    def recipients(self, alert: Mapping[str, Any]) -> Iterator[Recipient]:
        for route in self.routes:
            sides = tuple(r for r in alert["regions"] if route.serves(r))
            if sides and route.accepts(alert["severity"]):
                for channel, url in route.channels():
                    yield Recipient(route, channel, url, sides)

    def channel(self, channel: str) -> tuple[Route, str] | None:
        for route in self.routes:
            for name, url in route.channels():
                if name == channel:
                    return route, url
        return None

    def backoff_s(self, attempts: int) -> float:
        """Wait after the ``attempts``-th failure: doubling from ``retry_base_s``,
        capped so that a channel back after an outage is retried within
        ``retry_max_s``."""
        return min(self.retry_max_s, self.retry_base_s * 2 ** max(0, attempts - 1))

    @classmethod
    def from_config(cls, table: Mapping[str, Any], where: str,
                    secret: str | None = None) -> "Routing":
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: [notify] must be a table")
        known = {"routes", "retry_base_s", "retry_max_s", "lease_s"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"{where}: [notify].{unknown[0]} is not a known setting "
                              f"(known: {', '.join(sorted(known))})")
        numbers = {}
        for key in ("retry_base_s", "retry_max_s", "lease_s"):
            if key in table:
                value = table[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"{where}: [notify].{key} = {value!r} must be a "
                                      "positive number of seconds")
                numbers[key] = float(value)
        raw_routes = table.get("routes", [])
        if not isinstance(raw_routes, list):
            raise ConfigError(f"{where}: [notify].routes must be an array of tables "
                              "([[notify.routes]])")
        routes = []
        for i, raw in enumerate(raw_routes, 1):
            routes.append(_route(raw, f"{where}: [[notify.routes]] #{i}", where))
        names = [r.name for r in routes]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"{where}: [[notify.routes]] name {name!r} is used twice; "
                                  "each route needs its own name (it keys the outbox)")
        if routes and (not secret or len(secret) < MIN_SECRET_LEN):
            raise ConfigError(
                f"{where}: [notify] has routes but no pseudonym key: set "
                f"FUNDWATCH_NOTIFY_SECRET (or [fundwatch].notify_secret) to a random string "
                f"of at least {MIN_SECRET_LEN} characters — notifications name persons only "
                "by keyed pseudonyms")
        lease = numbers.get("lease_s", cls.lease_s)
        if lease < 60:
            raise ConfigError(f"{where}: [notify].lease_s = {lease!r} must be at least 60 "
                              "seconds (a send must fit in a lease with room to spare)")
        return cls(routes=tuple(routes), secret=secret, **numbers)


def _route(raw: Any, label: str, where: str) -> Route:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{label}: a route must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{label}: name = {name!r} must be 1-60 letters, digits, '_', '.' "
                          "or '-'")
    label = f"{where}: [[notify.routes]] {name!r}"
    known = {"name", "regions", "urls", "min_severity", "max_messages", "per_s",
             "digest_size"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{label}: {unknown[0]} is not a known route setting "
                          f"(known: {', '.join(sorted(known))})")
    regions = raw.get("regions")
    if not isinstance(regions, list) or not regions:
        raise ConfigError(f"{label}: regions must be a non-empty list of region codes or "
                          "province prefixes")
    for region in regions:
        if not isinstance(region, str) or not _REGION.match(region):
            raise ConfigError(f"{label}: regions: {region!r} is not a 2-digit province "
                              "prefix or a 6-digit region code")
    urls = raw.get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise ConfigError(f"{label}: urls must be a non-empty list of Apprise URLs")
    import apprise

    for i, url in enumerate(urls, 1):
        with apprise.LogCapture(level=logging.WARNING) as captured:
            plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            scheme = url.split("://", 1)[0] if "://" in url else url[:12]
            why = "; ".join(line.rsplit(" - ", 1)[-1].strip()
                            for line in captured.getvalue().splitlines() if line.strip())
            raise ConfigError(f"{label}: urls[{i}] (scheme {scheme!r}) is not a URL Apprise "
                              f"can send to ({why or 'unknown scheme'}; see the Apprise wiki "
                              "for each service's form)")
    severity = raw.get("min_severity", "info")
    if severity not in SEVERITY_RANK:
        raise ConfigError(f"{label}: min_severity = {severity!r} must be info, warning or "
                          "critical")
    max_messages = raw.get("max_messages")
    if max_messages is not None and (isinstance(max_messages, bool) or not isinstance(
            max_messages, int) or max_messages < 1):
        raise ConfigError(f"{label}: max_messages = {max_messages!r} must be a whole number "
                          "of at least 1 (leave it out for no limit)")
    per_s = raw.get("per_s", 3600)
    if isinstance(per_s, bool) or not isinstance(per_s, (int, float)) or per_s <= 0:
        raise ConfigError(f"{label}: per_s = {per_s!r} must be a positive number of seconds")
    digest_size = raw.get("digest_size", 50)
    if isinstance(digest_size, bool) or not isinstance(digest_size, int) or digest_size < 2:
        raise ConfigError(f"{label}: digest_size = {digest_size!r} must be a whole number of "
                          "at least 2")
    return Route(name=name, regions=tuple(regions), urls=tuple(urls), min_severity=severity,
                 max_messages=max_messages, per_s=float(per_s), digest_size=digest_size)
