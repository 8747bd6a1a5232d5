"""The centers' lifecycle (a status per region side, an append-only audit) and the
notification outbox.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APPEND_ONLY_PG = """
CREATE FUNCTION alert_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'alert_audit is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    # The revision of each alert the router has turned into notifications: alerts
    # stored but not yet routed are found by comparing it with ``revision``.
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("routed_revision", sa.Integer, nullable=False,
                                   server_default="0"))
    op.create_table(
        "alert_sides",
        sa.Column("alert_id", sa.String(64), sa.ForeignKey("alerts.alert_id"),
                  primary_key=True),
        sa.Column("region", sa.String(6), primary_key=True),
        sa.Column("duty", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("changed_at", sa.String(40), nullable=False),
        sa.Column("changed_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_alert_sides_region_status", "alert_sides", ["region", "status"])
    op.create_table(
        "alert_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(64), sa.ForeignKey("alerts.alert_id"),
                  nullable=False, index=True),
        sa.Column("region", sa.String(6), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("at", sa.String(40), nullable=False),
    )
    # Append-only is enforced by the database, not by the application's good
    # manners: an auditor must be able to trust that no entry was rewritten.
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(APPEND_ONLY_PG)
        op.execute("CREATE TRIGGER alert_audit_append_only BEFORE UPDATE OR DELETE "
                   "ON alert_audit FOR EACH ROW EXECUTE FUNCTION alert_audit_append_only()")
    elif dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER alert_audit_no_{verb.lower()} BEFORE {verb} ON "
                       f"alert_audit BEGIN SELECT RAISE(ABORT, 'alert_audit is append-only: "
                       f"{verb} refused'); END")
    _open_sides_of_existing_alerts()
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(64), sa.ForeignKey("alerts.alert_id"),
                  nullable=False, index=True),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(80), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("regions", sa.JSON, nullable=False),
        # The same regions as one sorted, comma-joined key, for the unique constraint.
        sa.Column("sides", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=True),
        sa.Column("sent_ms", sa.BigInteger, nullable=True),
        sa.Column("message_id", sa.String(40), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        # Each side of an alert is told once per channel and severity it reaches: a
        # redelivered or re-routed alert can never enqueue a second copy.
        sa.UniqueConstraint("alert_id", "channel", "severity", "sides",
                            name="uq_notification_once"),
    )
    op.create_index("ix_notifications_due", "notifications",
                    ["status", "channel", "next_attempt_ms"])
    op.create_index("ix_notifications_sent", "notifications", ["channel", "sent_ms"])
    # A channel that refuses is backed off as a whole, so notifications queued
    # during an outage do not each knock on the door every few seconds.
    op.create_table(
        "notification_channels",
        sa.Column("channel", sa.String(80), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retry_at_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_success_ms", sa.BigInteger, nullable=True),
    )


def _open_sides_of_existing_alerts() -> None:
    """Alerts stored before the lifecycle existed start it now, open on every side,
    so a center can act on them like on any other."""
    import json
    from datetime import datetime, timezone

    bind = op.get_bind()
    alerts = sa.table("alerts", sa.column("alert_id"), sa.column("body"))
    sides = sa.table("alert_sides", sa.column("alert_id"), sa.column("region"),
                     sa.column("duty"), sa.column("status"), sa.column("changed_at"),
                     sa.column("changed_by"))
    audit = sa.table("alert_audit", sa.column("alert_id"), sa.column("region"),
                     sa.column("action"), sa.column("from_status"), sa.column("to_status"),
                     sa.column("actor"), sa.column("note"), sa.column("at"))
    at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    side_rows, audit_rows = [], []
    for alert_id, body in bind.execute(sa.select(alerts.c.alert_id, alerts.c.body)):
        alert = json.loads(body)
        duties = alert.get("duties") or {}
        for region in alert.get("regions", []):
            side_rows.append({"alert_id": alert_id, "region": region,
                              "duty": duties.get(region), "status": "open",
                              "changed_at": at, "changed_by": "migration 0002"})
            audit_rows.append({"alert_id": alert_id, "region": region, "action": "opened",
                               "from_status": None, "to_status": "open",
                               "actor": "migration 0002", "note": duties.get(region) or "",
                               "at": at})
    if side_rows:
        op.bulk_insert(sides, side_rows)
        op.bulk_insert(audit, audit_rows)


def downgrade() -> None:
    op.drop_table("notification_channels")
    op.drop_table("notifications")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER alert_audit_append_only ON alert_audit")
        op.execute("DROP FUNCTION alert_audit_append_only()")
    op.drop_table("alert_audit")
    op.drop_table("alert_sides")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("routed_revision")
