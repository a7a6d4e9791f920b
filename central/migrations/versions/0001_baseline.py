"""Central's schema as it stood before migrations: devices, events, documents, shops, activation codes,
waiting boxes, upload days and device status.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("device_id", sa.Text, primary_key=True),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("shop", sa.Text),
        sa.Column("region", sa.Text),
        sa.Column("registered_at", sa.Double),
        sa.Column("acked_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("revoked_at", sa.Double),
    )
    op.create_table(
        "events",
        sa.Column("device_id", sa.Text, sa.ForeignKey("devices.device_id"), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("kind", sa.Text),
        sa.Column("session", sa.BigInteger),
        sa.Column("received_at", sa.Double),
        sa.Column("body", sa.Text),
    )
    op.create_table(
        "documents",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("kid", sa.Text),
        sa.Column("issued_at", sa.Double),
        sa.Column("expires_at", sa.Double),
        sa.Column("token", sa.LargeBinary, nullable=False),
        sa.Column("published_at", sa.Double),
    )
    op.create_table(
        "shops",
        sa.Column("licence", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("region", sa.Text, nullable=False),
        sa.Column("monitoring", sa.Integer),
        sa.Column("registered_at", sa.Double),
    )
    op.create_table(
        "activation_codes",
        sa.Column("code_id", sa.Text, primary_key=True),
        sa.Column("shop", sa.Text, sa.ForeignKey("shops.licence"), nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("device", sa.Text),
        sa.Column("issued_at", sa.Double),
        sa.Column("expires_at", sa.Double),
        sa.Column("used_by", sa.Text),
        sa.Column("used_key", sa.Text),
        sa.Column("used_at", sa.Double),
    )
    op.create_table(
        "waiting",
        sa.Column("device_id", sa.Text, primary_key=True),
        sa.Column("public_key", sa.Text),
        sa.Column("agent_version", sa.Text),
        sa.Column("seen_at", sa.Double),
    )
    op.create_table(
        "upload_days",
        sa.Column("device_id", sa.Text, primary_key=True),
        sa.Column("day", sa.Text, primary_key=True),
        sa.Column("reports", sa.BigInteger),
    )
    op.create_table(
        "device_status",
        sa.Column("device_id", sa.Text, sa.ForeignKey("devices.device_id"), primary_key=True),
        sa.Column("state", sa.Text),
        sa.Column("session", sa.BigInteger),
        sa.Column("connection", sa.BigInteger),
        sa.Column("sent_at", sa.Double),
        sa.Column("received_at", sa.Double),
        sa.Column("clock_offset", sa.Double),
        sa.Column("body", sa.Text),
    )


def downgrade() -> None:
    for table in ("device_status", "upload_days", "waiting", "activation_codes", "shops", "documents", "events",
                  "devices"):
        op.drop_table(table)
