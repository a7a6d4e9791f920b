"""Each device's journal: the id of the journal whose events central holds under that device (named by
its batches), so that another journal's events under the same id are refused, never counted as its.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("journal", sa.Text))
    # A device's journal found on another device (restored onto a new box): looked up at each of its batches.
    op.create_index("ix_devices_journal", "devices", ["journal"])


def downgrade() -> None:
    op.drop_index("ix_devices_journal", "devices")
    op.drop_column("devices", "journal")
