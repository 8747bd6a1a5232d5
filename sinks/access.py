"""Who may use the supervision centers' inbox, and what each may see and do.

A user belongs to one region — a full 6-digit region code (a city's center) or a
2-digit province prefix (a provincial center) — and has a role: a ``center`` acts on
its region's sides of the alerts naming it; an ``auditor`` reads every alert and
changes nothing. Passwords are kept as argon2id hashes (argon2-cffi); an API token
is 256 random bits shown once, and only its SHA-256 is stored (a token with that much
entropy needs no slow hash). Failed logins are rows in ``login_failures``, so every
server process on the store enforces one limit.

The tables are made by migration 0003 (``infra/migrations``), with the store.

>>> from sinks.store import AlertStore
>>> users = Users(AlertStore("sqlite://"))
>>> token = users.add("maoming.li", region="440900", password="correct horse battery")
>>> users.by_token(token).name, users.by_token("fw_wrong"), users.by_token(token).region
('maoming.li', None, '440900')
>>> users.check_password("maoming.li", "correct horse battery").role
'center'
>>> users.check_password("maoming.li", "wrong") is None
True
>>> User("a", "44", "center").sees(["440900", "450100"]), User("a", "45", "center").sees(["440900"])
(True, False)
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sinks.store import AlertStore, check_region, now_iso

ROLES = ("center", "auditor")
TOKEN_PREFIX = "fw_"
_NAME = re.compile(r"^[A-Za-z0-9_.@\-]{2,64}$")
# Login attempts: at most this many failures per user name (and four times as many
# per client address, which a whole office may share) in the window; then 429 until
# the oldest failure leaves the window.
MAX_FAILURES = 5
MAX_CLIENT_FAILURES = 20
FAILURE_WINDOW_S = 300
# A modest argon2id cost: ~20 ms a check on a small server, 32 MiB each.
_HASHER = PasswordHasher(time_cost=2, memory_cost=32 * 1024, parallelism=2)
_DUMMY_HASH = _HASHER.hash("no such user")  # equal work for an unknown name


class _Base(DeclarativeBase):
    pass


class UserRow(_Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    region: Mapped[str] = mapped_column(String(6))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[str] = mapped_column(String(40))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class TokenRow(_Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[str] = mapped_column(String(40))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class LoginFailure(_Base):
    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(64))
    at_ms: Mapped[int] = mapped_column(BigInteger)


class SecretRow(_Base):
    __tablename__ = "inbox_secrets"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


@dataclass(frozen=True)
class User:
    name: str
    region: str
    role: str

    @property
    def is_auditor(self) -> bool:
        return self.role == "auditor"

    def sees(self, regions) -> bool:
        """Whether an alert naming ``regions`` is this user's to see."""
        return self.is_auditor or any(r.startswith(self.region) for r in regions)

    def owns(self, region: str) -> bool:
        """Whether this user acts for the side ``region`` (never an auditor)."""
        return not self.is_auditor and region.startswith(self.region)


