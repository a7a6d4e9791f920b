"""When central took a revoked box's signed word that it erases itself now (its last status, ``erasing``), and
the last seq it held then: the box may be collected, and what it had not delivered is lost. Its latest status
says it no longer once the box goes offline. Null until then.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("erasing_at", sa.Double))
    op.add_column("devices", sa.Column("erasing_seq", sa.BigInteger))


def downgrade() -> None:
    op.drop_column("devices", "erasing_seq")
    op.drop_column("devices", "erasing_at")
