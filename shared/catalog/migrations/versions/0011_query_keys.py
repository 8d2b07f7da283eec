"""the keys desktops query by that the catalog did not keep: birth date and sex of a
patient, a study's Study ID (NULL for what was filed before: read from a file instead)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("patients", sa.Column("birth_date", sa.String(), nullable=True))
    op.add_column("patients", sa.Column("sex", sa.String(), nullable=True))
    op.add_column("studies", sa.Column("study_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as table:  # SQLite drops columns by copying
        table.drop_column("study_id")
    with op.batch_alter_table("patients") as table:
        table.drop_column("sex")
        table.drop_column("birth_date")
