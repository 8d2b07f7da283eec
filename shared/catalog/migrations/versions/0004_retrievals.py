"""retrieval jobs and the instance counts the PACS expects

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retrieval_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("origin", sa.String(), nullable=False),
        sa.Column("pacs", sa.String(), nullable=False),
        sa.Column("query", sa.String(), nullable=False),
        sa.Column("nightly_slot", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("gaps", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrieval_jobs")),
        sa.UniqueConstraint("nightly_slot", name=op.f("uq_retrieval_jobs_nightly_slot")),
    )
    op.create_index("ix_retrieval_jobs_state", "retrieval_jobs", ["state", "heartbeat_at"])
    op.create_table(
        "retrieval_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("series_uids", sa.String(), nullable=False),
        sa.Column("expected_series", sa.Integer(), nullable=True),
        sa.Column("expected_instances", sa.Integer(), nullable=True),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("warning", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["retrieval_jobs.id"],
            name=op.f("fk_retrieval_studies_job_id_retrieval_jobs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrieval_studies")),
        sa.UniqueConstraint("job_id", "study_uid", name="uq_retrieval_studies_study"),
    )
    op.create_index(
        op.f("ix_retrieval_studies_job_id"), "retrieval_studies", ["job_id"], unique=False
    )
    op.create_table(
        "expected_series",
        sa.Column("series_instance_uid", sa.String(), nullable=False),
        sa.Column("study_instance_uid", sa.String(), nullable=False),
        sa.Column("expected_instances", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("series_instance_uid", name=op.f("pk_expected_series")),
    )
    op.create_index(
        op.f("ix_expected_series_study_instance_uid"),
        "expected_series",
        ["study_instance_uid"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("expected_series")
    op.drop_table("retrieval_studies")
    op.drop_table("retrieval_jobs")
