"""The boxes' document events, indexed apart from their sales: central numbers a document's next version past
every version a box says it applied, so that a database restored from a backup older than its last pushes
never signs a version the boxes would refuse as a replay. A partial index: sales pay nothing for it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

DOCUMENTS = sa.text("kind = 'document'")


def upgrade() -> None:
    op.create_index("ix_events_document", "events", ["kind"], sqlite_where=DOCUMENTS, postgresql_where=DOCUMENTS)


def downgrade() -> None:
    op.drop_index("ix_events_document", "events")
