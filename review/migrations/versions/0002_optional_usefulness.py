"""heatmap_usefulness may be empty: no rating until the reviewer gives one

Revision ID: 0002_optional_usefulness
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_optional_usefulness"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.alter_column("heatmap_usefulness", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.alter_column("heatmap_usefulness", existing_type=sa.Integer(), nullable=False)
