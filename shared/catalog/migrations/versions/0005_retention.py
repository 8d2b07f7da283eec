"""retention: pinned and evicting studies, and the audit trail of evictions

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "studies",
        sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("studies", sa.Column("evicting_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "evictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(), nullable=False),
        sa.Column("physician_folder", sa.String(), nullable=False),
        sa.Column("folder", sa.String(), nullable=False),
        sa.Column("study_date", sa.String(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("series_count", sa.Integer(), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("evicted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("announced", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evictions")),
    )
    op.create_index("ix_evictions_announced", "evictions", ["announced", "evicted_at"])
    op.create_index(
        op.f("ix_evictions_study_instance_uid"), "evictions", ["study_instance_uid"], unique=False
    )


def downgrade() -> None:
    op.drop_table("evictions")
    with op.batch_alter_table("studies") as batch_op:  # SQLite drops columns by copying
        batch_op.drop_column("evicting_at")
        batch_op.drop_column("pinned")
