"""When the box sent the batch that brought each event, by the box's own clock (the batch's ``sent_at``): beside
the event's own times by that clock (a sale's ``scanned_at``), how long the box held it before sending, whatever
its clock is off by. Upload success judges a sale's lateness and its day by it. Null for an event whose batch
said no readable time, and for those held before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("sent_at", sa.Double))


def downgrade() -> None:
    op.drop_column("events", "sent_at")
