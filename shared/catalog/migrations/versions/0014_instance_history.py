"""instance history: each filed copy of an instance another copy replaced, kept in history/

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(), nullable=False),
        sa.Column("study_instance_uid", sa.String(), nullable=False),
        sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("kept_path", sa.String(), nullable=False),
        sa.Column("old_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("old_calling_ae", sa.String(), nullable=False),
        sa.Column("old_size", sa.BigInteger(), nullable=False),
        sa.Column("old_sha256", sa.String(), nullable=False),
        sa.Column("new_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("new_calling_ae", sa.String(), nullable=False),
        sa.Column("new_size", sa.BigInteger(), nullable=False),
        sa.Column("new_sha256", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_history")),
        sa.UniqueConstraint(
            "sop_instance_uid", "old_sha256", name="uq_instance_history_copy"
        ),
    )
    op.create_index(
        "ix_instance_history_study", "instance_history", ["study_instance_uid", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_instance_history_study", table_name="instance_history")
    op.drop_table("instance_history")
