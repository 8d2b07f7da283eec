"""reconciliation: each scanner's runs against the PACS, and the differences they found

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scanner", sa.String(), nullable=False),
        sa.Column("pacs", sa.String(), nullable=False),
        sa.Column("nightly_slot", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.Column("studies", sa.Integer(), nullable=False),
        sa.Column("missing", sa.Integer(), nullable=False),
        sa.Column("associations", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_runs")),
        sa.UniqueConstraint("scanner", "nightly_slot", name="uq_reconciliation_runs_slot"),
    )
    op.create_index("ix_reconciliation_runs_scanner", "reconciliation_runs", ["scanner", "id"])
    op.create_table(
        "reconciliation_differences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scanner", sa.String(), nullable=False),
        sa.Column("study_uid", sa.String(), nullable=False),
        sa.Column("series_uid", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("lab", sa.String(), nullable=False),
        sa.Column("study_date", sa.Date(), nullable=False),
        sa.Column("deadline", sa.Date(), nullable=False),
        sa.Column("scanner_instances", sa.Integer(), nullable=False),
        sa.Column("pacs_instances", sa.Integer(), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(), nullable=False),
        sa.Column("retrieval_job_id", sa.Integer(), nullable=True),
        sa.Column("forwarded_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_differences")),
    )
    op.create_index(
        "ix_reconciliation_differences_open",
        "reconciliation_differences",
        ["scanner", "state", "study_uid"],
    )
    op.create_index(
        "ix_reconciliation_differences_lab", "reconciliation_differences", ["lab", "deadline"]
    )


def downgrade() -> None:
    op.drop_index("ix_reconciliation_differences_lab", table_name="reconciliation_differences")
    op.drop_index("ix_reconciliation_differences_open", table_name="reconciliation_differences")
    op.drop_table("reconciliation_differences")
    op.drop_index("ix_reconciliation_runs_scanner", table_name="reconciliation_runs")
    op.drop_table("reconciliation_runs")
