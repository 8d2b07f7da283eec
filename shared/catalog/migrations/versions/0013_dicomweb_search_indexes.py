"""DICOMweb's PatientName: names looked up in any case (an index of lower(name)), and each
patient's studies by date from an index that covers a page of them

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


_PATIENT_LISTING = ["patient_pk", "study_date", "id", "physician_folder", "evicting_at"]


def upgrade() -> None:
    op.create_index(
        "ix_patients_patient_name_lower", "patients", [sa.text("lower(patient_name)")]
    )
    op.create_index("ix_studies_patient_listing", "studies", _PATIENT_LISTING)


def downgrade() -> None:
    op.drop_index("ix_studies_patient_listing", table_name="studies")
    op.drop_index("ix_patients_patient_name_lower", table_name="patients")
