"""The alert store as it was before migrations: alerts and their revisions.

A database created by the earlier ``create_all`` has exactly these tables; the store
stamps it with this revision instead of creating them again.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.String(64), primary_key=True),
        sa.Column("rule_id", sa.String(64), nullable=False, index=True),
        sa.Column("severity", sa.String(16), nullable=False, index=True),
        sa.Column("subject_kind", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=False, index=True),
        sa.Column("regions", sa.JSON, nullable=False),
        sa.Column("review", sa.String(8), nullable=False),
        sa.Column("window_start", sa.String(40), nullable=False),
        sa.Column("window_end", sa.String(40), nullable=False),
        sa.Column("detected_at", sa.String(40), nullable=False, index=True),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("first_stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_stored_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "alert_revisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(64), sa.ForeignKey("alerts.alert_id"),
                  nullable=False, index=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_revisions")
    op.drop_table("alerts")
