"""The supervision centers' inbox: web pages and a JSON API over the alert store.

``fundwatch serve`` runs :func:`create_app` under uvicorn. Pages (server-rendered
Jinja2, no build step, nothing fetched from the internet): the inbox (filters by
rule, severity, status and period; most severe and newest first; new alerts appear
without a reload — a small script polls ``/api/alerts``), the alert page (summary,
each side's duty and status side by side, the buttons for the caller's side, the
chart that fits the rule, the evidence, the settlements to pull, the history of
every change) and the pools page. The JSON API is the contract's "Inbox and
access".

Access is decided here, on the server, for every page and every call:

* a ``center`` sees an alert when one of its regions starts with the center's region
  (``440900``, or ``44`` for a provincial center); any other alert answers 404, as
  if it did not exist;
* a center changes only its own sides (``AlertStore.transition`` with its region);
  the other side of a joint review is not its to change;
* an ``auditor`` sees everything and changes nothing (403);
* pages need a login (argon2 password, a session in a signed cookie, CSRF tokens on
  every form, failed logins limited per name and per client); the API needs
  ``Authorization: Bearer TOKEN`` (GET requests also accept the page session, for
  the inbox's own polling); anything else is 401;
* persons appear as pseudonyms (``sinks.privacy.inbox_view``) to every role.

Every change goes through the store's lifecycle, so it is a row of the append-only
``alert_audit`` with the user, the time and the note.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from sinks.access import User, Users
from sinks.charts import STYLE as CHART_STYLE
from sinks.charts import Band, Bar, Rule, bar_chart, line_chart
from sinks.privacy import Pseudonymizer, inbox_view
from sinks.store import ACTIONS, CLOSED, SEVERITY_RANK, STATUSES, AlertStore, LifecycleError

TEMPLATES = Path(__file__).with_name("templates")
SESSION_HOURS = 8
MAX_ROWS = 300  # rows the inbox draws; more: narrow the filter
SEVERITIES = ("critical", "warning", "info")


# ── the pools ────────────────────────────────────────────────────────────────


class NoPools(Exception):
    """There is nothing to read the pools from; the message says why."""


class PoolSource:
    """Where the pools page and the pool alerts' timelines read the pool books: the
    running deployment's changelog (``FUNDWATCH_BOOTSTRAP_SERVERS`` set; read again
    after ``ttl_s``), or a replay of files (once), or nothing — then the page says so."""

    def __init__(self, settings, files: list[str] | None = None, pools_path: str | None = None,
                 ttl_s: float = 30.0) -> None:
        self.settings = settings
        self.files = list(files or [])
        self.pools_path = pools_path or settings.pools_path
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cached: tuple[float, str, dict] | None = None
        self._registry = None
        self._rule = None

    @property
    def where(self) -> str:
        if self.files:
            return ", ".join(self.files) + " (replayed)"
        if not self.settings.embedded_broker:
            return f"deployment {self.settings.app_id} at {self.settings.bootstrap_servers}"
        return ""

    def _load(self) -> dict:
        from sinks.balances import books_in, with_registry_pools

        if self._registry is None and self.pools_path:
            from rules.registry import Registry

            self._registry = Registry.load(self.pools_path)
        if self.files:
            import io

            from streams.replay import replay

            state = replay(self.files, self.settings, self._registry,
                           report=io.StringIO()).pipeline.state
        elif not self.settings.embedded_broker:
            from streams.live import read_table

            state = read_table(self.settings, "rule-state", prefix="pool_fund|")
        else:
            raise NoPools("There is no deployment to read the pools from: "
                          "FUNDWATCH_BOOTSTRAP_SERVERS is unset. Start the inbox with "
                          "`fundwatch serve --replay FILE --pools POOLS` to show the pools "
                          "of a replayed stream, or point it at a running cluster.")
        return with_registry_pools(books_in(state), self._registry)

    def books(self) -> tuple[str, dict]:
        with self._lock:
            fresh = self._cached and (self.files or time.monotonic() - self._cached[0]
                                      < self.ttl_s)
            if not fresh:
                self._cached = (time.monotonic(), self.where, self._load())
            return self._cached[1], self._cached[2]

    def rule(self):
        if self._rule is None:
            from rules.builtin.pool_balance_low import PoolBalanceLow

            conf = dict(self.settings.rules.get("pool_balance_low", {}))
            conf.pop("enabled", None)
            self._rule = PoolBalanceLow(registry=self._registry, **conf)
        return self._rule

    def lines(self):
        from sinks.balances import pool_lines

        where, books = self.books()
        return where, pool_lines(books, self._registry, self.rule())


def bands_of(rule, province: str) -> list[Band]:
    def value(name: str, default: float) -> float:
        got = rule.param(name, province) if rule is not None else None
        return float(got) if got is not None else default

    bands = [Band(None, value("critical_months", 3.0), "critical"),
             Band(value("critical_months", 3.0), value("warning_months", 6.0), "warning")]
    if rule is None or rule.param("surplus_months", province):
        bands.append(Band(value("surplus_months", 12.0), None, "surplus"))
    return bands


# ── charts per rule ──────────────────────────────────────────────────────────


@dataclass
class Chart:
    caption: str
    svg: str


def _f(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def charts_for(alert: dict, related: list[dict], pools: PoolSource | None) -> list[Chart]:
    """The charts that fit the rule, drawn from the alert's evidence (and, for a pool,
    the pool books when there are any to read); none when the evidence lacks what a
    chart needs."""
    ev = alert.get("evidence") or {}
    rule_id = alert["rule_id"]
    out: list[Chart] = []
    try:
        if rule_id == "cross_province_surge" and "baseline" in ev:
            out += _surge_charts(ev)
        elif rule_id.startswith("pool_"):
            out += _pool_charts(alert, related, pools)
        elif "score" in ev and "threshold" in ev:
            out += _score_charts(ev)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass  # a rule changed its evidence: show the evidence tables, no chart
    return out


def _surge_charts(ev: dict) -> list[Chart]:
    base = float(ev["baseline"])
    bars = [Bar(w["start"][5:10], float(w["amount"]), "base")
            for w in sorted(ev.get("baseline_windows") or [], key=lambda w: w["start"])]
    start = (ev.get("current_window") or {}).get("start", "")
    bars.append(Bar((start[5:10] + " now").strip(), float(ev["current"]), "current"))
    lines = [Rule(base * (1 + ev["threshold"]), f"threshold +{ev['threshold']:.0%}")]
    if ev.get("critical_threshold") is not None:
        lines.append(Rule(base * (1 + ev["critical_threshold"]),
                          f"critical +{ev['critical_threshold']:.0%}"))
    measure = str(ev.get("measure", "cost")).replace("_", " ")
    growth = f", {ev['growth']:+.0%} on the baseline" if ev.get("growth") is not None else ""
    return [Chart("Baseline weeks (blue) against the current week (red); the dashed lines "
                  "are the thresholds over the baseline mean.",
                  bar_chart(bars, title=f"cross-province {measure} per 7 days (¥){growth}",
                            lines=lines, labels_left=True))]


def _pool_charts(alert: dict, related: list[dict], pools: PoolSource | None) -> list[Chart]:
    pool = alert["subject"]["id"]
    province = pool[:2]
    ev = alert["evidence"]
    out: list[Chart] = []
    books = None
    if pools is not None:
        try:
            _where, all_books = pools.books()
            books = all_books.get(pool)
        except NoPools:
            books = None
        except Exception:  # noqa: BLE001 - the cluster is down: the evidence still shows
            books = None
    if books and books.get("months"):
        from rules.pools import month_rows, month_span

        months = sorted(books["months"])
        rows = month_rows(books, month_span(months[0], months[-1]))
        mop = [(r.month[2:], float(r.months_of_payment) if r.months_of_payment is not None
                else None) for r in rows]
        values = [v for _, v in mop if v is not None]
        if len(values) >= 2:
            bands = bands_of(pools.rule(), province)
            # The surplus band only where the line comes near it: drawn far above a
            # pool running short, it would squash the line that matters to the floor.
            bands = [b for b in bands if b.label != "surplus" or max(values) > 0.8 * b.low]
            surplus = any(b.label == "surplus" for b in bands)
            out.append(Chart("Months of payment (可支付月数) at each month's end, from the pool "
                             "books, against the warning bands (red: critical, amber: "
                             "warning" + (", blue: surplus)." if surplus else ")."),
                             line_chart(mop, title="months of payment, monthly",
                                        bands=bands)))
        out.append(Chart("The accumulated balance at each month's end, from the pool books.",
                         line_chart([(r.month[2:], r.balance_end / 100) for r in rows],
                                    title="accumulated balance (¥), monthly",
                                    floor_zero=False)))
    # What the alerts of this pool recorded, whatever the books: months of payment on
    # each day a balance alert was raised, against the lines of the bands.
    days = sorted({(a["evidence"]["day"], a["evidence"]["months_of_payment"], a["alert_id"])
                   for a in related + [alert] if a["rule_id"] == "pool_balance_low"
                   and a["subject"]["id"] == pool and "day" in a.get("evidence", {})})
    if len(days) >= 2 or (days and not books):
        source = next((a["evidence"] for a in related + [alert]
                       if a["rule_id"] == "pool_balance_low"), {})
        lines = [Rule(float(source[k]), f"{label} {float(source[k]):g}")
                 for k, label in (("critical_months", "critical below"),
                                  ("warning_months", "warning below"))
                 if _f(source.get(k)) is not None]
        bars = [Bar(day[5:], float(m), "current" if aid == alert["alert_id"] else "base")
                for day, m, aid in days[-12:]]
        out.append(Chart("Months of payment on the days this pool's balance alerts were "
                         "raised (red: this alert); the dashed lines are the bands' limits.",
                         bar_chart(bars, title="months of payment when alerted", lines=lines,
                                   labels_left=True)))
    if alert["rule_id"] == "pool_balance_low" and ev.get("baseline_months"):
        bars = [Bar(m["month"][2:], float(m["expenditure"]), "base")
                for m in ev["baseline_months"]]
        mean = _f(ev.get("mean_monthly_expenditure"))
        out.append(Chart("The expenditure of the months the measure averages; the dashed "
                         "line is their mean, which the balance is divided by.",
                         bar_chart(bars, title="monthly expenditure (¥)",
                                   lines=[Rule(mean, "mean")] if mean else [])))
    elif alert["rule_id"] == "pool_deficit" and "income" in ev:
        out.append(Chart("The month's income and expenditure (收不抵支 when red is taller).",
                         bar_chart([Bar("income", float(ev["income"]), "income"),
                                    Bar("expenditure", float(ev["expenditure"]),
                                        "expenditure")],
                                   title=f"{ev.get('month', '')} income and expenditure (¥)")))
    elif alert["rule_id"] == "pool_expenditure_surge" and ev.get("trend"):
        bars = [Bar(t["month"][2:], float(t["daily_rate"]), "base") for t in ev["trend"]]
        bars.append(Bar(str(ev.get("month", ""))[2:] + " now", float(ev["daily_rate"]),
                        "current"))
        projected = float(ev["projected_daily_rate"])
        excess = _f(ev.get("min_excess")) or 0.0
        lines = [Rule(projected * (1 + excess), f"alert line: +{excess:.0%} on the trend")]
        out.append(Chart("Daily expenditure per month: the trend months (blue) and the judged "
                         f"month (red); the trend projected ¥{projected:,.2f} a day for it, "
                         "and the dashed line is where an alert begins.",
                         bar_chart(bars, title="expenditure per day (¥)", lines=lines,
                                   labels_left=True)))
    return out


def _score_charts(ev: dict) -> list[Chart]:
    score, threshold = float(ev["score"]), float(ev["threshold"])
    chart = bar_chart([Bar("score", score, "current")], title="anomaly score",
                      lines=[Rule(threshold, f"threshold {threshold:.2f}")])
    out = [Chart("The model's score for this stay against the alert threshold.", chart)]
    standouts = ev.get("standouts") or {}
    if isinstance(standouts, dict) and standouts:
        from html import escape

        rows = "".join(
            f"<tr><td><code>{escape(str(name))}</code></td><td>{escape(str(s.get('value')))}"
            f"</td><td>{escape(str(s.get('mean')))}</td><td>"
            f"{'new (never varied before)' if s.get('z') is None else escape(str(s['z']))}"
            "</td></tr>"
            for name, s in standouts.items() if isinstance(s, dict))
        out.append(Chart("The features that stood out against what the model had learned "
                         "before this stay (z: standard deviations from the usual).",
                         '<table class="standouts"><thead><tr><th>feature</th><th>this stay'
                         '</th><th>usual</th><th>z</th></tr></thead><tbody>' + rows
                         + "</tbody></table>"))
    return out


# ── the application ──────────────────────────────────────────────────────────


def _pct(value: float | None) -> str:
    """A change as a signed whole percentage; no "-0%".

    >>> _pct(-0.003), _pct(0.78), _pct(None)
    ('0%', '+78%', '-')
    """
    if value is None:
        return "-"
    rounded = round(value * 100)
    return f"{rounded:+d}%" if rounded else "0%"


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def _error(status: int, message: str) -> JSONResponse:
    return _json({"error": message, "status": status}, status)


def _order(rows: list[dict]) -> list[dict]:
    """Most severe first; within a severity, the newest finding first."""
    rows = sorted(rows, key=lambda r: r["alert"]["detected_at"], reverse=True)
    return sorted(rows, key=lambda r: -SEVERITY_RANK[r["alert"]["severity"]])


def create_app(store: AlertStore, *, pseudonym_key: str | None = None,
               pools: PoolSource | None = None, https_only: bool = False,
               poll_s: float = 5.0) -> Starlette:
    """The inbox over ``store``. ``pseudonym_key``: the key of the person pseudonyms
    (give ``notify_secret`` so the inbox and the notifications agree; without it a key
    kept in the database is used)."""
    users = Users(store)
    pseudonym = Pseudonymizer(pseudonym_key or users.secret("pseudonym_key"))
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
    templates = Jinja2Templates(env=env)
    from streams.records import fen_to_yuan_str

    env.globals.update(chart_style=Markup(CHART_STYLE), statuses=STATUSES,
                       severities=SEVERITIES, poll_ms=int(poll_s * 1000),
                       yuan=fen_to_yuan_str, pct=_pct)
    from sinks.report import _value as evidence_html

    env.filters["evidence"] = lambda v: Markup(evidence_html(v))

    def view(alert: dict) -> dict:
        return inbox_view(alert, pseudonym)

    # ── who is asking ──

    def session_user(request: Request) -> User | None:
        name = request.session.get("user")
        return users.get(name) if name else None

    def api_user(request: Request) -> User | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return users.by_token(header[7:].strip())
        if request.method == "GET":  # the inbox page's own polling
            return session_user(request)
        return None

    def csrf_token(request: Request) -> str:
        if "csrf" not in request.session:
            request.session["csrf"] = secrets.token_urlsafe(32)
        return request.session["csrf"]

    async def csrf_ok(request: Request) -> tuple[bool, Any]:
        form = await request.form()
        sent, expected = form.get("csrf") or "", request.session.get("csrf") or ""
        return bool(expected) and secrets.compare_digest(str(sent), expected), form

    def page(request: Request, name: str, context: dict, status: int = 200) -> Response:
        context = {"user": session_user(request), "csrf": csrf_token(request),
                   "flash": request.session.pop("flash", None), **context}
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        # Nothing from elsewhere, no framing (clickjacking on the buttons), no sniffing.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
            "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
            "form-action 'self'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def error_page(request: Request, status: int, message: str) -> Response:
        return page(request, "error.html", {"status": status, "message": message}, status)

    def login_redirect(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    # ── reading, with access ──

    def visible(user: User, rule_id=None, severity=None, status=None, region=None,
                since=None, until=None) -> list[dict]:
        scope = None if user.is_auditor else user.region
        if region:
            if scope is None or region.startswith(scope):
                scope = region  # narrower than (or, for an auditor, any) region
            elif not scope.startswith(region):
                return []  # a region wholly outside the center's: nothing to see
        rows = store.list_alerts(region=scope, rule_id=rule_id or None,
                                 status=status or None, severity=severity or None)
        if since:
            rows = [r for r in rows if r["alert"]["detected_at"][:10] >= since]
        if until:
            rows = [r for r in rows if r["alert"]["detected_at"][:10] <= until]
        return _order(rows)

    def one(user: User, alert_id: str) -> dict | None:
        alert = store.get(alert_id)
        if alert is None or not user.sees(alert["regions"]):
            return None  # not found and not yours look the same
        return alert

    def filters_of(request: Request) -> dict:
        q = request.query_params
        out = {k: (q.get(k) or "").strip() for k in ("rule_id", "severity", "status",
                                                     "region", "from", "to")}
        if out["severity"] and out["severity"] not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        if out["status"] and out["status"] not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        for key in ("from", "to"):
            if out[key]:
                date.fromisoformat(out[key])  # ValueError for a bad date
        if out["region"] and not (out["region"].isdigit() and len(out["region"]) in (2, 6)):
            raise ValueError("region must be 6 digits or a 2-digit province prefix")
        return out

    def listing(user: User, f: dict) -> list[dict]:
        return visible(user, f["rule_id"], f["severity"], f["status"], f["region"],
                       f["from"], f["to"])

    def row_json(row: dict) -> dict:
        return {"alert": view(row["alert"]), "sides": row["sides"]}

    # ── the JSON API ──

    async def api_list(request: Request) -> Response:
        user = await run_in_threadpool(api_user, request)
        if user is None:
            return _error(401, "a valid token is required (Authorization: Bearer TOKEN)")
        try:
            f = filters_of(request)
        except ValueError as exc:
            return _error(400, str(exc))
        rows = await run_in_threadpool(listing, user, f)
        return _json([row_json(r) for r in rows])

    async def api_get(request: Request) -> Response:
        user = await run_in_threadpool(api_user, request)
        if user is None:
            return _error(401, "a valid token is required (Authorization: Bearer TOKEN)")
        alert_id = request.path_params["alert_id"]
        alert = await run_in_threadpool(one, user, alert_id)
        if alert is None:
            return _error(404, f"no alert {alert_id}")
        return _json({"alert": view(alert), "sides": store.sides(alert_id),
                      "history": store.history(alert_id)})

    def act(user: User, alert_id: str, action: str, note: str) -> tuple[int, Any]:
        """(HTTP status, the caller's sides' new statuses or the refusal's message)."""
        alert = one(user, alert_id)
        if alert is None:
            return 404, f"no alert {alert_id}"
        if user.is_auditor:
            return 403, "an auditor reads alerts and changes none"
        try:
            return 200, store.transition(alert_id, action, actor=user.name, note=note,
                                         region=user.region)
        except LifecycleError as exc:
            return exc.http_status, str(exc)
        except ValueError as exc:
            return 400, str(exc)

    async def api_act(request: Request) -> Response:
        user = await run_in_threadpool(api_user, request)
        if user is None:
            return _error(401, "a valid token is required (Authorization: Bearer TOKEN)")
        action = request.path_params["action"]
        if action not in ACTIONS:
            return _error(404, f"no action {action} (ack, resolve, dismiss)")
        note = ""
        body = await request.body()
        if body:
            try:
                payload = await request.json()
            except ValueError:
                return _error(400, 'the body must be JSON: {"note": "..."}')
            note = payload.get("note", "") if isinstance(payload, dict) else None
            if not isinstance(note, str):
                return _error(400, 'the body must be JSON: {"note": "..."}')
        alert_id = request.path_params["alert_id"]
        status, result = await run_in_threadpool(act, user, alert_id, action, note)
        if status != 200:
            return _error(status, result)
        return _json({"alert_id": alert_id, "sides": result})

    # ── the pages ──

    async def login_form(request: Request) -> Response:
        return page(request, "login.html", {"next": request.query_params.get("next", "/"),
                                            "error": None, "name": ""})

    async def login(request: Request) -> Response:
        ok, form = await csrf_ok(request)
        nxt = str(form.get("next") or "/")
        if not nxt.startswith("/") or nxt[1:2] in ("/", "\\"):
            nxt = "/"  # only a path of this site: never off to another host
        name = str(form.get("name") or "").strip()
        if not ok:
            return page(request, "login.html", {"next": nxt, "name": name, "error":
                        "The form had expired (CSRF token missing or wrong). Please sign in "
                        "again."}, 403)
        client = request.client.host if request.client else "unknown"
        wait = await run_in_threadpool(users.login_blocked_for, name, client)
        if wait:
            response = page(request, "login.html", {"next": nxt, "name": name, "error":
                            f"Too many failed sign-ins. Try again in {wait} s."}, 429)
            response.headers["Retry-After"] = str(wait)
            return response
        user = await run_in_threadpool(users.check_password, name,
                                       str(form.get("password") or ""))
        if user is None:
            await run_in_threadpool(users.record_failure, name, client)
            return page(request, "login.html", {"next": nxt, "name": name,
                                                "error": "Wrong name or password."}, 401)
        await run_in_threadpool(users.clear_failures, name)
        request.session.clear()  # a new session: no fixation across the login
        request.session.update({"user": user.name, "csrf": secrets.token_urlsafe(32)})
        return RedirectResponse(nxt, status_code=303)

    async def logout(request: Request) -> Response:
        ok, _ = await csrf_ok(request)
        if not ok:
            return error_page(request, 403, "CSRF token missing or wrong: reload the page.")
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def inbox(request: Request) -> Response:
        user = await run_in_threadpool(session_user, request)
        if user is None:
            return login_redirect(request)
        try:
            f = filters_of(request)
        except ValueError as exc:
            return error_page(request, 400, str(exc))
        rows = await run_in_threadpool(listing, user, f)
        rules = sorted({r["alert"]["rule_id"] for r in rows} | ({f["rule_id"]} - {""}))
        counts = {s: sum(1 for r in rows if r["alert"]["severity"] == s) for s in SEVERITIES}
        open_mine = sum(1 for r in rows if any(
            user.owns(region) and side["status"] == "open"
            for region, side in r["sides"].items()))
        query = urlencode({k: v for k, v in f.items() if v})
        return page(request, "inbox.html", {
            "rows": [{"alert": view(r["alert"]), "sides": r["sides"]} for r in rows[:MAX_ROWS]],
            "total": len(rows), "max_rows": MAX_ROWS, "filters": f, "rules": rules,
            "counts": counts, "open_mine": open_mine, "query": query})

    async def alert_page(request: Request, error: str | None = None, status: int = 200
                         ) -> Response:
        user = await run_in_threadpool(session_user, request)
        if user is None:
            return login_redirect(request)
        alert_id = request.path_params["alert_id"]
        alert = await run_in_threadpool(one, user, alert_id)
        if alert is None:
            return error_page(request, 404, f"No alert {alert_id} in your inbox.")
        sides = store.sides(alert_id)
        related = []
        if alert["subject"]["kind"] == "pool":
            related = [r["alert"] for r in await run_in_threadpool(
                visible, user, "pool_balance_low")
                if r["alert"]["subject"]["id"] == alert["subject"]["id"]]
        charts = await run_in_threadpool(charts_for, alert, related, pools)
        shown = view(alert)
        evidence = dict(shown.get("evidence") or {})
        return page(request, "alert.html", {
            "a": shown, "sides": sides, "history": store.history(alert_id),
            "charts": charts, "evidence": evidence, "error": error,
            "mine": {r for r in sides if user.owns(r)},
            "closed": CLOSED, "revisions": store.revisions(alert_id)}, status)

    async def alert_act(request: Request) -> Response:
        user = await run_in_threadpool(session_user, request)
        if user is None:
            return login_redirect(request)
        ok, form = await csrf_ok(request)
        if not ok:
            return error_page(request, 403, "CSRF token missing or wrong: reload the page "
                                            "and try again.")
        action = request.path_params["action"]
        if action not in ACTIONS:
            return error_page(request, 404, f"No action {action}.")
        alert_id = request.path_params["alert_id"]
        status, result = await run_in_threadpool(act, user, alert_id, action,
                                                 str(form.get("note") or ""))
        if status == 200:
            request.session["flash"] = ", ".join(f"{region}: {s}" for region, s in
                                                 result.items())
            return RedirectResponse(f"/alerts/{alert_id}", status_code=303)
        if status == 404:
            return error_page(request, 404, f"No alert {alert_id} in your inbox.")
        return await alert_page(request, error=result, status=status)

    async def pools_page(request: Request) -> Response:
        user = await run_in_threadpool(session_user, request)
        if user is None:
            return login_redirect(request)
        if pools is None:
            return page(request, "pools.html", {"lines": [], "where": "", "problem":
                        "This inbox was started without a source for the pool books."})
        try:
            where, lines = await run_in_threadpool(pools.lines)
        except NoPools as exc:
            return page(request, "pools.html", {"lines": [], "where": "", "problem": str(exc)})
        except Exception as exc:  # noqa: BLE001 - the cluster is down: say so
            return page(request, "pools.html", {"lines": [], "where": pools.where, "problem":
                        f"The pool books could not be read: {type(exc).__name__}: {exc}"})
        lines = [line for line in lines
                 if user.is_auditor or line.pool.startswith(user.region)]
        return page(request, "pools.html", {"lines": lines, "where": where, "problem": None})

    async def health(request: Request) -> Response:
        return _json({"ok": True})

    routes = [
        Route("/", inbox),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/alerts/{alert_id}", alert_page),
        Route("/alerts/{alert_id}/{action}", alert_act, methods=["POST"]),
        Route("/pools", pools_page),
        Route("/api/alerts", api_list),
        Route("/api/alerts/{alert_id}", api_get),
        Route("/api/alerts/{alert_id}/{action}", api_act, methods=["POST"]),
        Route("/healthz", health),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=users.secret("session_key"),
                             session_cookie="fundwatch_session",
                             max_age=SESSION_HOURS * 3600, same_site="lax",
                             https_only=https_only)]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.store = store
    app.state.users = users
    return app
