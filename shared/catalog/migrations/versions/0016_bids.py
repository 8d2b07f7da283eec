"""bids: pseudonyms of each lab's BIDS subjects and sessions

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bids_subjects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lab", sa.String(), nullable=False),
        sa.Column("patient_key", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("date_shift_days", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bids_subjects")),
        sa.UniqueConstraint("lab", "patient_key", name="uq_bids_subjects_patient"),
        sa.UniqueConstraint("lab", "label", name="uq_bids_subjects_label"),
    )
    op.create_table(
        "bids_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["bids_subjects.id"],
            name=op.f("fk_bids_sessions_subject_id_bids_subjects"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bids_sessions")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_bids_sessions_study_instance_uid")),
        sa.UniqueConstraint("subject_id", "label", name="uq_bids_sessions_label"),
    )
    op.create_index(
        op.f("ix_bids_sessions_subject_id"), "bids_sessions", ["subject_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_bids_sessions_subject_id"), table_name="bids_sessions")
    op.drop_table("bids_sessions")
    op.drop_table("bids_subjects")
