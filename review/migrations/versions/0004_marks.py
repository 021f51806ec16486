"""reviewers' marks on the film, and the heatmaps scored against them

Revision ID: 0004_marks
Revises: 0003
Create Date: 2026-12-05

Every score column is nullable (NULL: the review has no marks, e.g. saved before marks
existed); ``no_finding`` is false for those reviews.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_marks"
down_revision = "0003"
branch_labels = None
depends_on = None

SCORES = ("hit_shown", "hit_top", "energy_shown", "energy_top", "energy_flat")


def upgrade() -> None:
    op.add_column("reviews", sa.Column("marks", sa.JSON(), nullable=True))
    op.add_column(
        "reviews",
        sa.Column("no_finding", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    for name in SCORES:
        op.add_column("reviews", sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        for name in reversed(SCORES):
            batch.drop_column(name)
        batch.drop_column("no_finding")
        batch.drop_column("marks")
