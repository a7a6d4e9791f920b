"""When a shop left (stopped trading, or no longer met the company's conditions): its boxes revoked, it is
listed as gone rather than as a shop with no box to replace, and no code is issued for it. Null while it
trades; registered again, it is null again.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("shops", sa.Column("left_at", sa.Double))


def downgrade() -> None:
    op.drop_column("shops", "left_at")
