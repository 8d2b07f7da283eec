"""who asked for a retrieval, and the labs it may fetch

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: a job of before keys had names (the nightly run, or any key of DCMDB_API_KEYS).
    op.add_column("retrieval_jobs", sa.Column("requested_by", sa.String(), nullable=True))
    # JSON list of lab folders; NULL: every lab.
    op.add_column("retrieval_jobs", sa.Column("labs", sa.String(), nullable=True))
    op.create_index("ix_retrieval_jobs_requested_by", "retrieval_jobs", ["requested_by", "id"])


def downgrade() -> None:
    op.drop_index("ix_retrieval_jobs_requested_by", "retrieval_jobs")
    with op.batch_alter_table("retrieval_jobs") as batch_op:
        batch_op.drop_column("labs")
        batch_op.drop_column("requested_by")
