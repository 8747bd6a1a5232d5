"""The supervision centers' inbox: users bound to a region and a role, their API
tokens (only a hash is kept), failed logins (for the rate limit, shared by every
server process) and the inbox's own secrets (the session-signing key, and the
pseudonym key when no ``notify_secret`` is configured).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("region", sa.String(6), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        # argon2id hash; NULL: the user has no password (API token only)
        sa.Column("password_hash", sa.String(200), nullable=True),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False,
                  index=True),
        # SHA-256 of the token (the token itself is 256 random bits, shown once)
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_login_failures_user", "login_failures", ["username", "at_ms"])
    op.create_index("ix_login_failures_client", "login_failures", ["client", "at_ms"])
    op.create_table(
        "inbox_secrets",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inbox_secrets")
    op.drop_table("login_failures")
    op.drop_table("api_tokens")
    op.drop_table("users")
