"""instance counts per series, indexes for keyset listings, no NULL study dates

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_LISTING_INDEXES = {
    "ix_studies_study_date": ["study_date", "id"],
    "ix_studies_received_at": ["received_at", "id"],
    "ix_studies_physician_study_date": ["physician_folder", "study_date", "id"],
    "ix_studies_physician_received_at": ["physician_folder", "received_at", "id"],
    "ix_studies_physician_names": ["physician_folder", "physician_name"],
}


def upgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("instance_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("size_bytes", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.execute(
        "UPDATE series SET"
        " instance_count = (SELECT count(*) FROM instances WHERE series_pk = series.id),"
        " size_bytes = (SELECT coalesce(sum(size), 0) FROM instances WHERE series_pk = series.id)"
    )
    # No date sorts as "" (first ascending, last descending) on every backend, where NULL
    # sorts differently on SQLite and PostgreSQL.
    op.execute("UPDATE studies SET study_date = '' WHERE study_date IS NULL")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.alter_column("study_date", existing_type=sa.String(), nullable=False)
        batch_op.drop_index("ix_studies_physician_folder")
        batch_op.drop_index("ix_studies_study_date")
        batch_op.drop_index("ix_studies_received_at")
        for name, columns in _LISTING_INDEXES.items():
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.alter_column("study_date", existing_type=sa.String(), nullable=True)
        for name in _LISTING_INDEXES:
            batch_op.drop_index(name)
        batch_op.create_index("ix_studies_received_at", ["received_at"], unique=False)
        batch_op.create_index("ix_studies_study_date", ["study_date"], unique=False)
        batch_op.create_index("ix_studies_physician_folder", ["physician_folder"], unique=False)
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("size_bytes")
        batch_op.drop_column("instance_count")
