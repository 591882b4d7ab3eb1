"""The review queue's table.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
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
        "review_items",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("client_ref", sa.String(200), nullable=True),
        sa.Column("expected_length", sa.Integer(), nullable=True),
        sa.Column("image", sa.LargeBinary(), nullable=True),
        sa.Column("image_type", sa.String(64), nullable=False),
        sa.Column("image_bytes", sa.Integer(), nullable=False),
        sa.Column("reading", sa.JSON(), nullable=False),
        sa.Column("reading_digits", sa.String(64), nullable=False),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("reviewer", sa.String(64), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
    )
    op.create_index("ix_review_items_queue", "review_items", ["status", "kind", "created_at"])
    op.create_index("ix_review_items_created", "review_items", ["created_at"])
    op.create_index("ix_review_items_audit", "review_items", ["kind", "status", "model_version"])


def downgrade() -> None:
    op.drop_table("review_items")
