"""the audit trail of the desktops' C-MOVEs and C-GETs: instances sent and the destination

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("instances", sa.Integer(), nullable=True))
    op.add_column("audit_events", sa.Column("destination", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as table:
        table.drop_column("destination")
        table.drop_column("instances")
