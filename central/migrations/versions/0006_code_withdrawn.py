"""When operations withdrew an activation code before any box used it (a slip lost, a visit called off):
central refuses it from then on. Null for a code never withdrawn.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("activation_codes", sa.Column("withdrawn_at", sa.Double))


def downgrade() -> None:
    op.drop_column("activation_codes", "withdrawn_at")
