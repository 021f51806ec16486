"""reviews table

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("review_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image_path", sa.String(255), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("predicted_class", sa.String(100), nullable=False),
        sa.Column("shown_class", sa.String(100), nullable=False),
        sa.Column("cam_method", sa.String(50), nullable=False),
        sa.Column("model_name", sa.String(100), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
        sa.Column("agrees", sa.Boolean(), nullable=False),
        sa.Column("correct_class", sa.String(100), nullable=True),
        sa.Column("heatmap_usefulness", sa.Integer(), nullable=False),
        sa.Column("heatmap_wrong_place", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.UniqueConstraint("review_id", name="uq_reviews_review_id"),
    )
    for column in ("created_at", "reviewer", "image_sha256", "predicted_class", "agrees"):
        op.create_index(f"ix_reviews_{column}", "reviews", [column])


def downgrade() -> None:
    op.drop_table("reviews")
