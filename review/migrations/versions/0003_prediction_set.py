"""the conformal prediction set shown with each review

Revision ID: 0003
Revises: 0002_optional_usefulness
Create Date: 2026-11-27

Both columns are nullable: reviews saved before prediction sets existed (or with a model
without a conformal section) keep NULL, read as "unknown" by the agreement statistics.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002_optional_usefulness"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("reviews", sa.Column("prediction_set", sa.JSON(), nullable=True))
    op.add_column("reviews", sa.Column("set_alpha", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("set_alpha")
        batch.drop_column("prediction_set")
