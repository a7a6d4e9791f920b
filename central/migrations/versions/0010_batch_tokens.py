"""The signed batches as their boxes signed them, each kept once it brought central an event it did not hold:
a consumer that lost some (its session's queue dropped or overflowed, a broker that died before it saved,
a consumer added late) fetches and verifies them itself (`counterbox-central batches`).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.Text, sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.Double),
        sa.Column("deflated", sa.LargeBinary, nullable=False),  # the token, zlib-compressed
    )
    op.create_index("ix_batches_device_last", "batches", ["device_id", "last_seq"])


def downgrade() -> None:
    op.drop_index("ix_batches_device_last", "batches")
    op.drop_table("batches")