class UserExists(ValueError):
    pass


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    """The inbox's users, tokens, login limit and secrets, in the alert store's database."""

    def __init__(self, store: AlertStore) -> None:
        self.engine = store.engine

    def add(self, name: str, *, region: str, role: str = "center",
            password: str | None = None) -> str:
        """Create a user; returns its first API token (shown once, stored as a hash)."""
        if not _NAME.match(name or ""):
            raise ValueError(f"user name {name!r}: 2-64 letters, digits, or . _ @ -")
        check_region(region)
        if role not in ROLES:
            raise ValueError(f"role {role!r} must be one of {', '.join(ROLES)}")
        if password is not None and len(password) < 10:
            raise ValueError("a password needs at least 10 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with Session(self.engine) as session, session.begin():
                row = UserRow(name=name, region=region, role=role, created_at=now_iso(),
                              disabled=False,
                              password_hash=_HASHER.hash(password) if password else None)
                session.add(row)
                session.flush()
                session.add(TokenRow(user_id=row.id, token_hash=_token_hash(token),
                                     created_at=now_iso(), revoked=False))
        except IntegrityError:
            raise UserExists(f"user {name!r} exists already") from None
        return token

    def set_password(self, name: str, password: str) -> None:
        if len(password) < 10:
            raise ValueError("a password needs at least 10 characters")
        with Session(self.engine) as session, session.begin():
            row = session.scalar(select(UserRow).where(UserRow.name == name))
            if row is None:
                raise KeyError(name)
            row.password_hash = _HASHER.hash(password)

    def new_token(self, name: str) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with Session(self.engine) as session, session.begin():
            row = session.scalar(select(UserRow).where(UserRow.name == name))
            if row is None:
                raise KeyError(name)
            session.add(TokenRow(user_id=row.id, token_hash=_token_hash(token),
                                 created_at=now_iso(), revoked=False))
        return token

    def get(self, name: str) -> User | None:
        with Session(self.engine) as session:
            row = session.scalar(select(UserRow).where(UserRow.name == name,
                                                       UserRow.disabled.is_(False)))
            return User(row.name, row.region, row.role) if row else None

    def all(self) -> list[User]:
        with Session(self.engine) as session:
            return [User(r.name, r.region, r.role)
                    for r in session.scalars(select(UserRow).order_by(UserRow.name))]

    def by_token(self, token: str | None) -> User | None:
        if not token or not token.startswith(TOKEN_PREFIX):
            return None
        with Session(self.engine) as session:
            row = session.execute(
                select(UserRow.name, UserRow.region, UserRow.role)
                .join(TokenRow, TokenRow.user_id == UserRow.id)
                .where(TokenRow.token_hash == _token_hash(token),
                       TokenRow.revoked.is_(False), UserRow.disabled.is_(False))).first()
            return User(*row) if row else None

    def check_password(self, name: str, password: str) -> User | None:
        with Session(self.engine) as session:
            row = session.scalar(select(UserRow).where(UserRow.name == name,
                                                       UserRow.disabled.is_(False)))
        try:
            if row is None or not row.password_hash:
                _HASHER.verify(_DUMMY_HASH, password + "\0")  # same time as a real check
                return None
            _HASHER.verify(row.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        return User(row.name, row.region, row.role)

    # ── the login limit ──────────────────────────────────────────────────────

    def login_blocked_for(self, username: str, client: str, now_ms: int | None = None
                          ) -> int:
        """Seconds until another attempt is allowed (0: allowed now)."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        since = now_ms - FAILURE_WINDOW_S * 1000
        wait = 0
        with Session(self.engine) as session:
            for column, value, limit in (
                    (LoginFailure.username, username[:64], MAX_FAILURES),
                    (LoginFailure.client, client[:64], MAX_CLIENT_FAILURES)):
                times = list(session.scalars(
                    select(LoginFailure.at_ms).where(column == value,
                                                     LoginFailure.at_ms > since)
                    .order_by(LoginFailure.at_ms.desc()).limit(limit)))
                if len(times) >= limit:
                    wait = max(wait, (times[-1] - since) // 1000 + 1)
        return int(wait)

    def record_failure(self, username: str, client: str) -> None:
        now_ms = int(time.time() * 1000)
        with Session(self.engine) as session, session.begin():
            session.add(LoginFailure(username=username[:64], client=client[:64],
                                     at_ms=now_ms))
            # Old failures are of no use to the limit.
            session.execute(delete(LoginFailure).where(
                LoginFailure.at_ms < now_ms - 24 * 3600 * 1000))

    def clear_failures(self, username: str) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(delete(LoginFailure).where(LoginFailure.username == username))

    # ── the inbox's secrets ──────────────────────────────────────────────────

    def secret(self, name: str) -> str:
        """A random secret made once and kept in the database, so every server process
        on the store signs sessions (or pseudonymises persons) alike."""
        with Session(self.engine) as session:
            value = session.scalar(select(SecretRow.value).where(SecretRow.name == name))
        if value:
            return value
        try:
            with Session(self.engine) as session, session.begin():
                session.add(SecretRow(name=name, value=secrets.token_hex(32)))
        except IntegrityError:
            pass  # another process made it first: use theirs
        with Session(self.engine) as session:
            return session.scalar(select(SecretRow.value).where(SecretRow.name == name))

    def count(self) -> int:
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(UserRow))
