"""Each closed side keeps the alert's severity at the moment it was closed.

A closed side reopens only when the alert grows more severe than the center saw
when it closed it. 0002 left that to be read back from the revisions' store times
against the side's ``changed_at``, which is ambiguous when a close and a revision
fall in the same millisecond: a close followed at once by an escalation then read
as closed at the escalated severity, and the side stayed closed (CI found it).
Kept on the side, the severity is exact and costs no query.

Sides already closed are filled from what 0002 kept: the severity of the last
revision stored no later than the close (a revision in the close's own millisecond
counts as before it, as 0002 read it).

Revision ID: 0004
Revises: 0003
"""
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _ms(stored) -> str:
    """A revision's store time as the sides' ``changed_at`` is written: ISO 8601 UTC to
    the millisecond. SQLite gives the time back as text without its zone (it is UTC)."""
    if isinstance(stored, str):
        stored = datetime.fromisoformat(stored)
    if stored.tzinfo is None:
        stored = stored.replace(tzinfo=UTC)
    return stored.astimezone(UTC).isoformat(timespec="milliseconds")


def upgrade() -> None:
    with op.batch_alter_table("alert_sides") as batch:
        batch.add_column(sa.Column("closed_severity", sa.String(16), nullable=True))
    connection = op.get_bind()
    closed = connection.execute(sa.text(
        "SELECT alert_id, region, changed_at FROM alert_sides "
        "WHERE status IN ('resolved', 'dismissed')")).all()
    for alert_id, region, changed_at in closed:
        revisions = connection.execute(sa.text(
            "SELECT stored_at, severity FROM alert_revisions WHERE alert_id = :alert_id "
            "ORDER BY revision"), {"alert_id": alert_id}).all()
        before = [severity for stored, severity in revisions if _ms(stored) <= changed_at]
        severity = before[-1] if before else revisions[0][1]
        connection.execute(sa.text(
            "UPDATE alert_sides SET closed_severity = :severity "
            "WHERE alert_id = :alert_id AND region = :region"),
            {"severity": severity, "alert_id": alert_id, "region": region})


def downgrade() -> None:
    with op.batch_alter_table("alert_sides") as batch:
        batch.drop_column("closed_severity")
