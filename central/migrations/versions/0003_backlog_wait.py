"""How long a box has held events central has not acknowledged, as its statuses tell: the seq and
time at which central first saw a backlog that is not yet acknowledged (``device_status``), and the
longest such wait seen on each day (``upload_days``). A box whose batches central refuses reports
live every day and yet uploads nothing: its days fail on this.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("device_status", sa.Column("backlog_seq", sa.BigInteger))
    op.add_column("device_status", sa.Column("backlog_since", sa.Double))
    op.add_column("upload_days", sa.Column("waited", sa.Double))


def downgrade() -> None:
    op.drop_column("upload_days", "waited")
    op.drop_column("device_status", "backlog_since")
    op.drop_column("device_status", "backlog_seq")
