"""diffusion gradient tables beside NIfTI outputs; the conversion policy a series was converted by

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nifti_outputs", sa.Column("bval_path", sa.String(), nullable=True))
    op.add_column("nifti_outputs", sa.Column("bvec_path", sa.String(), nullable=True))
    # NULL: converted before policies were recorded (see shared/reconversion.py).
    op.add_column("series", sa.Column("conversion_policy", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("series") as batch_op:  # SQLite drops columns by copying
        batch_op.drop_column("conversion_policy")
    with op.batch_alter_table("nifti_outputs") as batch_op:
        batch_op.drop_column("bvec_path")
        batch_op.drop_column("bval_path")
