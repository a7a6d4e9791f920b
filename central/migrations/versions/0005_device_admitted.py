"""When central admitted each device at the production broker (its client and role made, at its activation):
a box central holds active that says it waits is answered again with its acceptance only once it was
admitted, since the broker password that admits it comes with its request alone. Null for a device never
admitted (the development broker, a box registered by hand, an admission that failed).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("admitted_at", sa.Double))


def downgrade() -> None:
    op.drop_column("devices", "admitted_at")
